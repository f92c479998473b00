"""Triton's own model-configuration schema (`model_config.proto`), as compiled into the `tritonclient` wheel.

Configs are built as `inference.ModelConfig` messages and printed with protobuf's text format, so a written
`config.pbtxt` is valid by construction; `parse_config` re-reads each file with the same schema, which is what
Triton does when it loads the repository (unknown fields, wrong enums and type errors fail here, not on the
server).

The generated module lives in `tritonclient/grpc/`, whose package `__init__` insists on grpcio although the
schema module itself needs only protobuf, so it is loaded straight from its file when grpcio is absent.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ppdeploy.core.errors import ConfigError, PPDeployError

INSTALL_HINT = "pip install 'ppdeploy[triton]'  (tritonclient's wheel ships Triton's model_config.proto compiled)"

# numpy dtype name -> Triton DataType enum name
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "object": "TYPE_STRING", "bytes": "TYPE_STRING",
}


@functools.lru_cache(maxsize=1)
def model_config_pb2() -> ModuleType:
    """The `model_config_pb2` module of the installed tritonclient."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise PPDeployError("Triton's model-config schema is not installed", hint=INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise PPDeployError(f"this tritonclient has no {path.name}", hint=INSTALL_HINT)
    name = "ppdeploy_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # e.g. protobuf runtime older than the generated code
        raise PPDeployError(f"could not load Triton's model-config schema from {path}: {exc}",
                            hint="upgrade protobuf to the version tritonclient was generated for") from exc
    sys.modules[name] = module
    return module


def new_config(**fields):
    """An empty `inference.ModelConfig` message with `fields` set."""
    return model_config_pb2().ModelConfig(**fields)


def triton_dtype(numpy_name: str) -> int:
    """numpy dtype name -> Triton DataType enum value."""
    try:
        enum_name = TRITON_DTYPES[numpy_name]
    except KeyError:
        raise ConfigError(f"dtype '{numpy_name}' has no Triton equivalent") from None
    return model_config_pb2().DataType.Value(enum_name)


def numpy_dtype_of(triton_type: int) -> str:
    name = model_config_pb2().DataType.Name(triton_type)
    for numpy_name, enum_name in TRITON_DTYPES.items():
        if enum_name == name:
            return numpy_name
    raise ConfigError(f"Triton type {name} has no numpy equivalent")


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str, source: str = "config.pbtxt"):
    """Parse config.pbtxt text with Triton's schema; a schema violation is a ConfigError naming the line."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, model_config_pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{source} does not match Triton's model-config schema: {exc}") from exc
