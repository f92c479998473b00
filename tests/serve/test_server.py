"""The real server (uvicorn subprocess on a loopback port) talked to with tritonclient.http and httpx."""
from __future__ import annotations

import gzip
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ppdeploy.bench.server_process import ServerProcess
from tests.serve.conftest import CLS_OUT, REC_OUT, write_repo

pytestmark = pytest.mark.slow

MAX_BODY_MB = 4
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def shapes_dir():
    from ppdeploy.demo.shapes_classifier import default_dir, export

    return export(default_dir())


@pytest.fixture(scope="module")
def server(tmp_path_factory, shapes_dir, cls_runner, rec_runner, det_runner):
    """Strict readiness, with one model that cannot load: every other model must serve regardless."""
    root = tmp_path_factory.mktemp("repo")
    (root / "broken").mkdir()
    (root / "broken" / "model.onnx").write_bytes(b"this is not an ONNX model")
    write_repo(root, {
        "cls": "source: ppocr-cls\nbackends: [tensorrt, onnxruntime]\nmax_batch_size: 8\n"
               "dynamic_batching: {max_queue_delay_ms: 1}\n",
        "rec": "source: ppocrv4-rec\nbackends: [onnxruntime]\nmax_batch_size: 8\n"
               "dynamic_batching: {max_queue_delay_ms: 4}\n",
        "rec_tight": "source: ppocrv4-rec\nbackends: [onnxruntime]\nmax_batch_size: 1\n"
                     "dynamic_batching: {max_queue_size: 2}\n",
        "det": "source: ppocrv4-det\nbackends: [onnxruntime]\nmax_batch_size: 1\n",
        "ocr": "task: ocr\npipeline: {det: det, cls: cls, rec: rec}\n",
        "shapes": f"source: {shapes_dir}\nbackends: [onnxruntime]\ntask: classification\nmax_batch_size: 8\n",
        "broken": "source: model.onnx\nbackends: [onnxruntime, openvino]\n",
    })
    srv = ServerProcess(["--repo", str(root), "--max-body-mb", str(MAX_BODY_MB),
                         "--max-image-pixels", str(MAX_PIXELS)], wait_ready=False, access_log=True).start()
    srv.wait(lambda: all(m["state"] != "LOADING" for m in srv.post("/v2/repository/index").json()), 180, "loaded")
    yield srv
    assert srv.stop() == 0


def client(srv: ServerProcess, **kw) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(srv.hostport, **kw)


