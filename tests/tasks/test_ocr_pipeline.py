"""The OCR pipeline end to end on the real PP-OCR models (ONNX Runtime unless a test says otherwise)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from ppdeploy.tasks.ocr.builder import OCR
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.metrics import score_image
from ppdeploy.tasks.ocr.result import TIMING_KEYS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(synth_pages):
    item = read_labelled_folder(synth_pages)[0]
    return item


def lines_of(result):
    return [(line.text, line.box) for line in result.lines]


def test_page_is_read_correctly(ocr_ort, page):
    result = ocr_ort.predict(page.path)
    m = score_image(lines_of(result), [(l.text, l.box) for l in page.lines])
    assert m.det_recall == 1.0 and m.det_precision == 1.0
    assert m.char_accuracy > 0.95
    ys = [line.box[0][1] for line in result.lines]
    assert ys == sorted(ys) or all(b - a > -10 for a, b in zip(ys, ys[1:]))  # reading order
    assert all(0.5 <= line.score <= 1.0 for line in result.lines)


def test_every_input_kind_gives_the_same_lines(ocr_ort, page):
    expected = ocr_ort.predict(page.path).lines
    data = page.path.read_bytes()
    bgr = cv2.imread(str(page.path))
    for source in (str(page.path), data, Image.open(page.path), bgr):
        assert ocr_ort.predict(source).lines == expected


def test_result_has_timings_and_serialises(ocr_ort, page):
    result = ocr_ort.predict(page.path)
    assert set(result.timings) == set(TIMING_KEYS)
    assert result.timings["det_infer"] > 0 and result.timings["rec_infer"] > 0 and result.timings["decode"] > 0
    staged = sum(v for k, v in result.timings.items() if k != "total")
    assert staged <= result.timings["total"] * 1.01
    doc = json.loads(json.dumps(result.to_dict(), ensure_ascii=False))
    assert doc["lines"][0]["text"] == result.lines[0].text and len(doc["lines"][0]["box"]) == 4
    assert (doc["width"], doc["height"]) == (Image.open(page.path).width, Image.open(page.path).height)


def test_upside_down_page_needs_the_direction_classifier(ocr_ort, page):
    bgr = cv2.imread(str(page.path))
    upright = [l.text for l in ocr_ort.predict(bgr).lines]
    flipped = cv2.rotate(bgr, cv2.ROTATE_180)
    with_cls = [l.text for l in ocr_ort.predict(flipped).lines]
    no_cls = OCR.from_runners(det=ocr_ort.detector.runner, rec=ocr_ort.recognizer.runner, cls=None)
    without = [l.text for l in no_cls.predict(flipped).lines]
    same_with = len(set(upright) & set(with_cls)) / len(upright)
    same_without = len(set(upright) & set(without)) / len(upright)
    assert same_with > 0.8 > same_without


def test_blank_tiny_and_extreme_images_do_not_break(ocr_ort):
    assert ocr_ort.predict(np.full((300, 400, 3), 255, np.uint8)).lines == []
    assert ocr_ort.predict(np.zeros((1, 1), np.uint8)).lines == []
    strip = np.full((60, 30000, 3), 255, np.uint8)
    cv2.putText(strip, "HELLO WORLD " * 200, (5, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    result = ocr_ort.predict(strip)  # detector input becomes 32x960: documented resize, no crash
    assert result.width == 30000 and result.timings["total"] > 0


class CountingRunner:
    """Any object with .io and .infer works as a stage: here one that wraps a real runner and counts calls,
    as the HTTP server's batcher-backed runners do."""

    def __init__(self, inner):
        self.inner, self.calls, self.batch_sizes = inner, 0, []

    @property
    def io(self):
        return self.inner.io

    def infer(self, feeds):
        self.calls += 1
        self.batch_sizes.append(next(iter(feeds.values())).shape[0])
        return self.inner.infer(feeds)


def test_from_runners_accepts_any_runner_and_batches_rec(ocr_ort, page):
    det, cls, rec = (CountingRunner(r) for r in (ocr_ort.detector.runner, ocr_ort.classifier.runner,
                                                    ocr_ort.recognizer.runner))
    ocr = OCR.from_runners(det=det, cls=cls, rec=rec, rec_batch_size=4)
    result = ocr.predict(page.path)
    assert len(result.lines) == len(page.lines)
    n = len(page.lines)
    assert det.calls == 1
    assert rec.batch_sizes == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert cls.batch_sizes[0] == 6


def test_per_stage_backends(ocr_for, page):
    mixed = OCR(backend={"det": "openvino", "cls": "onnxruntime", "rec": "onnxruntime"})
    try:
        assert mixed.backends == {"det": "openvino", "cls": "onnxruntime", "rec": "onnxruntime"}
        assert [l.text for l in mixed.predict(page.path).lines] == \
            [l.text for l in ocr_for("onnxruntime").predict(page.path).lines]
    finally:
        mixed.close()


def test_cli_ocr_json_draw_and_errors(page, tmp_path, capsys, ocr_ort):
    from ppdeploy.cli import main

    out = tmp_path / "drawn.png"
    assert main(["ocr", str(page.path), "--backend", "onnxruntime", "--json", "--draw", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backends"] == {"det": "onnxruntime", "cls": "onnxruntime", "rec": "onnxruntime"}
    assert [l["text"] for l in doc["lines"]] == [l.text for l in ocr_ort.predict(page.path).lines]
    drawn = cv2.imread(str(out))
    assert drawn.shape[1] == 2 * doc["width"] and drawn.shape[0] == doc["height"]

    assert main(["ocr", str(page.path), "--backend", "onnxruntime", "--no-cls", "--timings"]) == 0
    captured = capsys.readouterr()
    assert doc["lines"][0]["text"] in captured.out and "det_infer" in captured.err

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["ocr", str(bad), "--backend", "onnxruntime"]) == 2
    assert "not a recognised image" in capsys.readouterr().err
    assert main(["ocr", str(page.path), "--backend", "onnxruntime", "--det-limit-type", "median"]) == 2


def test_draw_without_cjk_font_falls_back_to_boxes(page, ocr_ort, monkeypatch, caplog):
    from ppdeploy.tasks.ocr import draw

    monkeypatch.setattr(draw, "find_cjk_font", lambda: None)
    bgr = cv2.imread(str(page.path))
    lines = ocr_ort.predict(bgr).lines
    image, with_text = draw.draw_result(bgr, lines)
    assert not with_text and "boxes only" in caplog.text
    right = image[:, bgr.shape[1]:]
    assert right.min() < 255  # boxes are drawn
    image_text, with_text = draw.draw_result(bgr, lines)
    monkeypatch.undo()
    image_text, with_text = draw.draw_result(bgr, lines)
    assert with_text and (image_text[:, bgr.shape[1]:] < 128).sum() > (right < 128).sum()  # glyphs add dark ink


def test_cli_synth_then_eval_ocr(tmp_path, capsys):
    from ppdeploy.cli import main

    data = tmp_path / "set"
    assert main(["eval", "synth", str(data), "--pages", "2", "--seed", "7"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert main(["eval", "ocr", "--data", str(data), "--backend", "onnxruntime", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["images"] == 2 and doc["char_accuracy"] > 0.95 and doc["det_recall"] > 0.95
    assert doc["pages_per_s"] > 0 and doc["stage_ms"]["rec_infer"] > 0
