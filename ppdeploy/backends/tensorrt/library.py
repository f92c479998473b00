"""Which TensorRT library a backend means (full TensorRT 10.x/11.x or TensorRT-RTX) and what the imported one can
do: every difference between the two lives in `LibraryTraits`, derived from the module wherever it tells."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ppdeploy.backends.tensorrt.backend")


@dataclass(frozen=True)
class Flavour:
    """Which TensorRT library a backend name means, before importing it."""

    name: str  # registry name
    module: str  # Python import name
    label: str
    install: str


TENSORRT = Flavour("tensorrt", "tensorrt", "TensorRT", "pip install tensorrt; versions 10.x and 11.x, NVIDIA GPU needed")
TENSORRT_RTX = Flavour(
    "tensorrt-rtx", "tensorrt_rtx_bindings", "TensorRT-RTX",
    "pip install 'ppdeploy[tensorrt-rtx]'",
)


@dataclass(frozen=True)
class LibraryTraits:
    """What the imported library can do. Derived from the module itself wherever it exposes the answer."""

    flavour: Flavour
    version: str
    major: int
    minor: int
    # TensorRT (not RTX) tunes tactics at build time and can persist the timings; in RTX the timing cache is a no-op.
    timing_cache: bool
    # TensorRT-RTX compiles kernels just in time at run time; its runtime cache keeps them across processes.
    runtime_cache: bool
    # TensorRT 10 still has the STRONGLY_TYPED creation flag; TensorRT 11 networks are strongly typed by default.
    strongly_typed_flag: bool
    # Hardware-compatible engines: TensorRT's AMPERE_PLUS level. RTX engines are portable across its supported
    # architectures by default and reject the setting.
    hardware_compat_level: bool
    # Compute capabilities the library can build for or run on, as "major.minor" strings; None means "min_cc and up".
    supported_cc: tuple[str, ...] | None
    min_cc: float

    def cc_problem(self, cc: str) -> str | None:
        """None when this library runs on a GPU of compute capability `cc` ("9.0"), else why not."""
        try:
            value = float(cc)
        except ValueError:
            return None  # unknown spelling: let the runtime decide rather than refuse a GPU we cannot parse
        if self.supported_cc is not None:
            if cc not in self.supported_cc:
                return (f"{self.flavour.label} {self.version} does not support compute capability {cc}; "
                        f"it supports {', '.join(self.supported_cc)}")
            return None
        if value < self.min_cc:
            return f"{self.flavour.label} {self.version} needs compute capability >= {self.min_cc}, this GPU has {cc}"
        return None


    def targets(self) -> tuple[str, ...]:
        """What `--target` accepts: RTX's compute capabilities, TensorRT's hardware-compatibility level."""
        if self.supported_cc is not None:
            return self.supported_cc
        return (AMPERE_PLUS,) if self.hardware_compat_level else ()

    def target_problem(self, target: str) -> str | None:
        """None when this library can build an engine for `target`, else why not (with what it accepts)."""
        accepted = self.targets()
        if target in accepted:
            return None
        what = ", ".join(accepted) if accepted else "none (this version has no hardware-compatible engines)"
        return f"{self.flavour.label} {self.version} cannot build for target '{target}'; it accepts: {what}"

    def target_runs_on(self, target: str, cc: str) -> bool:
        """Whether an engine built for `target` runs on a GPU of compute capability `cc`."""
        if target == AMPERE_PLUS:
            try:
                return float(cc) >= 8.0
            except ValueError:
                return True
        return target == cc


AMPERE_PLUS = "ampere+"  # TensorRT's HardwareCompatibilityLevel.AMPERE_PLUS: one engine for every GPU from Ampere on


def traits_of(flavour: Flavour, trt: Any) -> LibraryTraits:
    version = str(getattr(trt, "__version__", "0.0"))
    parts = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    major, minor = int(parts[0]), int(parts[1])
    rtx = flavour is TENSORRT_RTX
    supported = None
    if rtx:
        # The ComputeCapability enum lists exactly the SM targets this RTX release can build for (SM75, SM80, ...).
        names = [n for n in dir(getattr(trt, "ComputeCapability", object)) if re.fullmatch(r"SM\d{2,3}", n)]
        supported = tuple(sorted((f"{n[2:-1]}.{n[-1]}" for n in names), key=float)) or None
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    return LibraryTraits(
        flavour=flavour, version=version, major=major, minor=minor,
        timing_cache=not rtx,
        runtime_cache=rtx and hasattr(trt, "IRuntimeCache"),
        strongly_typed_flag=creation is not None and hasattr(creation, "STRONGLY_TYPED"),
        hardware_compat_level=not rtx and hasattr(trt, "HardwareCompatibilityLevel"),
        supported_cc=supported,
        # TensorRT 10.13+ (CUDA 13 builds) and 11 dropped Volta (7.0); earlier 10.x still ran there.
        min_cc=7.5 if rtx or major >= 11 or (major == 10 and minor >= 13) else 7.0,
    )


def import_library(flavour: Flavour) -> tuple[Any | None, str | None]:
    """(module, None) or (None, why it cannot be imported)."""
    if importlib.util.find_spec(flavour.module) is None:
        return None, f"library missing: {flavour.label} is not installed ({flavour.install})"
    try:
        return importlib.import_module(flavour.module), None
    except Exception as exc:  # e.g. the PyPI 'tensorrt' stub that fails at import, or missing libnvinfer
        return None, f"library broken: importing {flavour.module} failed: {exc}"


def make_logger(trt: Any):
    """A TensorRT logger that keeps errors (so exceptions can quote them) and forwards warnings to logging."""

    class Recorder(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("%s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("%s", msg)  # RTX warns about every no-op legacy setting; not user-relevant

    return Recorder()
