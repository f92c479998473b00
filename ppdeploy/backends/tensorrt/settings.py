"""`BuilderSettings`: everything in BuildOptions.extra that the TensorRT builder reads, with its defaults spelled out
(the engine-shaping ones enter the cache key through `engine_key`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.errors import BuildError
from ppdeploy.core.shapes import ShapeProfile


@dataclass(frozen=True)
class BuilderSettings:
    workspace_mib: int = 2048  # memory-pool limit for tactic scratch space
    optimization_level: int = 3  # builder_optimization_level 0..5
    tf32: bool = False  # off by default: TF32 changes the rec model's outputs by up to 2e-2
    version_compatible: bool = False  # engine runs on later TensorRT versions of the same major
    hardware_compatible: bool = False  # TensorRT: AMPERE_PLUS engines; RTX engines are portable by default
    timing_cache: bool = True  # TensorRT: persist tactic timings beside the engine cache
    runtime_cache: bool = True  # TensorRT-RTX: persist JIT-compiled kernels beside the engine cache
    progress: bool | None = None  # progress bar on stderr; None: when stderr is a terminal
    # Ahead-of-time build for another GPU: TensorRT-RTX takes a compute capability ("8.9", "12.0") and builds on a
    # machine without a GPU; TensorRT takes "ampere+" (a hardware-compatible engine, built on any Ampere+ GPU).
    # The engine's metadata records it and loading checks it; None: the GPU of this machine (RTX: all it supports).
    target: str | None = None
    # Further optimization profiles beyond BuildOptions.shapes, each {input: {min, opt, max}}; the runner picks the
    # first profile that holds a request's shapes, so list narrow, fast profiles first.
    profiles: tuple[Mapping[str, Mapping[str, Sequence[int]]], ...] = ()

    KEYS = ("workspace_mib", "optimization_level", "tf32", "version_compatible", "hardware_compatible",
            "timing_cache", "runtime_cache", "progress", "profiles", "target")

    @classmethod
    def from_options(cls, options: BuildOptions) -> "BuilderSettings":
        extra = dict(options.extra or {})
        known = {k: extra[k] for k in cls.KEYS if k in extra}
        if "profiles" in known:
            known["profiles"] = tuple(known["profiles"])
        try:
            settings = cls(**known)
        except TypeError as exc:
            raise BuildError(f"bad TensorRT builder option: {exc}") from exc
        if not 0 <= int(settings.optimization_level) <= 5:
            raise BuildError(f"optimization_level must be 0..5, got {settings.optimization_level}")
        if settings.target is not None and not isinstance(settings.target, str):
            raise BuildError(f"target must be a string like '8.9' or 'ampere+', got {settings.target!r}")
        if int(settings.workspace_mib) < 1:
            raise BuildError(f"workspace_mib must be >= 1, got {settings.workspace_mib}")
        return settings

    def engine_key(self) -> dict[str, Any]:
        """The settings that change the engine (cache-only and display-only switches are left out)."""
        return {
            "workspace_mib": int(self.workspace_mib), "optimization_level": int(self.optimization_level),
            "tf32": bool(self.tf32), "version_compatible": bool(self.version_compatible),
            "hardware_compatible": bool(self.hardware_compatible),
            "profiles": [ShapeProfile.from_dict(p).to_dict() for p in self.profiles],
            "strongly_typed": True, "target": self.target,
        }
