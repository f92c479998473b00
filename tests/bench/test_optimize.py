"""`ppdeploy optimize`: candidates gated on accuracy, benchmarked, winner written as a servable model repository."""
from __future__ import annotations

import json

import pytest

from ppdeploy.cli import main
from ppdeploy.optimize.candidates import Candidate, candidate_matrix, pick_winner


def test_candidate_matrix_explains_every_skip():
    todo, skipped = candidate_matrix(["fp32", "fp16", "int8"], has_calib=False, backends=["onnxruntime", "paddle"])
    assert [(c.backend, c.precision) for c in todo] == [("onnxruntime", "fp32"), ("paddle", "fp32")]
    reasons = {(c.backend, c.precision): c.reason for c in skipped}
    assert "GPU" in reasons[("onnxruntime", "fp16")]
    assert "calibration" in reasons[("onnxruntime", "int8")]
    todo, _ = candidate_matrix(["int8"], has_calib=True, backends=["onnxruntime"])
    assert [(c.backend, c.precision) for c in todo] == [("onnxruntime", "int8")]


def test_pick_winner_follows_the_target():
    a = Candidate("a", "fp32", "passed", score=5.0)
    b = Candidate("b", "fp32", "passed", score=3.0)
    c = Candidate("c", "int8", "failed-accuracy", score=1.0)  # fastest, but failed its gate
    assert pick_winner([a, b, c], "latency") is b
    assert b.status == "winner" and c.status == "failed-accuracy"
    assert pick_winner([a, b, c], "throughput") is a
    assert b.status == "passed" and a.status == "winner"
    assert pick_winner([c], "latency") is None


