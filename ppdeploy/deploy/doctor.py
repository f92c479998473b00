"""What this machine can run, and what to install for what it cannot. Used by `ppdeploy doctor`."""
from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from ppdeploy.core import device

PACKAGES = ["paddlepaddle", "paddle2onnx", "onnx", "onnxslim", "onnxruntime", "onnxruntime-gpu", "openvino",
            "tensorrt", "tensorrt-rtx-cu13-bindings", "cuda-python", "nncf", "ray"]


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> dict[str, Any]:
    from ppdeploy.source import zoo
    from ppdeploy.backends import REGISTRY, get_backend
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.convert import routes

    backends = {}
    for name in REGISTRY:
        try:
            reason = get_backend(name).unavailable_reason()
        except Exception as exc:
            reason = str(exc)
        backends[name] = {"available": reason is None, "reason": reason}
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    try:
        models = str(zoo.models_root())
    except Exception as exc:
        models = f"missing: {exc}"
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": {p: version_of(p) for p in PACKAGES},
        "onnxruntime_providers": providers,
        "conversion_routes": {
            "legacy .pdmodel": f"paddle2onnx {routes.LEGACY_VERSION} at {routes.legacy_dir()} "
                               f"({'installed' if routes.legacy_installed() else 'installed on first use (needs PyPI once)'})",
            "PIR .json": f"paddle2onnx {version_of('paddle2onnx') or 'missing'} (this environment)",
        },
        "cpu": device.cpu_info(), "cpu_bf16": device.cpu_supports_bf16(), "gpus": device.gpu_info(),
        "backends": backends, "cache_dir": str(EngineCache().root), "bundled_models": models,
    }