def infer_input(name: str, arr: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


def test_streamed_request_body_and_large_outputs_both_ways(server, rec_runner):
    """The raw infer route: a body in many chunks (Transfer-Encoding: chunked) is reassembled; a 2 MB binary output
    goes out as the output array's own memory, or joined and gzipped when the client asks for gzip."""
    line = np.random.default_rng(7).standard_normal((1, 3, 48, 320), dtype=np.float32)
    want = rec_runner.infer({"x": line})[REC_OUT]
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(line.shape),
                                   "parameters": {"binary_data_size": line.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    body = head + line.tobytes()

    def chunks():
        for i in range(0, len(body), 7000):
            yield body[i:i + 7000]

    for accept in ("identity", "gzip"):
        r = httpx.post(server.url + "/v2/models/rec/infer", content=chunks(), timeout=60,
                       headers={"Inference-Header-Content-Length": str(len(head)), "Accept-Encoding": accept})
        assert r.status_code == 200, r.text[:200]
        assert r.headers.get("content-encoding") == (None if accept == "identity" else "gzip")
        out = httpclient.InferResult.from_response_body(
            r.content, header_length=int(r.headers["inference-header-content-length"]))  # httpx un-gzips
        np.testing.assert_allclose(out.as_numpy(REC_OUT), want, rtol=1e-4, atol=1e-5)


def test_unavailable_model_is_reported_while_others_serve(server):
    index = {m["name"]: m for m in server.post("/v2/repository/index").json()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    reason = index["broken"]["reason"]
    # both backends of its chain were tried, each failing on the unreadable file, named with protobuf's error
    assert "onnxruntime: failed" in reason and "openvino: failed" in reason, reason
    assert reason.count("model.onnx is not a readable ONNX model (DecodeError") == 2, reason
    for backend in ("onnxruntime", "openvino"):
        assert server.metric("ppdeploy_backend_fallbacks_total", model="broken", backend=backend) == 1
    for name in ("cls", "rec", "rec_tight", "det", "ocr", "shapes"):
        assert index[name]["state"] == "READY", index[name]
    assert server.get("/v2/health/ready").status_code == 503  # strict readiness: not every model is READY
    assert server.get("/v2/health/live").status_code == 200
    assert server.get("/v2/models/broken/ready").status_code == 503
    r = server.post("/v2/models/broken/infer", json={"inputs": []})
    assert r.status_code == 503 and "unavailable" in r.json()["error"]
    assert server.get("/v2/models/cls/ready").status_code == 200


def test_metrics_use_triton_names_and_record_fallbacks(server):
    text = server.get("/metrics").text
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                 "nv_inference_pending_request_count", "ppdeploy_batch_size_bucket", "ppdeploy_engine_load_seconds"):
        assert f"\n{name}{{" in text, name
    assert "# TYPE nv_inference_request_success counter" in text
    # cls prefers TensorRT, which cannot run on this machine: the skip is counted, ONNX Runtime serves
    assert server.metric("ppdeploy_backend_fallbacks_total", model="cls", backend="tensorrt") == 1
    assert server.metric("ppdeploy_engine_load_seconds", model="cls", backend="onnxruntime") > 0
    assert server.metric("ppdeploy_model_ready", model="broken") == 0
    assert server.metric("ppdeploy_model_ready", model="cls") == 1


def test_metadata_and_infer_parity_with_the_direct_runner(server, cls_runner, rec_runner):
    c = client(server)
    assert c.is_server_live() and c.is_model_ready("cls")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata("rec")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 48, -1]}]
    assert meta["outputs"][0]["name"] == REC_OUT and meta["platform"] == "onnxruntime_onnx"
    conf = c.get_model_config("rec")
    assert conf["max_batch_size"] == 8 and conf["input"][0]["dims"] == [3, 48, -1]
    assert c.get_model_metadata("cls", model_version="1")["name"] == "cls"

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 48, 192), dtype=np.float32)
    want = cls_runner.infer({"x": x})[CLS_OUT]
    binary = c.infer("cls", [infer_input("x", x)], request_id="r1")
    assert binary.get_response()["id"] == "r1"
    np.testing.assert_allclose(binary.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)
    as_json = c.infer("cls", [infer_input("x", x, binary=False)],
                      outputs=[httpclient.InferRequestedOutput(CLS_OUT, binary_data=False)])
    np.testing.assert_allclose(as_json.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)
    zipped = c.infer("cls", [infer_input("x", x)], request_compression_algorithm="gzip",
                     response_compression_algorithm="deflate")
    np.testing.assert_allclose(zipped.as_numpy(CLS_OUT), want, rtol=1e-5, atol=1e-6)

    line = rng.standard_normal((1, 3, 48, 320), dtype=np.float32)
    rec = c.infer("rec", [infer_input("x", line)], model_version="1")
    np.testing.assert_allclose(rec.as_numpy(REC_OUT), rec_runner.infer({"x": line})[REC_OUT], rtol=1e-4, atol=1e-5)
    stats = c.get_inference_statistics("cls")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 3 and stats["execution_count"] >= 3


def test_concurrent_clients_form_batches_and_every_answer_is_right(server, rec_runner):
    rng = np.random.default_rng(1)
    lines = [rng.standard_normal((1, 3, 48, 160), dtype=np.float32) for _ in range(64)]
    expected = [rec_runner.infer({"x": x})[REC_OUT] for x in lines]
    before_ok = server.metric("nv_inference_request_success", model="rec")
    before_batches = server.metric("ppdeploy_batch_size_count", model="rec")
    before_single = server.metric("ppdeploy_batch_size_bucket", model="rec", le="1.0")
    local = threading.local()

    def one(k: int) -> np.ndarray:
        if not hasattr(local, "c"):
            local.c = client(server)
        return local.c.infer("rec", [infer_input("x", lines[k])], request_id=f"c{k}").as_numpy(REC_OUT)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(lines))))
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert server.metric("nv_inference_request_success", model="rec") - before_ok == len(lines)
    batches = server.metric("ppdeploy_batch_size_count", model="rec") - before_batches
    singles = server.metric("ppdeploy_batch_size_bucket", model="rec", le="1.0") - before_single
    assert batches < len(lines) and singles < batches  # batches larger than 1 formed
    assert server.metric("nv_inference_count", model="rec") >= len(lines)


