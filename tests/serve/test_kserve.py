"""The protocol codec against tritonclient's own request builder and response parser (no server needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

from ppdeploy.core.tensors import IOSpec, TensorSpec
from ppdeploy.serve.kserve import (
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
)

IO = IOSpec(
    inputs=(TensorSpec("x", "float32", (None, 3, None)), TensorSpec("ids", "int64", (None, 2)),
            TensorSpec("text", "object", (None,))),
    outputs=(TensorSpec("y", "float32", (None, 4)), TensorSpec("names", "object", (None,))),
)


def client_request(arrays: dict, binary: bool, outputs=None):
    inputs = []
    for name, arr in arrays.items():
        dt = "BYTES" if arr.dtype == object else {"float32": "FP32", "int64": "INT64"}[str(arr.dtype)]
        inp = httpclient.InferInput(name, list(arr.shape), dt)
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    return _get_inference_request(inputs, "req-7", outputs, 0, False, False, 0, None, None)


def arrays(rng):
    return {"x": rng.standard_normal((2, 3, 5), dtype=np.float32), "ids": np.array([[1, -2], [3, 2**40]]),
            "text": np.array([b"hello", "wörld".encode()], dtype=object)}


@pytest.mark.parametrize("binary", [True, False])
def test_parses_what_tritonclient_sends(binary):
    sent = arrays(np.random.default_rng(0))
    body, header_len = client_request(sent, binary)
    req = parse_infer_request(body, header_len, IO)
    assert req.id == "req-7"
    for name, arr in sent.items():
        assert req.inputs[name].shape == arr.shape
        np.testing.assert_array_equal(req.inputs[name], arr)
    # tritonclient asks for all outputs in binary when none are named
    assert [(o.name, o.binary) for o in req.outputs] == [("y", True), ("names", True)]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_reads_what_we_send(binary):
    body, header_len = client_request(arrays(np.random.default_rng(1)), True,
                                      [httpclient.InferRequestedOutput("y", binary_data=binary),
                                       httpclient.InferRequestedOutput("names", binary_data=binary)])
    req = parse_infer_request(body, header_len, IO)
    y = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    names = np.array([b"a", "\u00e9t\u00e9".encode()], dtype=object)
    payload, out_len = encode_infer_response("m", "1", req, {"y": y, "names": names})
    assert (out_len is not None) == binary
    result = httpclient.InferResult.from_response_body(payload, header_length=out_len)
    np.testing.assert_array_equal(result.as_numpy("y"), y)
    got = [v.encode() if isinstance(v, str) else v for v in result.as_numpy("names")]  # JSON BYTES come back as str
    assert got == list(names)
    assert result.get_response()["id"] == "req-7"


def test_classification_extension():
    body, header_len = client_request(arrays(np.random.default_rng(2)), True,
                                      [httpclient.InferRequestedOutput("y", class_count=2)])
    req = parse_infer_request(body, header_len, IO)
    y = np.array([[0.1, 0.7, 0.2, 0.0], [0.5, 0.1, 0.1, 0.3]], dtype=np.float32)
    payload, out_len = encode_infer_response("m", "1", req, {"y": y, "names": None}, labels=["a", "b", "c", "d"])
    top = httpclient.InferResult.from_response_body(payload, header_length=out_len).as_numpy("y")
    assert top.shape == (2, 2)
    assert top[0, 0].decode().startswith("0.7") and top[0, 0].decode().endswith(":1:b")
    assert top[1, 1].decode().endswith(":3:d")


def body_of(obj) -> bytes:
    return json.dumps(obj).encode()


X = {"name": "x", "datatype": "FP32", "shape": [1, 3, 1], "data": [1.0, 2.0, 3.0]}
IDS = {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}
TXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}

MALFORMED = {
    "not json": (b"{nope", None),
    "json array": (b"[1, 2]", None),
    "not utf-8": (b"\xff\xfe{}", None),
    "no inputs": (body_of({"inputs": []}), None),
    "input not an object": (body_of({"inputs": [3]}), None),
    "unknown datatype name": (body_of({"inputs": [{**X, "datatype": "FLOAT32"}, IDS, TXT]}), None),
    "datatype mismatch": (body_of({"inputs": [{**X, "datatype": "FP64"}, IDS, TXT]}), None),
    "shape/data mismatch": (body_of({"inputs": [{**X, "data": [1.0, 2.0]}, IDS, TXT]}), None),
    "negative dim": (body_of({"inputs": [{**X, "shape": [1, -3, 1]}, IDS, TXT]}), None),
    "shape not ints": (body_of({"inputs": [{**X, "shape": [1, "3", 1]}, IDS, TXT]}), None),
    "strings in FP32": (body_of({"inputs": [{**X, "data": ["a", "b", "c"]}, IDS, TXT]}), None),
    "floats in INT64": (body_of({"inputs": [X, {**IDS, "data": [1.5, 2]}, TXT]}), None),
    "int overflow": (body_of({"inputs": [X, {**IDS, "data": [2**70, 2]}, TXT]}), None),
    "objects in data": (body_of({"inputs": [{**X, "data": [{"a": 1}, 2.0, 3.0]}, IDS, TXT]}), None),
    "unknown input": (body_of({"inputs": [X, IDS, TXT, {**X, "name": "z"}]}), None),
    "duplicate input": (body_of({"inputs": [X, X, IDS, TXT]}), None),
    "no data": (body_of({"inputs": [{k: v for k, v in X.items() if k != "data"}, IDS, TXT]}), None),
    "unknown output": (body_of({"inputs": [X, IDS, TXT], "outputs": [{"name": "q"}]}), None),
    "bad binary flag": (body_of({"inputs": [X, IDS, TXT], "parameters": {"binary_data_output": "yes"}}), None),
    "bad timeout": (body_of({"inputs": [X, IDS, TXT], "parameters": {"timeout": -1}}), None),
    "header length not int": (body_of({"inputs": [X, IDS, TXT]}), "ten"),
    "header length too big": (body_of({"inputs": [X, IDS, TXT]}), "100000"),
    "binary size past end": (body_of({"inputs": [{**{k: v for k, v in X.items() if k != "data"},
                                                  "parameters": {"binary_data_size": 12}}, IDS, TXT]}) + b"\0" * 4,
                             "auto"),
    "binary size wrong for shape": (body_of({"inputs": [{**{k: v for k, v in X.items() if k != "data"},
                                                         "parameters": {"binary_data_size": 8}}, IDS, TXT]})
                                    + b"\0" * 8, "auto"),
    "unclaimed binary bytes": (body_of({"inputs": [X, IDS, TXT]}) + b"\0" * 8, "auto"),
    "truncated BYTES element": (body_of({"inputs": [X, IDS, {"name": "text", "datatype": "BYTES", "shape": [1],
                                                               "parameters": {"binary_data_size": 6}}]})
                                + b"\x09\0\0\0ab", "auto"),
    "shared memory": (body_of({"inputs": [{**X, "parameters": {"shared_memory_region": "r"}}, IDS, TXT]}), None),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_raise_protocol_error(case):
    body, header = MALFORMED[case]
    if header == "auto":  # the JSON part is everything up to the binary tail we appended
        header = str(body.rindex(b"}") + 1)
    with pytest.raises(ProtocolError):
        parse_infer_request(body, header, IO)


def test_valid_json_request_parses():
    req = parse_infer_request(body_of({"inputs": [{**X, "data": [[[1.0], [2.0], [3.0]]]}, IDS, TXT],
                                       "parameters": {"timeout": 2500}}), None, IO)
    assert req.inputs["x"].shape == (1, 3, 1) and req.inputs["x"][0, 2, 0] == 3.0
    assert req.timeout_ms == 2.5


def test_benchmark_request_body_is_valid_binary_protocol():
    from ppdeploy.bench.serving import binary_infer_body

    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    body, header_len = binary_infer_body({"x": x})
    io = IOSpec((TensorSpec("x", "float32", (None, 3, None)),), (TensorSpec("y", "float32", (None, 4)),))
    req = parse_infer_request(body, header_len, io)
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.outputs[0].binary
