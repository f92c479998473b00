"""Backends: one interface (base.Backend builds and loads, base.Runner runs) and one package per engine."""
from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.backends.registry import BACKENDS, canonical, get_backend
from ppdeploy.core.tensors import IOSpec, TensorSpec

__all__ = ["Backend", "BuildOptions", "IOSpec", "Runner", "TensorSpec", "BACKENDS", "canonical", "get_backend"]