def test_overload_gives_429_and_no_lost_or_duplicated_response(server):
    x = np.random.default_rng(2).standard_normal((1, 3, 48, 320), dtype=np.float32)
    req = httpclient.InferInput("x", list(x.shape), "FP32")
    req.set_data_from_numpy(x)
    from tritonclient.http._utils import _get_inference_request

    body, header_len = _get_inference_request([req], "", None, 0, False, False, 0, None, None)
    headers = {"Inference-Header-Content-Length": str(header_len), "Accept-Encoding": "identity"}
    before_ok = server.metric("nv_inference_request_success", model="rec_tight")
    before_rejected = server.metric("nv_inference_request_failure", model="rec_tight", reason="REJECTED")
    n_threads, per_thread = 24, 4

    def worker(t: int) -> list[tuple[str, int, httpx.Response]]:
        out = []
        with httpx.Client(base_url=server.url, timeout=60) as h:
            for i in range(per_thread):
                rid = f"o{t}-{i}"
                r = h.post("/v2/models/rec_tight/infer", content=body, headers={**headers, "X-Request-ID": rid})
                out.append((rid, r.status_code, r))
        return out

    with ThreadPoolExecutor(n_threads) as pool:
        answers = [a for part in pool.map(worker, range(n_threads)) for a in part]
    statuses = [s for _, s, _ in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    for rid, status, r in answers:
        assert r.headers["x-request-id"] == rid
        if status == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]
        else:
            result = httpclient.InferResult.from_response_body(
                r.content, header_length=int(r.headers["inference-header-content-length"]))
            assert result.as_numpy(REC_OUT).shape[0] == 1
    # The server counted exactly what the clients received: nothing lost, nothing twice.
    assert server.metric("nv_inference_request_success", model="rec_tight") - before_ok == statuses.count(200)
    assert server.metric("nv_inference_request_failure", model="rec_tight", reason="REJECTED") - before_rejected \
        == statuses.count(429)
    logged = [json.loads(line)["request_id"] for line in server.lines if line.startswith('{"ts"')]
    for rid, _, _ in answers:
        assert logged.count(rid) == 1


def _binary_request(x: np.ndarray) -> tuple[bytes, dict]:
    from ppdeploy.bench.serving import binary_infer_body

    body, header_len = binary_infer_body({"x": x})
    return body, {"Inference-Header-Content-Length": str(header_len), "Content-Type": "application/octet-stream"}


def _png(width: int, height: int, text: str = "") -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    if text:
        ImageDraw.Draw(img).text((20, 20), text, fill="black", font=ImageFont.load_default(size=40))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, "PNG")  # 9 Mpixel, a few KB on the wire
    return buf.getvalue()


def _json_infer(**overrides):
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 3, 48, 8], "data": [0.0] * (3 * 48 * 8)}
    tensor.update(overrides)
    return {"inputs": [tensor]}


_BIN_HEADER = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3,48,8],"parameters":{"binary_data_size":16}}]}'

