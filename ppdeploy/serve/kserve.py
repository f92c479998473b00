"""The KServe v2 / Triton HTTP inference protocol: request parsing and response encoding, no HTTP framework.

Covers what `tritonclient.http` and `perf_analyzer` send and expect:
- JSON tensors (`data`, flat or nested, row-major) and the binary tensor extension: the body is a JSON header of
  `Inference-Header-Content-Length` bytes followed by the raw tensors of every input whose parameters carry
  `binary_data_size`, in input order; outputs come back binary when the output asks `binary_data: true` or the
  request asks `binary_data_output: true` (what tritonclient does when no outputs are named).
- BYTES tensors (JSON strings, or 4-byte little-endian length + bytes per element in binary).
- The classification extension (`"parameters": {"classification": k}` on an output: top-k "score:index[:label]").
- Model metadata and the Triton model-config JSON (perf_analyzer reads max_batch_size and dims from it).

Every malformed request raises `ProtocolError` (an `InputError`, HTTP 400) naming what is wrong.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ppdeploy.backends.registry import BACKENDS
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.core.tensors import IOSpec

# KServe datatype name -> numpy dtype (little-endian, as the protocol's binary data is).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"), "UINT8": np.dtype("uint8"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("int8"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_NUMPY_TO_KSERVE = {np.dtype(v).newbyteorder("=") if v != np.dtype(object) else v: k for k, v in DATATYPES.items()}

_KNOWN: dict[Any, str] = {**_NUMPY_TO_KSERVE, **{str(dt): name for dt, name in _NUMPY_TO_KSERVE.items()
                                                  if dt != np.dtype(object)}}



def platform(backend: str) -> str:
    """The platform string Triton reports for a model of this backend (the backend class's `triton_platform`);
    a name no backend is registered under is reported as it is."""
    if backend not in BACKENDS:
        return backend
    try:
        return BACKENDS.get(backend).triton_platform
    except PPDeployError:  # registered, but not part of this build
        return backend


class ProtocolError(InputError):
    """A request that does not follow the KServe v2 protocol or does not fit the model (HTTP 400)."""


def kserve_datatype(dtype: str | np.dtype) -> str:
    """numpy dtype (or its name) -> KServe datatype name; BF16 for numpy-less bfloat16 specs."""
    name = _KNOWN.get(dtype)  # the per-request case (a model's own dtypes): one dict lookup
    if name is not None:
        return name
    if str(dtype) == "bfloat16":
        return "BF16"
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _NUMPY_TO_KSERVE[dt.newbyteorder("=")]
    except KeyError:
        raise ProtocolError(f"numpy dtype {dt} has no KServe datatype") from None


def triton_type(dtype: str | np.dtype) -> str:
    """KServe datatype -> Triton's model-config enum name (FP32 -> TYPE_FP32, BYTES -> TYPE_STRING)."""
    name = kserve_datatype(dtype)
    return "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    class_count: int = 0
    target: Any = None  # a shared-memory region to write the output into (ppdeploy.serve.shm.OutputTarget)


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_ms(self) -> float | None:
        """Triton's `timeout` request parameter is in microseconds."""
        t = self.parameters.get("timeout")
        return None if t is None else t / 1000.0


def _json_object(data: bytes | memoryview, what: str) -> dict:
    try:
        obj = json.loads(bytes(data))
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the decoder recurses per nesting level: thousands of '[' exhaust the stack
        raise ProtocolError(f"{what} nests JSON arrays or objects too deeply",
                            hint="send 'data' flat (row-major) with its 'shape'") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _parameters(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    return params


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers, got {json.dumps(value)[:80]}")
    if any(d < 0 for d in value):
        raise ProtocolError(f"{where}: 'shape' {value} has a negative dimension")
    return tuple(value)


def parse_infer_request(body: bytes, header_length: str | int | None, io: IOSpec,
                        max_elements: int = 1 << 28, *, region_input=None, region_output=None) -> InferRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensors) against the model's inputs.
    `region_input(params, datatype, shape, where)` / `region_output(params, where)`: resolve inputs and outputs
    that name a shared-memory region (ppdeploy.serve.shm.read_input / output_target bound to the client);
    None: such requests are refused."""
    view = memoryview(body)
    if header_length is not None:
        try:
            hlen = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got '{header_length}'") from None
        if not 0 < hlen <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {hlen} does not fit a body of {len(body)} bytes")
        header, binary = view[:hlen], view[hlen:]
    else:
        header, binary = view, view[:0]
    req = _json_object(header, "request body" if header_length is None else "inference header")
    params = _parameters(req, "request")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    raw_inputs = req.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")

    specs = {t.name: t for t in io.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise ProtocolError(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"inputs[{i}] needs a string 'name'")
        where = f"input '{name}'"
        if name not in specs:
            raise ProtocolError(f"unknown input '{name}'; the model takes {sorted(specs)}")
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            if datatype == "BF16":
                raise ProtocolError(f"{where}: datatype BF16 is not supported by this server")
            raise ProtocolError(f"{where}: unknown datatype {json.dumps(datatype)}; "
                                f"valid: {', '.join(DATATYPES)}")
        expected = kserve_datatype(specs[name].dtype)
        if datatype != expected:
            raise ProtocolError(f"{where}: datatype {datatype} does not match the model, which expects {expected}")
        shape = _shape(item.get("shape"), where)
        count = math.prod(shape)
        if count > max_elements:
            raise ProtocolError(f"{where}: {count} elements is more than this server accepts ({max_elements})")
        iparams = _parameters(item, where)
        if "shared_memory_region" in iparams:
            if region_input is None:
                raise ProtocolError(f"{where}: shared-memory inputs are not supported by this server; send the data")
            if "data" in item or "binary_data_size" in iparams:
                raise ProtocolError(f"{where}: has both data and a shared-memory region")
            inputs[name] = region_input(iparams, datatype, shape, where)
            continue
        size = iparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if "data" in item:
                raise ProtocolError(f"{where}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise ProtocolError(f"{where}: binary_data_size {size} runs past the end of the body "
                                    f"({len(binary) - offset} bytes left)")
            chunk = binary[offset:offset + size]
            offset += size
            arr = from_raw(chunk, datatype, shape, where)
        else:
            if "data" not in item:
                raise ProtocolError(f"{where}: needs 'data' or parameters.binary_data_size")
            arr = _from_json(item["data"], datatype, shape, where)
        inputs[name] = arr
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data after the inputs were not claimed by any "
                            f"input's binary_data_size")

    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("parameters.binary_data_output must be true or false")
    out_names = [t.name for t in io.outputs]
    raw_outputs = req.get("outputs")
    outputs: list[RequestedOutput] = []
    if raw_outputs is None:
        outputs = [RequestedOutput(n, binary_default) for n in out_names]
    else:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list")
        for i, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
            name = item["name"]
            if name not in out_names:
                raise ProtocolError(f"unknown output '{name}'; the model produces {out_names}")
            oparams = _parameters(item, f"output '{name}'")
            target = None
            if "shared_memory_region" in oparams:
                if region_output is None:
                    raise ProtocolError(f"output '{name}': shared-memory outputs are not supported by this server")
                target = region_output(oparams, f"output '{name}'")
            binary = oparams.get("binary_data", binary_default)
            classes = oparams.get("classification", 0)
            if not isinstance(binary, bool):
                raise ProtocolError(f"output '{name}': binary_data must be true or false")
            if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
                raise ProtocolError(f"output '{name}': classification must be a non-negative integer")
            outputs.append(RequestedOutput(name, binary, classes, target))
    timeout = params.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
        raise ProtocolError("parameters.timeout must be a non-negative number of microseconds")
    return InferRequest(rid, inputs, outputs, params)


def from_raw(data: memoryview | bytes, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Raw bytes -> an array of `shape` (a view, not a copy, when aligned and native-order)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        raw = bytes(data)
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"{where}: truncated BYTES element length at byte {pos}")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise ProtocolError(f"{where}: BYTES element of {n} bytes runs past the data")
            items.append(raw[pos:pos + n])
            pos += n
        if len(items) != count:
            raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, the data holds {len(items)}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    dtype = DATATYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise ProtocolError(f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                         f"the data has {len(data)}")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not arr.flags.aligned or not np.little_endian:  # ONNX Runtime & co. want aligned, native-order memory
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def to_raw(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """An array in the raw layout (the array's own memory when it is already little-endian and contiguous)."""
    if datatype == "BYTES":
        parts = []
        for v in arr.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    flat = np.ascontiguousarray(arr).astype(DATATYPES[datatype], copy=False)
    return memoryview(flat.reshape(-1)).cast("B") if flat.size else b""


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    flat = _flatten(data, where)
    if len(flat) != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, 'data' holds {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        arr = np.empty(count, dtype=object)
        arr[:] = [v.encode() for v in flat]
        return arr.reshape(shape)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise ProtocolError(f"{where}: BOOL data must be true/false")
    elif dtype.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise ProtocolError(f"{where}: {datatype} data must be integers")
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise ProtocolError(f"{where}: {datatype} data must be numbers")
    try:
        arr = np.array(flat, dtype=dtype.newbyteorder("="))
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"{where}: data does not fit {datatype}: {exc}") from None
    return arr.reshape(shape)


def _flatten(data: list, where: str) -> list:
    # Nested lists are row-major; any nesting is accepted (Triton does the same), but not dicts.
    if not any(isinstance(v, list) for v in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            if isinstance(v, dict):
                raise ProtocolError(f"{where}: 'data' may hold numbers, booleans or strings, not objects")
            out.append(v)
        else:
            stack.pop()
    return out


def classify(arr: np.ndarray, k: int, labels: Sequence[str] | None) -> np.ndarray:
    """Triton's classification extension: per batch row, the top-k 'score:index[:label]' strings."""
    if arr.ndim == 0:
        raise ProtocolError("classification needs an output with at least one dimension")
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    k = min(k, rows.shape[1])
    idx = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, c in enumerate(idx[r]):
            text = f"{float(rows[r, c]):f}:{int(c)}"
            if labels is not None and c < len(labels):
                text += f":{labels[c]}"
            out[r, j] = text.encode()
    return out if arr.ndim > 1 else out[0]


def _json_data(arr: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
    return arr.ravel().tolist()


def encode_infer_response(model_name: str, model_version: str, request: InferRequest,
                          outputs: dict[str, np.ndarray], labels: Sequence[str] | None = None
                          ) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header length (the
    `Inference-Header-Content-Length` response header)."""
    parts, header_len = encode_infer_response_parts(model_name, model_version, request, outputs, labels)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), header_len


def encode_infer_response_parts(model_name: str, model_version: str, request: InferRequest,
                                outputs: dict[str, np.ndarray], labels: Sequence[str] | None = None
                                ) -> tuple[list[bytes | memoryview], int | None]:
    """Like `encode_infer_response`, but the body as a list of buffers to send in order: the JSON header, then
    each binary output as a memoryview of the output array itself. A rec model answers 2 MB per line; handing
    the array's memory to the socket saves two copies of it (tobytes, then joining header and blobs)."""
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        header["id"] = request.id
    items, blobs = [], []
    for out in request.outputs:
        arr = np.asarray(outputs[out.name])
        if out.class_count:
            arr = classify(arr, out.class_count, labels)
        datatype = kserve_datatype(arr.dtype)
        item: dict[str, Any] = {"name": out.name, "datatype": datatype, "shape": list(arr.shape)}
        if out.target is not None:
            out.target.write(arr, datatype, f"output '{out.name}'")
            item["parameters"] = out.target.parameters()
        elif out.binary:
            blob = to_raw(arr, datatype)  # little-endian, C-contiguous: no copy for a native array of the rows
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = _json_data(arr, datatype)
        items.append(item)
    header["outputs"] = items
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return [text], None
    return [text, *blobs], len(text)


def model_metadata(name: str, version: str, io: IOSpec, backend: str) -> dict:
    def tensor(t) -> dict:
        return {"name": t.name, "datatype": kserve_datatype(t.dtype), "shape": [-1 if d is None else d for d in t.shape]}

    return {"name": name, "versions": [version], "platform": platform(backend),
            "inputs": [tensor(t) for t in io.inputs], "outputs": [tensor(t) for t in io.outputs]}


def model_config_json(cfg, io: IOSpec, backend: str, batch_axis: bool) -> dict:
    """Triton's model configuration as JSON (the `/config` endpoint). With batching, dims leave out the batch dim."""
    max_batch = cfg.max_batch_size if batch_axis else 0

    def tensor(t) -> dict:
        dims = [-1 if d is None else d for d in t.shape]
        return {"name": t.name, "data_type": triton_type(t.dtype), "format": "FORMAT_NONE",
                "dims": dims[1:] if max_batch else dims}

    db = cfg.dynamic_batching
    conf = {
        "name": cfg.name, "platform": platform(backend), "backend": backend,
        "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": max_batch,
        "input": [tensor(t) for t in io.inputs], "output": [tensor(t) for t in io.outputs],
        "instance_group": [{"name": f"{cfg.name}_0", "kind": "KIND_CPU", "count": cfg.instance_count}],
        "parameters": {"precision": {"string_value": cfg.precision}},
    }
    if max_batch > 1:
        conf["dynamic_batching"] = {
            "preferred_batch_size": list(db.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(db.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": db.max_queue_size,
                                     "default_timeout_microseconds": int(db.default_timeout_ms * 1000),
                                     "timeout_action": "REJECT", "allow_timeout_override": True},
        }
    return conf


__all__ = ["DATATYPES", "InferRequest", "ProtocolError", "RequestedOutput", "encode_infer_response",
           "encode_infer_response_parts",
           "kserve_datatype", "model_config_json", "model_metadata", "parse_infer_request", "platform", "triton_type"]
