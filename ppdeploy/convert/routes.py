"""Which paddle2onnx serves which Paddle format, and where it lives.

Measured (see DESIGN.md): paddle2onnx 2.x converts Paddle 3 PIR programs (`.json`) but fails on, or produces
unloadable graphs from, legacy `.pdmodel` files such as PP-OCRv4 det/rec; paddle2onnx 1.3.1 converts those
correctly but cannot read PIR. One interpreter cannot import both, so the legacy route runs 1.3.1 from a
private `pip install --target` directory (created on first use, then reused offline).
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import ConversionError
from ppdeploy.source.model import PDMODEL, PIR

LEGACY_VERSION = "1.3.1"


@dataclass(frozen=True)
class Route:
    name: str
    formats: tuple[str, ...]
    default_opset: int
    pythonpath: Path | None  # prepended to PYTHONPATH in the worker; None = this environment's paddle2onnx

    def version(self) -> str:
        if self.pythonpath is None:
            try:
                return importlib.metadata.version("paddle2onnx")
            except importlib.metadata.PackageNotFoundError:
                return "missing"
        return LEGACY_VERSION


def legacy_dir() -> Path:
    env = os.environ.get("PPDEPLOY_P2O_LEGACY_DIR")
    return Path(env) if env else default_root() / "tools" / f"paddle2onnx-{LEGACY_VERSION}"


def pir_route() -> Route:
    return Route("paddle2onnx-pir", (PIR,), 17, None)


def legacy_route() -> Route:
    return Route("paddle2onnx-legacy", (PDMODEL,), 14, legacy_dir())


def route_for(kind: str) -> Route:
    if kind == PIR:
        return pir_route()
    if kind == PDMODEL:
        return legacy_route()
    raise ConversionError(f"no Paddle->ONNX route for model kind '{kind}'")


def legacy_installed() -> bool:
    return (legacy_dir() / "paddle2onnx" / "__init__.py").is_file()


def ensure_legacy_installed() -> Path:
    """Install paddle2onnx 1.3.1 into its private directory (needs PyPI once; offline afterwards)."""
    target = legacy_dir()
    if legacy_installed():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp), f"paddle2onnx=={LEGACY_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "paddle2onnx" / "__init__.py").is_file():
        raise ConversionError(
            f"could not install paddle2onnx {LEGACY_VERSION} for legacy .pdmodel conversion into {target}:\n"
            f"{(proc.stderr or proc.stdout).strip()[-800:]}",
            hint=f"run once with network access, or install it yourself: pip install --no-deps --target {target} "
                 f"paddle2onnx=={LEGACY_VERSION} (or set PPDEPLOY_P2O_LEGACY_DIR to such a directory)",
        )
    try:
        os.rename(tmp, target)
    except OSError:  # another process won the race; its copy is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
