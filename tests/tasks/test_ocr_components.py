"""The OCR building blocks on hand-made inputs: DB post-processing, reading order, crops, CTC decoding, options."""
from __future__ import annotations

import numpy as np
import pytest

from ppdeploy.core.errors import ConfigError
from ppdeploy.tasks.ocr.crop import crop_quad
from ppdeploy.tasks.ocr.det import (
    DBPostProcess,
    DetOptions,
    filter_boxes,
    resize_for_det,
    sort_reading_order,
)
from ppdeploy.tasks.ocr.pipeline import OCROptions, option_names
from ppdeploy.tasks.ocr.rec import ctc_greedy_decode
from ppdeploy.tasks.ocr.textline import fill_batch


def test_det_resize_follows_paddleocr_limits():
    opts = DetOptions(limit_side_len=960, limit_type="max")
    img = np.zeros((1000, 2000, 3), np.uint8)
    resized, rh, rw = resize_for_det(img, opts)
    assert resized.shape[:2] == (480, 960)  # long side to 960, both multiples of 32
    small, _, _ = resize_for_det(np.zeros((100, 200, 3), np.uint8), opts)
    assert small.shape[:2] == (96, 192)  # not enlarged, only rounded to multiples of 32
    strip, _, _ = resize_for_det(np.zeros((40, 30000, 3), np.uint8), opts)
    assert strip.shape[:2] == (32, 960)  # never below 32
    mn, _, _ = resize_for_det(np.zeros((100, 200, 3), np.uint8), DetOptions(limit_type="min", limit_side_len=736))
    assert mn.shape[:2] == (736, 1472)


def test_adaptive_rule_rescales_only_text_outside_the_comfortable_range():
    from ppdeploy.tasks.ocr.det import median_line_height, next_ratio

    opts = DetOptions()  # long side <= 960, then text boxes kept within 24-40 px of the detector's input
    page = (4000, 3000)
    first = 960 / 4000
    assert next_ratio(page, first, 30 / first, opts) is None  # 30 px as the detector saw it: comfortable
    small = next_ratio(page, first, 10.0, opts)  # 10 px text shrunk to 2.4 px: enlarge, up to the 4096 cap
    assert small == pytest.approx(4096 / 4000)
    big = next_ratio((400, 300), 1.0, 90.0, opts)  # an unshrunk sign with 90 px lines: shrink toward ~31 px
    assert 90 * big == pytest.approx((24 * 40) ** 0.5, rel=1e-6)
    assert next_ratio(page, first, None, opts) == 1.0  # nothing found on a shrunk page: look at full size
    assert next_ratio((400, 300), 1.0, None, opts) is None
    quads = np.array([[[0, 0], [100, 0], [100, 10], [0, 10]], [[0, 0], [50, 0], [50, 30], [0, 30]]], np.float32)
    assert median_line_height(quads) == pytest.approx(20.0) and median_line_height(np.zeros((0, 4, 2))) is None


def test_db_postprocess_finds_text_regions_in_original_pixels():
    prob = np.zeros((320, 640), np.float32)
    prob[40:60, 100:300] = 0.9  # a line
    prob[200:230, 50:500] = 0.8  # another
    prob[100:103, 10:12] = 0.9  # a speck below min_size
    prob[150:170, 400:600] = 0.5  # above thresh but box score below box_thresh 0.6
    boxes, scores = DBPostProcess(DetOptions())(prob, (640, 1280))  # original image is 2x the map
    assert len(boxes) == 2
    boxes, scores = filter_boxes(boxes, scores, (640, 1280))
    boxes, scores = sort_reading_order(boxes, scores)
    first, second = boxes
    # unclipped (expanded) around the region, scaled x2 to the original image
    assert first[0][0] < 200 < 600 < first[1][0] and first[0][1] < 80 < 120 < first[2][1]
    assert second[0][1] > first[2][1]
    assert all(0.79 < s <= 0.9 for s in scores)


def test_reading_order_is_top_to_bottom_then_left_to_right():
    def quad(x, y):
        return np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]], np.float32)

    boxes = [quad(300, 105), quad(10, 100), quad(10, 10), quad(200, 12)]
    ordered, scores = sort_reading_order(boxes, [1, 2, 3, 4])
    assert scores == [3, 4, 2, 1]  # same row within 10 px: left first


def test_crop_is_upright_and_tall_crops_rotate():
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:40, 50:150] = 255
    crop = crop_quad(img, np.array([[50, 20], [150, 20], [150, 40], [50, 40]], np.float32))
    assert crop.shape[:2] == (20, 100) and crop.mean() > 250
    tall = crop_quad(img, np.array([[10, 10], [30, 10], [30, 90], [10, 90]], np.float32))
    assert tall.shape[:2] == (20, 80)  # h/w >= 1.5 -> rotated to a horizontal line