@pytest.mark.slow
def test_optimize_model_writes_a_servable_repository(tmp_path, capsys):
    from ppdeploy.repository.config import load_repository

    out = tmp_path / "repo"
    code = main(["optimize", "ppocr-cls", "--backends", "onnxruntime,openvino", "--precisions", "fp32,int8",
                 "--min-time", "0", "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "optimize.json").read_text())
    tried = {(c["backend"], c["precision"]): c for c in data["candidates"]}
    assert tried[("onnxruntime", "int8")]["status"] == "skipped"  # no --calib
    fp32 = [tried[("onnxruntime", "fp32")], tried[("openvino", "fp32")]]
    for c in fp32:
        assert c["status"] in ("passed", "winner"), c["reason"]
        assert c["accuracy"]["within_fp32_tolerance"] and c["accuracy"]["min_cosine"] > 0.9999
        assert c["latency_ms"]["p50"] > 0
    winner = min(fp32, key=lambda c: c["latency_ms"]["p50"])
    assert winner["status"] == "winner"
    assert data["winner"] == f"{winner['backend']} fp32"
    assert data["reference"] == "onnxruntime fp32"  # paddle was not in the tried backends
    [cfg] = load_repository(out)  # the serving schema accepts what optimize wrote
    assert cfg.name == "ppocr-cls" and cfg.source == "ppocr-cls"
    assert cfg.backends == [winner["backend"]] and cfg.precision == "fp32"
    assert (out / "optimize.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "optimize.md").read_text()
    assert f"**Winner: {data['winner']}**" in md and "INT8 needs calibration data" in md
    assert "Winner" in capsys.readouterr().out


def test_optimize_rejects_bad_arguments(tmp_path):
    assert main(["optimize", "ppocr-cls", "--precisions", "fp64", "--out", str(tmp_path)]) == 2
    assert main(["optimize", "ppocr-cls", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2


def _small_page(path, lines):
    from PIL import Image, ImageDraw, ImageFont

    from ppdeploy.tasks.ocr.fonts import latin_fonts

    font = ImageFont.truetype(str(latin_fonts()[0]), 28)
    img = Image.new("RGB", (520, 60 * len(lines) + 20), "white")
    d = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        d.text((20, 15 + 60 * i), text, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.mark.slow
def test_optimize_ocr_gates_stages_on_the_pipeline(tmp_path):
    from ppdeploy.repository.config import load_repository

    _small_page(tmp_path / "calib" / "a.png", ["Order 4711 shipped", "Due 2025-03-01"])
    _small_page(tmp_path / "eval" / "b.png", ["Invoice total $88.20", "Thank you"])
    out = tmp_path / "repo"
    code = main(["optimize", "ocr", "--calib", str(tmp_path / "calib"), "--data", str(tmp_path / "eval"),
                 "--backends", "onnxruntime,paddle", "--precisions", "fp32", "--min-time", "0", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    data = json.loads((out / "optimize.json").read_text())
    assert data["combined"]["passed"] and data["combined"]["line_agreement"] == 1.0
    for stage in ("det", "cls", "rec"):
        tried = [c for c in data["stages"][stage] if c["status"] != "skipped"]
        assert {c["backend"] for c in tried} == {"onnxruntime", "paddle"}
        assert all(c["accuracy"]["line_agreement"] == 1.0 for c in tried)
        assert sum(c["status"] == "winner" for c in tried) == 1
        assert data["winners"][stage] in {"onnxruntime fp32", "paddle fp32"}
    configs = {c.name: c for c in load_repository(out, check_source=False)}
    assert set(configs) == {"det", "cls", "rec", "ocr"}
    assert configs["ocr"].task == "ocr" and configs["ocr"].pipeline == {"det": "det", "cls": "cls", "rec": "rec"}
    assert configs["rec"].source == "ppocrv4-rec"
    # calibration and evaluation pages must be disjoint
    assert main(["optimize", "ocr", "--calib", str(tmp_path / "calib"), "--data", str(tmp_path / "calib"),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2


@pytest.mark.slow
def test_optimize_ocr_tries_reduced_precision_rec_with_its_fp32_guard(tmp_path):
    from ppdeploy.core.device import cpu_supports_bf16
    from ppdeploy.repository.config import load_repository

    if not cpu_supports_bf16():
        pytest.skip("CPU has no avx512_bf16/AMX")
    _small_page(tmp_path / "calib" / "a.png", ["Order 4711 shipped", "Due 2025-03-01"])
    _small_page(tmp_path / "eval" / "b.png", ["Invoice total $88.20", "Thank you"])
    out = tmp_path / "repo"
    assert main(["optimize", "ocr", "--calib", str(tmp_path / "calib"), "--data", str(tmp_path / "eval"),
                 "--backends", "openvino", "--precisions", "fp32,bf16", "--min-time", "0", "--out", str(out),
                 "--no-progress"]) == 0
    data = json.loads((out / "optimize.json").read_text())
    rec = {(c["precision"], c["guard"]): c for c in data["stages"]["rec"] if c["status"] != "skipped"}
    assert set(rec) == {("fp32", False), ("bf16", False), ("bf16", True)}
    assert rec[("bf16", True)]["status"] in ("winner", "passed") and rec[("bf16", True)]["latency_ms"]["p50"] > 0
    assert not any(c["guard"] for s in ("det", "cls") for c in data["stages"][s])  # only rec has a guard
    det = {(c["precision"], tuple(c["keep_fp32"])): c for c in data["stages"]["det"] if c["status"] != "skipped"}
    assert set(det) == {("fp32", ()), ("bf16", ()), ("bf16", ("encoder",))}  # a BF16 det also with its FP32 encoder
    configs = {c.name: c for c in load_repository(out, check_source=False)}
    det_winner = next(c for c in data["stages"]["det"] if c["status"] == "winner")
    assert configs["det"].keep_fp32 == list(det_winner["keep_fp32"])  # the repository builds what was judged
    if rec[("bf16", True)]["status"] == "winner":
        assert data["winners"]["rec"] == "openvino bf16 + fp32 guard"
        assert configs["ocr"].pipeline["rec_guard"] == "rec_guard"
        assert configs["rec_guard"].precision == "fp32" and configs["rec"].precision == "bf16"
    else:
        assert "rec_guard" not in configs and "rec_guard" not in configs["ocr"].pipeline
