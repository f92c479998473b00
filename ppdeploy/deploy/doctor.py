"""What this machine can build and run, and what to install for what it cannot. Used by `ppdeploy doctor`.

Build and run differ for TensorRT-RTX, whose builder needs no GPU: a CPU-only CI machine builds engines ahead of
time for a named target (`ppdeploy build --target`) that a GPU server runs. A backend without a separate build
check builds where it runs."""
from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

from ppdeploy.backends.registry import BACKENDS, get_backend
from ppdeploy.convert import routes
from ppdeploy.core import device
from ppdeploy.core.cache import EngineCache
from ppdeploy.core.lazy import lazy_import
from ppdeploy.precision.registry import PRECISIONS
from ppdeploy.source import zoo

ort = lazy_import("onnxruntime", install="onnxruntime")

PACKAGES = ["paddlepaddle", "paddle2onnx", "onnx", "onnxslim", "onnxruntime", "onnxruntime-gpu", "openvino",
            "tensorrt", "tensorrt-rtx-cu13-bindings", "cuda-python", "nncf", "ray", "tritonclient", "grpcio",
            "matplotlib"]


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def backend_rows() -> dict[str, dict[str, Any]]:
    """One row per registered backend, in chain order: what it runs (from its class) and whether it can run here."""
    rows = {}
    for name in BACKENDS:
        row: dict[str, Any] = {}
        try:
            cls = BACKENDS.get(name)
            row.update(device=cls.device, precisions=[p for p in PRECISIONS if p in cls.precisions],
                       formats=sorted(cls.formats), int8_quantizer=cls.int8_quantizer)
            backend = get_backend(name)
            reason = backend.unavailable_reason()
            build_reason = backend.build_unavailable_reason()
            targets = list(backend.targets())
        except Exception as exc:
            reason = build_reason = str(exc)
            targets = []
        rows[name] = {"available": reason is None, "reason": reason,
                      "build": build_reason is None, "build_reason": build_reason, "build_targets": targets, **row}
    return rows


def report() -> dict[str, Any]:
    backends = backend_rows()
    try:
        providers = ort.get_available_providers()
    except Exception:  # BackendUnavailable when onnxruntime is missing
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
