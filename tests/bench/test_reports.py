"""`ppdeploy bench` writes JSON, markdown and PNG files; OCR runs compare against the Paddle Inference peer."""
from __future__ import annotations

import json

import pytest

from ppdeploy.bench import report
from ppdeploy.bench.ocr import line_agreement
from ppdeploy.bench.suite import SKELETON, update_benchmarks_md
from ppdeploy.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_model_matrix_writes_report(tmp_path, capsys):
    out = tmp_path / "b"
    md_path = tmp_path / "BENCHMARKS.md"
    md_path.write_text("# mine\n\n## Serving\n\nnumbers pasted by hand\n")
    code = main(["bench", "ppocr-cls", "--backends", "onnxruntime,no-such-backend", "--batch-sizes", "1,2",
                 "--warmup", "1", "--min-runs", "5", "--min-time", "0", "--out", str(out), "--no-progress",
                 "--update-markdown", "--markdown", str(md_path)])
    assert code == 0
    doc = md_path.read_text()
    assert "numbers pasted by hand" in doc and "ppdeploy-bench:models:begin" in doc and "_Measured " in doc
    assert "![latency vs batch size](b/models_latency_vs_batch.png)" in doc  # relative to the markdown file
    data = json.loads((out / "models.json").read_text())
    assert data["environment"]["cpu_model"] and data["environment"]["versions"]["onnxruntime"]
    rows = data["results"]
    ok = [r for r in rows if r["ok"]]
    assert [(r["backend"], r["batch"]) for r in ok] == [("onnxruntime", 1), ("onnxruntime", 2)]
    for r in ok:
        assert r["input_shapes"]["x"] == [r["batch"], 3, 48, 192]
        assert r["latency"]["count"] == len(r["samples_ms"]) >= 5
        assert r["latency"]["min"] <= r["latency"]["p50"] <= r["latency"]["p90"] <= r["latency"]["p99"] <= r["latency"]["max"]
        assert r["throughput"] > 0 and r["peak_rss_mib"] > 0
        assert "compute" in r["stages_ms"]  # the runner's own stage times
    bad = [r for r in rows if not r["ok"]]
    assert len(bad) == 2 and all("no-such-backend" in r["error"] for r in bad)
    for name in ("models_latency_vs_batch.png", "models_throughput.png", "models_latency_cdf.png"):
        assert (out / name).read_bytes().startswith(PNG)
    md = (out / "models.md").read_text()
    assert "![latency vs batch size](models_latency_vs_batch.png)" in md
    assert "| ppocr-cls | onnxruntime | fp32 | 2 |" in md
    assert "could not run" in md
    assert "| p50 ms |" in capsys.readouterr().out
    # interleaved: same cases, taking turns; memory is what each engine added at load
    out2 = tmp_path / "b2"
    assert main(["bench", "ppocr-cls", "--backends", "onnxruntime,openvino", "--interleave", "--warmup", "1",
                 "--min-runs", "5", "--min-time", "0.2", "--out", str(out2), "--no-progress"]) == 0
    data2 = json.loads((out2 / "models.json").read_text())
    assert data2["interleaved"] is True
    assert [r["backend"] for r in data2["results"] if r["ok"]] == ["onnxruntime", "openvino"]
    for r in data2["results"]:
        assert r["latency"]["count"] >= 5 and r["load_rss_mib"] is not None and r["peak_rss_mib"] is None
        assert r["cpu_ms"]["mean"] > 0
    assert "interleaved" in (out2 / "models.md").read_text()


def test_bench_without_model_is_a_clear_error(tmp_path):
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert main(["bench", "ppocr-cls", "--batch-sizes", "0", "--out", str(tmp_path)]) == 2


def test_line_agreement_is_order_free_multiset():
    ref = [["a", "b", "b"], ["c"]]
    assert line_agreement(ref, [["b", "a", "b"], ["c"]])["line_agreement"] == 1.0
    got = line_agreement(ref, [["a", "b", "x"], []])
    assert got["matched_lines"] == 2 and got["reference_lines"] == 4 and got["line_agreement"] == 0.5


