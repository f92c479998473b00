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


def _wide_line_page(path) -> str:
    """A page with one line about 68 times as wide as it is high (3300 px at rec's 48 px height) and a short one."""
    from PIL import ImageDraw, ImageFont

    from ppdeploy.tasks.ocr.fonts import latin_fonts

    text = "314159265358979323846264338327950288419716939937510582097494459230781640628620899862803482"
    font = ImageFont.truetype(str(latin_fonts()[0]), 18)
    img = Image.new("RGB", (int(font.getlength(text)) + 40, 140), "white")
    draw = ImageDraw.Draw(img)
    draw.text((20, 20), text, fill="black", font=font)
    draw.text((20, 80), "short line 2026", fill="black", font=font)
    img.save(path)
    return text


@pytest.mark.slow
def test_an_unusually_wide_line_is_squeezed_to_the_served_rec_profile_not_a_400(tmp_path):
    """The served rec model allows lines up to 1600 px wide (its shape profile); a page with a 3300 px line is
    still read (the line squeezed to 1600, as PaddleOCR does), not refused with a 400."""
    import asyncio

    import httpx

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.app import build_app
    from ppdeploy.tasks.ocr.metrics import normalized_edit_distance

    text = _wide_line_page(tmp_path / "wide.png")
    profile = {"x": {"min": [1, 3, 48, 32], "opt": [6, 3, 48, 320], "max": [6, 3, 48, 1600]}}
    configs = [ModelConfig.for_source("ppocrv4-det", name="det", backends=["onnxruntime"], max_batch_size=1),
               ModelConfig.for_source("ppocr-cls", name="cls", backends=["onnxruntime"]),
               ModelConfig.for_source("ppocrv4-rec", name="rec", backends=["onnxruntime"], max_batch_size=6,
                                      inputs=profile),
               ModelConfig(name="ocr", task="ocr", pipeline={"det": "det", "cls": "cls", "rec": "rec"})]
    app = build_app(configs)

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
                page = await h.post("/v1/ocr", content=(tmp_path / "wide.png").read_bytes(),
                                    headers={"content-type": "image/png"})
                too_wide = np.zeros((1, 3, 48, 1632), np.float32)  # the model itself still refuses wider input
                direct = await h.post("/v2/models/rec/infer", json={"inputs": [
                    {"name": "x", "datatype": "FP32", "shape": list(too_wide.shape), "data": too_wide.ravel().tolist()}]})
                return page, direct

    page, direct = asyncio.run(main())
    assert direct.status_code == 400 and "outside the build profile" in direct.json()["error"]
    assert page.status_code == 200, page.text[:300]
    texts = [line["text"] for line in page.json()["lines"]]
    longest = max(texts, key=len)
    assert normalized_edit_distance(longest, text) < 0.1, texts
    assert any("2026" in t for t in texts), texts


def test_rec_batch_width_stays_within_the_model_limits(ocr_ort):
    from ppdeploy.core.errors import ConfigError
    from ppdeploy.core.shapes import InputRange, ShapeProfile
    from ppdeploy.core.tensors import IOSpec, TensorSpec
    from ppdeploy.tasks.ocr.rec import RecOptions, width_range

    class Stub:  # only io and shapes are read
        def __init__(self, width, shapes=None):
            self.io = IOSpec((TensorSpec("x", "float32", (None, 3, 48, width)),), ())
            self.shapes = shapes

    assert width_range(Stub(None), RecOptions()) == (320, 3200)
    assert width_range(Stub(None), RecOptions(max_width=5000)) == (320, 5000)
    assert width_range(Stub(640), RecOptions()) == (640, 640)  # a fixed width is the width
    profile = ShapeProfile({"x": InputRange((1, 3, 48, 400), (1, 3, 48, 640), (8, 3, 48, 960))})
    assert width_range(Stub(None, profile), RecOptions()) == (400, 960)
    with pytest.raises(ConfigError, match="max_width 100 is below image_width 320"):
        RecOptions(max_width=100)
    crops = [np.full((20, 20 * k, 3), 255, np.uint8) for k in (1, 5, 200)]  # the last: 9600 px at 48 high
    assert [w for _, w in ocr_ort.recognizer._batches(crops)] == [3200]  # one batch of 3 (batch_size 6)
    texts, _ = ocr_ort.recognizer(crops)  # the model runs it: blank crops read as nothing
    assert len(texts) == 3


def test_cli_ocr_over_a_folder_streams_jsonl_and_carries_on_past_bad_files(page, tmp_path, capsys, ocr_ort):
    from ppdeploy.cli import main

    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "a.png").write_bytes(page.path.read_bytes())
    (folder / "b.jpg").write_text("not an image")
    (folder / "c.png").write_bytes(page.path.read_bytes())
    drawn = tmp_path / "drawn"
    code = main(["ocr", str(folder), "--backend", "onnxruntime", "--json", "--draw", str(drawn)])
    out, err = capsys.readouterr()
    assert code == 2
    records = [json.loads(line) for line in out.splitlines()]  # JSONL: one record per image, in order
    assert [r["image"] for r in records] == [str(folder / n) for n in ("a.png", "b.jpg", "c.png")]
    want = [line.text for line in ocr_ort.predict(page.path).lines]
    assert [line["text"] for line in records[0]["lines"]] == want == [line["text"] for line in records[2]["lines"]]
    assert "not a recognised image" in records[1]["error"]
    assert sorted(p.name for p in drawn.iterdir()) == ["a_ocr.png", "c_ocr.png"]
    assert f"ppdeploy ocr: error: {folder / 'b.jpg'}: " in err and "1 of 3 inputs failed" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags,message", [
    (["--font", "/nonexistent/font.ttf"], "font file not found: /nonexistent/font.ttf"),
    (["--font", "__NOT_A_FONT__"], "is not a font PIL can read"),
    (["--draw", "out.xyz"], "'.xyz' is not an image format OpenCV writes"),
    (["--draw", "/nonexistent/dir/out.png"], "folder /nonexistent/dir does not exist"),
])
def test_cli_ocr_bad_font_or_draw_target_is_one_clear_line(page, tmp_path, capsys, flags, message):
    from ppdeploy.cli import main

    not_a_font = tmp_path / "font.ttf"
    not_a_font.write_text("plain text")
    flags = [str(not_a_font) if f == "__NOT_A_FONT__" else f for f in flags]
    if flags[0] == "--draw" and not flags[1].startswith("/"):
        flags[1] = str(tmp_path / flags[1])
    assert main(["ocr", str(page.path), "--backend", "onnxruntime", "--draw", str(tmp_path / "d.png"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("ppdeploy ocr: error: ") and "Traceback" not in err