MALFORMED = [
    # (name, method, path, kwargs, expected status)
    ("bad json", "POST", "/v2/models/cls/infer", {"content": b"{not json"}, 400),
    ("json array", "POST", "/v2/models/cls/infer", {"content": b"[]"}, 400),
    ("unknown datatype name", "POST", "/v2/models/cls/infer", {"json": _json_infer(datatype="FLOAT")}, 400),
    ("wrong datatype", "POST", "/v2/models/cls/infer", {"json": _json_infer(datatype="INT64")}, 400),
    ("shape/data mismatch", "POST", "/v2/models/cls/infer", {"json": _json_infer(shape=[1, 3, 48, 9])}, 400),
    ("wrong fixed dim", "POST", "/v2/models/cls/infer",
     {"json": _json_infer(shape=[1, 4, 48, 6])}, 400),
    ("wrong rank", "POST", "/v2/models/cls/infer", {"json": _json_infer(shape=[3, 48, 8])}, 400),
    ("batch over max", "POST", "/v2/models/rec_tight/infer",
     {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3, 48, 1], "data": [0.0] * 288}]}}, 400),
    ("unknown input", "POST", "/v2/models/cls/infer", {"json": _json_infer(name="image")}, 400),
    ("unknown output", "POST", "/v2/models/cls/infer", {"json": {**_json_infer(), "outputs": [{"name": "p"}]}}, 400),
    ("unknown model", "POST", "/v2/models/nope/infer", {"json": _json_infer()}, 404),
    ("unknown version", "GET", "/v2/models/cls/versions/7", {}, 404),
    ("task pipeline is not a tensor model", "GET", "/v2/models/ocr", {}, 404),
    ("binary length mismatch", "POST", "/v2/models/cls/infer",
     {"content": _BIN_HEADER + b"\0" * 16, "headers": {"Inference-Header-Content-Length": str(len(_BIN_HEADER))}},
     400),
    ("header length not a number", "POST", "/v2/models/cls/infer",
     {"json": _json_infer(), "headers": {"Inference-Header-Content-Length": "abc"}}, 400),
    ("oversized body", "POST", "/v2/models/cls/infer", {"content": b" " * (MAX_BODY_MB * 2 << 20)}, 413),
    ("oversized chunked body", "POST", "/v2/models/cls/infer",
     {"content": iter([b" " * (1 << 20)] * (MAX_BODY_MB + 2))}, 413),
    ("gzip bomb", "POST", "/v2/models/cls/infer",
     {"content": gzip.compress(b" " * (MAX_BODY_MB * 4 << 20)), "headers": {"Content-Encoding": "gzip"}}, 413),
    ("corrupt gzip", "POST", "/v2/models/cls/infer",
     {"content": b"\x1f\x8b garbage", "headers": {"Content-Encoding": "gzip"}}, 400),
    ("unknown content encoding", "POST", "/v2/models/cls/infer",
     {"content": b"{}", "headers": {"Content-Encoding": "br"}}, 400),
    ("non-image body to classify", "POST", "/v1/classify", {"content": b"GIF89a but not really"}, 400),
    ("non-image body to ocr", "POST", "/v1/ocr", {"content": b"\x89PNG\r\n\x1a\n truncated"}, 400),
    ("empty body to ocr", "POST", "/v1/ocr", {"content": b""}, 400),
    ("json to ocr", "POST", "/v1/ocr", {"json": {"image": "..."}}, 400),
    ("too many pixels", "POST", "/v1/classify", {"content": _bomb_png()}, 400),
    ("multipart without file", "POST", "/v1/classify", {"files": {"note": (None, b"no file")}}, 400),
    ("unknown task model", "POST", "/v1/classify/nope", {"content": b"x"}, 404),
    ("GET on infer", "GET", "/v2/models/cls/infer", {}, 405),
    ("unknown route", "GET", "/v3/anything", {}, 404),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_input_gets_4xx_in_kserve_format(server, case):
    name, method, path, kwargs, status = case
    r = httpx.request(method, server.url + path, timeout=30, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_server_survives_the_corpus(server, cls_runner):
    assert server.proc.poll() is None
    x = np.zeros((1, 3, 48, 8), np.float32)
    r = httpx.post(server.url + "/v2/models/cls/infer", json=_json_infer(), timeout=30)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], cls_runner.infer({"x": x})[CLS_OUT].ravel(), rtol=1e-5)


