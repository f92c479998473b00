"""ppdeploy: PaddlePaddle model -> ONNX -> optimized engine -> batching HTTP service.

Public entry points are imported lazily so `import ppdeploy` (and the CLI) start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("ppdeploy.deploy.load", "load_model"),
    "Deployment": ("ppdeploy.deploy.load", "Deployment"),
    "OCR": ("ppdeploy.tasks.ocr.builder", "OCR"),
    "Classifier": ("ppdeploy.tasks.classification.task", "Classifier"),
    "EngineCache": ("ppdeploy.core.cache", "EngineCache"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ppdeploy' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