def test_textline_batch_keeps_aspect_and_pads_with_zeros():
    crops = [np.full((24, 48, 3), 255, np.uint8), np.full((48, 480, 3), 0, np.uint8)]
    batch = fill_batch(crops, 48, 320)
    assert batch.shape == (2, 3, 48, 320) and batch.dtype == np.float32
    assert np.allclose(batch[0, :, :, :96], 1.0) and np.all(batch[0, :, :, 96:] == 0)
    assert np.allclose(batch[1], -1.0)  # wider than 320: squeezed to the full width
    padded = fill_batch(crops, 48, 320, rows=6)
    assert padded.shape == (6, 3, 48, 320) and np.array_equal(padded[:2], batch) and not padded[2:].any()


class ShapeRecorder:
    def __init__(self, runner):
        self.runner, self.io, self.shapes = runner, runner.io, []

    def infer(self, feeds):
        self.shapes.append(next(iter(feeds.values())).shape)
        return self.runner.infer(feeds)


def test_direction_classifier_sends_one_shape_and_answers_as_unpadded():
    from ppdeploy.deploy.load import load_model
    from ppdeploy.tasks.ocr.cls import ClsOptions, TextDirectionClassifier

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (32, int(w), 3), dtype=np.uint8) for w in rng.integers(40, 400, 14)]
    crops[3] = np.ascontiguousarray(np.rot90(crops[3], 2))
    dep = load_model("ppocr-cls", backend="onnxruntime")
    try:
        recorder = ShapeRecorder(dep.runner)
        flipped, labels = TextDirectionClassifier(recorder, ClsOptions(thresh=0.0))(crops)
        assert recorder.shapes == [(6, 3, 48, 192)] * 3  # 14 crops: 6 + 6 + 2 padded to 6
        one_by_one = [TextDirectionClassifier(dep.runner, ClsOptions(batch_size=1, thresh=0.0))([c])[1][0]
                      for c in crops]
    finally:
        dep.close()
    assert [lab for lab, _ in labels] == [lab for lab, _ in one_by_one]
    np.testing.assert_allclose([s for _, s in labels], [s for _, s in one_by_one], rtol=1e-4)
    assert len(flipped) == 14


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    chars = ["blank", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 0, 3]  # a a _ a b b _ ' '
    probs = np.full((1, len(steps), 4), 0.01, np.float32)
    for t, c in enumerate(steps):
        probs[0, t, c] = 0.9 if c != 2 else 0.6
    (text, score), = ctc_greedy_decode(probs, chars)
    assert text == "aab "
    assert score == pytest.approx(np.mean([0.9, 0.9, 0.6, 0.9]), rel=1e-5)
    empty = np.zeros((1, 5, 4), np.float32)
    empty[..., 0] = 1
    assert ctc_greedy_decode(empty, chars) == [("", 0.0)]


def test_options_are_paddleocr_defaults_and_validated():
    o = OCROptions.from_kwargs()
    assert (o.det.limit_side_len, o.det.limit_type, o.det.thresh, o.det.box_thresh, o.det.unclip_ratio) == \
        (960, "max", 0.3, 0.6, 1.5)
    assert (o.det.use_dilation, o.det.score_mode, o.det.max_candidates, o.det.min_size) == (False, "fast", 1000, 3)
    # plus the adaptive resolution, chosen on the tuning split (tests/tasks/test_ocr_defaults.py)
    assert (o.det.adaptive, o.det.adaptive_min_px, o.det.adaptive_max_px) == (True, 24.0, 40.0)
    assert (o.cls.thresh, o.cls.image_height, o.cls.image_width, o.cls.batch_size) == (0.9, 48, 192, 6)
    assert (o.rec.image_height, o.rec.image_width, o.rec.batch_size, o.drop_score) == (48, 320, 6, 0.5)
    o = OCROptions.from_kwargs(det_box_thresh=0.5, rec_batch_size=12, drop_score=0.3, cls_thresh=None)
    assert (o.det.box_thresh, o.rec.batch_size, o.drop_score, o.cls.thresh) == (0.5, 12, 0.3, 0.9)
    assert "det_unclip_ratio" in option_names()
    with pytest.raises(ConfigError, match="unknown OCR option 'det_treshold'"):
        OCROptions.from_kwargs(det_treshold=0.2)
    with pytest.raises(ConfigError, match="limit_type"):
        OCROptions.from_kwargs(det_limit_type="median")
    with pytest.raises(ConfigError, match="adaptive_min_px"):
        OCROptions.from_kwargs(det_adaptive_min_px=50.0)
    with pytest.raises(ConfigError, match="batch_size"):
        OCROptions.from_kwargs(rec_batch_size=0)


def test_per_stage_choices():
    from ppdeploy.tasks.ocr.builder import _per_stage

    assert _per_stage("openvino", "backend") == {"det": "openvino", "cls": "openvino", "rec": "openvino"}
    assert _per_stage({"rec": "onnxruntime", "default": "openvino"}, "backend") == \
        {"det": "openvino", "cls": "openvino", "rec": "onnxruntime"}
    assert _per_stage({"rec": "bf16"}, "precision") == {"det": None, "cls": None, "rec": "bf16"}
    with pytest.raises(ConfigError, match="unknown stage"):
        _per_stage({"recognizer": "openvino"}, "backend")