def test_task_routes_match_the_in_process_pipelines(server, det_runner, cls_runner, rec_runner, shapes_dir):
    from ppdeploy import OCR
    from ppdeploy.demo.shapes_classifier import render
    from ppdeploy.tasks.classification.task import Classifier

    page = _png(520, 90, "Serve 2026 ok")
    local = OCR.from_runners(det=det_runner, rec=rec_runner, cls=cls_runner).predict(page).to_dict()
    raw = server.post("/v1/ocr", content=page, headers={"Content-Type": "image/png"})
    multi = server.post("/v1/ocr/ocr", files={"image": ("page.png", page, "image/png")})
    for r in (raw, multi):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["model"] == "ocr" and got["width"] == 520
        assert [ln["text"] for ln in got["lines"]] == [ln["text"] for ln in local["lines"]]
        assert [ln["box"] for ln in got["lines"]] == [ln["box"] for ln in local["lines"]]
    assert any("2026" in ln["text"] for ln in local["lines"])

    from PIL import Image

    from ppdeploy.deploy.load import load_model

    classifier = Classifier.from_runner(load_model(str(shapes_dir), backend="onnxruntime").runner,
                                        preprocess=shapes_dir / "preprocess.yaml", labels=shapes_dir / "labels.txt")
    rng = np.random.default_rng(3)
    for label in range(4):
        buf = io.BytesIO()
        Image.fromarray(render(label, rng)).save(buf, "PNG")
        want = classifier.predict(buf.getvalue()).to_dict()["topk"]
        r = server.post("/v1/classify", files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        got = r.json()["topk"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("keyed"), {
        "rec": "source: ppocrv4-rec\nbackends: [onnxruntime]\nmax_batch_size: 8\n",
    })
    srv = ServerProcess(["--repo", str(root), "--drain-timeout", "60"], env={"PPDEPLOY_API_KEY": "s3cret"},
                        access_log=True).start()
    yield srv
    srv.stop()


def test_api_key_is_enforced_everywhere_but_health(keyed_server):
    srv = keyed_server
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert srv.get(path).status_code == 200
    for method, path in (("GET", "/v2"), ("GET", "/v2/models/rec"), ("POST", "/v2/models/rec/infer"),
                         ("GET", "/metrics"), ("POST", "/v2/repository/index"), ("POST", "/v1/ocr")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}):
            r = httpx.request(method, srv.url + path, headers=headers, timeout=30)
            assert r.status_code == 401 and "API key" in r.json()["error"], (path, headers)
    assert srv.get("/v2", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert srv.get("/v2/models/rec", headers={"X-API-Key": "s3cret"}).status_code == 200
    with pytest.raises(InferenceServerException):
        client(srv).get_model_metadata("rec")
    assert client(srv).get_model_metadata("rec", headers={"Authorization": "Bearer s3cret"})["name"] == "rec"


def test_sigterm_during_load_drains_every_accepted_request(keyed_server, rec_runner):
    srv = keyed_server
    x = np.random.default_rng(4).standard_normal((1, 3, 48, 320), dtype=np.float32)
    want = rec_runner.infer({"x": x})[REC_OUT]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    headers = {"Inference-Header-Content-Length": str(len(body)), "Authorization": "Bearer s3cret",
               "Accept-Encoding": "identity"}
    body += x.tobytes()
    received: dict[str, tuple[int, float]] = {}
    answers: dict[str, np.ndarray] = {}  # checked in the main thread: a failed assert in a thread only warns
    stop = threading.Event()

    def worker(t: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            i = 0
            while not stop.is_set():
                rid = f"drain-{t}-{i}"  # a prefix no generated request id has (those are hex)
                i += 1
                try:
                    r = h.post("/v2/models/rec/infer", content=body, headers={**headers, "X-Request-ID": rid})
                except httpx.TransportError:  # not accepted: the listener is closed, or the connection was idle
                    if srv.proc.poll() is not None:
                        return
                    continue
                received[rid] = (r.status_code, time.time())
                if r.status_code == 200:
                    try:
                        out = httpclient.InferResult.from_response_body(
                            r.content, header_length=int(r.headers["inference-header-content-length"]))
                        answers[rid] = out.as_numpy(REC_OUT)
                    except Exception as exc:  # an unreadable answer is a wrong answer, judged below
                        answers[rid] = exc

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    time.sleep(1.5)
    signalled = time.time()
    code = srv.stop()
    stop.set()
    for th in threads:
        th.join(60)
    assert code == 0
    assert not any(th.is_alive() for th in threads)
    assert all(status == 200 for status, _ in received.values()), {k: v for k, v in received.items() if v[0] != 200}
    assert received and set(answers) == set(received)
    for rid, got in answers.items():
        assert isinstance(got, np.ndarray), (rid, got)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=rid)
    assert any(t > signalled for _, t in received.values())  # requests in flight at the signal were finished
    accepted = {}
    for line in srv.lines:
        if line.startswith('{"ts"'):
            entry = json.loads(line)
            if entry["path"].endswith("/infer") and entry["request_id"].startswith("drain-"):  # this test's requests
                accepted[entry["request_id"]] = entry["status"]
    assert accepted and set(accepted) == set(received)  # every request the server took was answered, and received
    assert set(accepted.values()) == {200}


@pytest.fixture
def flaky_backend():
    """A backend registered from the test: ONNX Runtime whose runner passes its load's trial inference, then fails
    on every call, like a GPU engine that dies after start."""
    from ppdeploy.backends.registry import BACKENDS
    from tests.test_deploy import flaky_backend_class

    BACKENDS.register("flaky-test", flaky_backend_class(1))
    yield "flaky-test"
    BACKENDS.unregister("flaky-test")


def test_an_engine_that_fails_at_run_time_is_demoted_to_the_next_backend(flaky_backend, cls_runner):
    """Served by the real app: requests that meet the broken engine get 503 (none hangs, none is a 500), the model
    reloads on the next backend of its chain in the background, is READY again, answers right, and it is counted."""
    import asyncio

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.app import build_app

    cfg = ModelConfig.for_source("ppocr-cls", name="cls", backends=[flaky_backend, "onnxruntime"], max_batch_size=4)
    app = build_app([cfg])
    rng = np.random.default_rng(3)
    xs = [rng.random((1, 3, 48, 192), np.float32) for _ in range(6)]

    def body(x):
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
                first = await asyncio.wait_for(asyncio.gather(*(h.post("/v2/models/cls/infer", json=body(x))
                                                                for x in xs)), 30)
                deadline = time.monotonic() + 120
                while (await h.get("/v2/models/cls/ready")).status_code != 200:
                    assert time.monotonic() < deadline, "the model never became ready again"
                    await asyncio.sleep(0.2)
                after = await asyncio.wait_for(asyncio.gather(*(h.post("/v2/models/cls/infer", json=body(x))
                                                                for x in xs)), 30)
                return (first, after, (await h.get("/metrics")).text,
                        (await h.post("/v2/repository/index")).json(), app.state.host.models["cls"].engine)

    first, after, metrics, index, engine = asyncio.run(main())
    statuses = [r.status_code for r in first]
    assert statuses[0] == 503 and set(statuses) <= {503, 200}, [(r.status_code, r.text[:200]) for r in first]
    refused = first[0].json()["error"]
    assert "flaky-test engine failed (RuntimeError: an illegal memory access" in refused and "reloaded" in refused
    for x, r in zip(xs, after):
        assert r.status_code == 200, r.text[:300]
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], cls_runner.infer({"x": x})[CLS_OUT].ravel(),
                                   rtol=1e-5, atol=1e-6)
    assert [m["state"] for m in index] == ["READY"]
    assert engine.backend == "onnxruntime"
    assert [(a.backend, a.status) for a in engine.attempts] == [("flaky-test", "used"), ("flaky-test", "failed"),
                                                               ("onnxruntime", "used")]
    lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines() if ln and ln[0] != "#"}
    assert lines['ppdeploy_engine_demotions_total{backend="flaky-test",model="cls"}'] == 1
    assert lines['ppdeploy_backend_fallbacks_total{backend="flaky-test",model="cls"}'] == 1
    assert lines['ppdeploy_model_ready{model="cls"}'] == 1


