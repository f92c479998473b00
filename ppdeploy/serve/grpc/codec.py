"""Tensors <-> Triton's gRPC messages (`ModelInferRequest` / `ModelInferResponse`), checked like the HTTP codec.

Inputs come as `raw_input_contents` (one entry per input not in shared memory, in input order; the raw layout of
`ppdeploy.serve.shm`), as typed `contents` (FP16/BF16 have no typed field, as in Triton), or from a registered
shared-memory region. Outputs go back as `raw_output_contents`, one entry per output in order (an empty one for
an output written to shared memory, so tritonclient's index-based lookup stays aligned), as Triton does.
Malformed requests raise `ProtocolError` with the HTTP codec's wording.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ppdeploy.core.lazy import lazy_import
from ppdeploy.core.tensors import IOSpec
from ppdeploy.serve import shm
from ppdeploy.serve.kserve import (
    DATATYPES,
    ProtocolError,
    classify,
    from_raw,
    kserve_datatype,
    to_raw,
)

pb = lazy_import("tritonclient.grpc.service_pb2", install="'tritonclient[grpc]'")

MAX_ELEMENTS = 1 << 28  # as ppdeploy.serve.kserve.parse_infer_request
# KServe datatype -> the InferTensorContents field that carries it
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@dataclass
class Requested:
    name: str
    class_count: int = 0
    target: shm.OutputTarget | None = None


@dataclass
class Decoded:
    inputs: dict[str, np.ndarray]
    outputs: list[Requested]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_ms(self) -> float | None:
        """Triton's `timeout` request parameter is in microseconds."""
        t = self.parameters.get("timeout")
        return None if t is None else t / 1000.0


def parameters(params) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values."""
    out = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, which) if which else None
    return out


def decode_request(req, io: IOSpec, registry: shm.SharedMemoryRegistry, owner: str,
                   max_elements: int = MAX_ELEMENTS) -> Decoded:
    """A ModelInferRequest checked against the model's inputs and outputs."""
    if not req.inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    specs = {t.name: t for t in io.inputs}
    raw = req.raw_input_contents
    raw_index = 0
    inputs: dict[str, np.ndarray] = {}
    for item in req.inputs:
        name = item.name
        where = f"input '{name}'"
        if name not in specs:
            raise ProtocolError(f"unknown input '{name}'; the model takes {sorted(specs)}")
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        datatype = item.datatype
        if datatype not in DATATYPES:
            if datatype == "BF16":
                raise ProtocolError(f"{where}: datatype BF16 is not supported by this server")
            raise ProtocolError(f"{where}: unknown datatype \"{datatype}\"; valid: {', '.join(DATATYPES)}")
        expected = kserve_datatype(specs[name].dtype)
        if datatype != expected:
            raise ProtocolError(f"{where}: datatype {datatype} does not match the model, which expects {expected}")
        shape = tuple(item.shape)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"{where}: 'shape' {list(shape)} has a negative dimension")
        count = math.prod(shape)
        if count > max_elements:
            raise ProtocolError(f"{where}: {count} elements is more than this server accepts ({max_elements})")
        iparams = parameters(item.parameters)
        typed = item.HasField("contents")
        if shm.names_region(iparams):
            if typed:
                raise ProtocolError(f"{where}: has both contents and a shared-memory region")
            inputs[name] = shm.read_input(registry, owner, iparams, datatype, shape, where)
        elif raw:
            if typed:
                raise ProtocolError(f"{where}: typed contents cannot be mixed with raw_input_contents")
            if raw_index >= len(raw):
                raise ProtocolError(f"{where}: raw_input_contents has {len(raw)} entries, too few for the inputs")
            inputs[name] = from_raw(memoryview(raw[raw_index]), datatype, shape, where)
            raw_index += 1
        elif typed:
            inputs[name] = _from_contents(item.contents, datatype, shape, where)
        else:
            raise ProtocolError(f"{where}: needs contents, raw_input_contents or a shared-memory region")
    if raw_index != len(raw):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries, but {raw_index} inputs take raw data")

    out_names = [t.name for t in io.outputs]
    if not req.outputs:
        outputs = [Requested(n) for n in out_names]
    else:
        outputs = []
        for item in req.outputs:
            if item.name not in out_names:
                raise ProtocolError(f"unknown output '{item.name}'; the model produces {out_names}")
            where = f"output '{item.name}'"
            oparams = parameters(item.parameters)
            classes = oparams.get("classification", 0)
            if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
                raise ProtocolError(f"{where}: classification must be a non-negative integer")
            target = shm.output_target(registry, owner, oparams, where) if shm.names_region(oparams) else None
            outputs.append(Requested(item.name, classes, target))
    params = parameters(req.parameters)
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
        raise ProtocolError("parameters.timeout must be a non-negative number of microseconds")
    return Decoded(inputs, outputs, params)


def _from_contents(contents, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype not in CONTENTS_FIELD:
        raise ProtocolError(f"{where}: {datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(contents, CONTENTS_FIELD[datatype])
    if len(values) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, contents hold {len(values)}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("=")
    try:
        arr = np.array(values, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"{where}: data does not fit {datatype}: {exc}") from None
    if dtype.kind in "iu" and not np.array_equal(arr, np.array(values, dtype=np.int64 if dtype.kind == "i"
                                                                     else np.uint64)):
        raise ProtocolError(f"{where}: data does not fit {datatype}")
    return arr.reshape(shape)


def encode_response(model_name: str, model_version: str, request_id: str, decoded: Decoded,
                    outputs: dict[str, np.ndarray], labels: Sequence[str] | None = None):
    """The ModelInferResponse: raw contents per output, or the output written into its shared-memory region."""
    resp = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id)
    for want in decoded.outputs:
        arr = np.asarray(outputs[want.name])
        if want.class_count:
            arr = classify(arr, want.class_count, labels)
        datatype = kserve_datatype(arr.dtype)
        tensor = resp.outputs.add(name=want.name, datatype=datatype, shape=arr.shape)
        if want.target is not None:
            want.target.write(arr, datatype, f"output '{want.name}'")
            for key, value in want.target.parameters().items():
                if isinstance(value, str):
                    tensor.parameters[key].string_param = value
                else:
                    tensor.parameters[key].int64_param = value
            resp.raw_output_contents.append(b"")
        else:
            data = to_raw(arr, datatype)
            resp.raw_output_contents.append(data if isinstance(data, bytes) else data.tobytes())
    return resp


__all__ = ["CONTENTS_FIELD", "Decoded", "Requested", "decode_request", "encode_response", "parameters"]