def test_generated_blocks_replace_only_their_own_text(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    update_benchmarks_md(path, {"models": "first table"})
    doc = path.read_text()
    assert doc.startswith(SKELETON.splitlines()[0]) and "first table" in doc
    path.write_text(doc + "\n## Serving\n\nhand-written numbers from the lead\n")
    update_benchmarks_md(path, {"models": "second table", "ocr": "ocr table"})
    doc = path.read_text()
    assert "second table" in doc and "first table" not in doc and "ocr table" in doc
    assert "hand-written numbers from the lead" in doc
    assert doc.count("ppdeploy-bench:models:begin") == 1


def test_load_plot_and_table(tmp_path):
    rows = [{"offered_rate": r, "achieved_rps": min(r, 30.0), "sent": 10, "ok": 9, "http_429": 1, "http_errors": 0,
             "failures": 0, "dropped": 0, "latency_ms": {"p50": 10.0 * r, "p90": 12.0 * r, "p99": 20.0 * r, "max": 25.0 * r},
             "send_lag_ms": {"p99": 0.5}} for r in (10.0, 20.0, 40.0)]
    png = report.plot_latency_vs_load(rows, tmp_path / "l.png")
    assert png.read_bytes().startswith(PNG)
    table = report.load_markdown(rows)
    assert table.count("\n") == 4 and "| 40.00 | 30.00 |" in table


@pytest.mark.slow
def test_bench_ocr_against_paddle_peer(tmp_path):
    """One small page through ppdeploy's OCR and RapidOCR on Paddle Inference (its venv needs no download:
    rapidocr-paddle is already in ppdeploy's environment)."""
    from PIL import Image, ImageDraw, ImageFont

    from ppdeploy.tasks.ocr.fonts import latin_fonts

    font = str(latin_fonts()[0])
    from ppdeploy.tasks.ocr.dataset import (
        LabelledImage,
        LabelledLine,
        write_labels_json,
    )

    img = Image.new("RGB", (480, 200), "white")
    d = ImageDraw.Draw(img)
    truth = []
    for i, text in enumerate(["Invoice 2024-05-17", "Total $1,234.50", "Thank you"]):
        f = ImageFont.truetype(font, 30)
        d.text((20, 20 + 60 * i), text, fill="black", font=f)
        x0, y0, x1, y1 = d.textbbox((20, 20 + 60 * i), text, font=f)
        truth.append(LabelledLine(text, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    data = tmp_path / "pages"
    data.mkdir()
    img.save(data / "p.png")
    write_labels_json(data, [LabelledImage(data / "p.png", truth)])
    out = tmp_path / "o"
    from ppdeploy.core.device import cpu_supports_bf16

    guarded = ["--pipeline", "det=onnxruntime,cls=onnxruntime,rec=openvino:bf16"] if cpu_supports_bf16() else []
    code = main(["bench", "ocr", "--data", str(data), "--backends", "onnxruntime", "--peers", "rapidocr-paddle",
                 "--warmup", "1", "--min-runs", "2", "--min-time", "0", "--out", str(out), "--no-progress", *guarded])
    assert code == 0
    res = json.loads((out / "ocr.json").read_text())
    by_name = {e["name"]: e for e in res["entries"]}
    if guarded:  # a per-stage pipeline; its BF16 rec gets the FP32 guard, whose re-reads are counted per page
        bf16 = by_name["ppdeploy det=onnxruntime,cls=onnxruntime,rec=openvino det=fp32,cls=fp32,rec=bf16 + FP32 rec guard"]
        assert bf16["ok"], bf16["error"]
        assert bf16["stage_backends"] == {"det": "onnxruntime", "rec": "openvino", "cls": "onnxruntime"}
        assert bf16["stages_ms"]["guarded_lines"] >= 0 and "rec_guard" in bf16["stages_ms"]
    peer, mine = by_name["rapidocr-paddle"], by_name["ppdeploy onnxruntime fp32"]
    assert peer["ok"], peer["error"]
    assert mine["ok"], mine["error"]
    assert res["reference"] == "rapidocr-paddle"
    assert "Total$1,234.50" in [t.replace(" ", "") for t in peer["texts"][0]]
    assert mine["agreement"]["reference_lines"] == len(peer["texts"][0]) >= 3
    assert mine["agreement"]["line_agreement"] >= 2 / 3
    assert res["labelled"]
    for e in (peer, mine):  # scored against the labels with ppdeploy.tasks.ocr.metrics
        assert e["accuracy"]["gt_lines"] == 3 and e["accuracy"]["char_accuracy"] > 0.8
        assert e["accuracy"]["det_recall"] == 1.0
    assert mine["stage_backends"] == {"det": "onnxruntime", "rec": "onnxruntime", "cls": "onnxruntime"}
    assert {"det_infer", "rec_infer", "decode"} <= set(mine["stages_ms"])
    assert peer["versions"]["rapidocr-paddle"] == "1.4.5"
    assert peer["latency_ms"]["count"] == len(peer["samples_ms"]) >= 2
    for e in (peer, mine):  # interleaved rounds: both read the page the same number of times, CPU time recorded
        assert e["pages"] == max(peer["pages"], mine["pages"])
        assert e["cpu_ms"]["mean"] > 0
    assert peer["peak_rss_mib"] > 0  # reported by the worker process
    assert (out / "ocr_pages_per_s.png").read_bytes().startswith(PNG)
    assert "rapidocr-paddle" in (out / "ocr.md").read_text()


def test_ocr_pipeline_spec_parsing():
    from ppdeploy.bench.ocr import OCRConfig
    from ppdeploy.core.errors import PPDeployError

    c = OCRConfig.parse("det=openvino, cls=onnxruntime ,rec=openvino:bf16")
    assert c.backend == {"det": "openvino", "cls": "onnxruntime", "rec": "openvino"}
    assert c.precision == {"det": "fp32", "cls": "fp32", "rec": "bf16"} and c.rec_guard == "auto"
    assert c.label.endswith("+ FP32 rec guard")
    off = OCRConfig.parse("det=openvino,cls=openvino,rec=openvino:int8,guard=off")
    assert off.rec_guard is None and off.label.endswith("(no rec guard)")
    assert "guard" not in OCRConfig.parse("det=openvino,cls=openvino,rec=openvino").label
    assert OCRConfig.parse("det=openvino,cls=openvino,rec=openvino:int8").label.endswith("+ FP32 rec guard")  # by default now (issue 21)
    narrow = OCRConfig.parse("det=openvino,rec=openvino:bf16,guard=0.2")
    assert narrow.rec_guard == "auto" and narrow.rec_guard_margin == 0.2
    assert narrow.label.endswith("+ FP32 rec guard (margin 0.2)")
    bf16_det = OCRConfig.parse("det=openvino:bf16,cls=openvino:bf16,rec=openvino:bf16")
    assert bf16_det.keep_fp32 == "auto" and bf16_det.label.endswith("+ FP32 rec guard + FP32 det encoder")
    all_bf16 = OCRConfig.parse("det=openvino:bf16,rec=openvino:bf16,keep_fp32=off")
    assert all_bf16.keep_fp32 is None and "encoder" not in all_bf16.label
    for bad in ("foo", "det=", "rec=openvino:bf16,speed=max", "det=openvino:bf16,keep_fp32=maybe"):
        with pytest.raises(PPDeployError, match="bad OCR pipeline spec"):
            OCRConfig.parse(bad)