def test_a_request_the_engine_cannot_take_does_not_demote_the_model(det_runner):
    """PP-OCRv4 det fails inside ONNX Runtime at 33 x 33 (its FPN cannot broadcast): that request fails, but the
    engine still passes its trial input, so it is the request's fault: the model stays READY on its backend."""
    import asyncio

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.app import build_app

    app = build_app([ModelConfig.for_source("ppocrv4-det", name="det", backends=["onnxruntime", "openvino"],
                                            max_batch_size=1)])
    odd = np.zeros((1, 3, 33, 33), np.float32)
    good = np.random.default_rng(5).random((1, 3, 64, 96), np.float32)

    def body(x):
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
                bad = await h.post("/v2/models/det/infer", json=body(odd))
                ready = (await h.get("/v2/models/det/ready")).status_code
                fine = await h.post("/v2/models/det/infer", json=body(good))
                return bad, ready, fine, (await h.get("/metrics")).text, app.state.host.models["det"]

    bad, ready, fine, metrics, model = asyncio.run(main())
    assert bad.status_code not in (200, 503) and "Add" in bad.json()["error"], bad.text[:300]
    assert ready == 200 and model.state == "READY" and model.engine.backend == "onnxruntime"
    assert fine.status_code == 200
    np.testing.assert_allclose(np.asarray(fine.json()["outputs"][0]["data"]),
                               det_runner.infer({"x": good})["sigmoid_0.tmp_0"].ravel(), rtol=1e-4, atol=1e-5)
    assert "ppdeploy_engine_demotions_total{" not in metrics
