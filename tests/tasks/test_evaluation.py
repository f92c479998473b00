"""OCR metrics, label readers and the synthetic set generator."""
from __future__ import annotations

import json

import pytest

from ppdeploy.core.errors import InputError
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.metrics import (
    edit_distance,
    match_boxes,
    polygon_iou,
    score_image,
    text_agreement,
)
from ppdeploy.tasks.ocr.synth import SynthOptions, generate


def box(x, y, w=100, h=20):
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("发票号码", "发票号吗") == 1
    assert edit_distance([5, 7, 9], [5, 9]) == 1  # CTC token ids (the precision gates' agreement)


def test_iou_and_matching():
    assert polygon_iou(box(0, 0), box(0, 0)) == pytest.approx(1.0)
    assert polygon_iou(box(0, 0), box(50, 0)) == pytest.approx(1 / 3)
    pairs = match_boxes([box(0, 0), box(0, 100), box(500, 500)], [box(0, 102), box(5, 0)])
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_score_image_counts_exact_chars_and_detection():
    gt = [("hello world", box(0, 0)), ("12.50元", box(0, 50)), ("missed", box(0, 100))]
    pred = [("helloworld", box(2, 1)), ("12.5元", box(0, 50)), ("ghost", box(300, 300))]
    m = score_image(pred, gt)  # spaces ignored, as PaddleOCR's RecMetric
    assert (m.gt_lines, m.pred_lines, m.matched) == (3, 3, 2)
    assert m.det_precision == pytest.approx(2 / 3) and m.det_recall == pytest.approx(2 / 3)
    assert m.line_exact_match == pytest.approx(1 / 3)
    assert m.char_accuracy == pytest.approx(1 - (0 + 1 / 6 + 1) / 3)
    strict = score_image(pred, gt, ignore_space=False)
    assert strict.exact_lines == 0
    width = [("￥12，5", box(0, 0))]
    assert score_image([("¥12,5", box(0, 0))], width).exact_lines == 0
    assert score_image([("¥12,5", box(0, 0))], width, nfkc=True).exact_lines == 1


def test_text_agreement_counts_missing_and_extra_lines():
    ref = [[("a", box(0, 0)), ("b", box(0, 50))]]
    other = [[("a", box(0, 0)), ("x", box(0, 50)), ("extra", box(400, 400))]]
    agree = text_agreement(other, ref)
    assert agree.reference_lines == 3 and agree.same_text == 1
    assert (0, "b", "x") in agree.differences and (0, "<none>", "extra") in agree.differences


def test_synth_is_deterministic_and_readable(tmp_path):
    a = generate(tmp_path / "a", SynthOptions(pages=2, seed=3))
    b = generate(tmp_path / "b", SynthOptions(pages=2, seed=3))
    assert [l.text for i in a for l in i.lines] == [l.text for i in b for l in i.lines]
    assert (tmp_path / "a" / a[0].path.name).read_bytes() == (tmp_path / "b" / b[0].path.name).read_bytes()
    back = read_labelled_folder(tmp_path / "a")
    assert [l.text for l in back[0].lines] == [l.text for l in a[0].lines]
    texts = " ".join(l.text for i in a for l in i.lines)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in texts) and any(ch.isascii() and ch.isalpha() for ch in texts)


def test_paddleocr_label_txt_format(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"x")
    entries = [{"transcription": "你好", "points": box(0, 0)}, {"transcription": "###", "points": box(0, 40)}]
    (tmp_path / "Label.txt").write_text(f"imgs/a.png\t{json.dumps(entries, ensure_ascii=False)}\n", encoding="utf-8")
    (item,) = read_labelled_folder(tmp_path)
    assert item.path == tmp_path / "imgs" / "a.png" and [l.text for l in item.lines] == ["你好"]


def test_bad_label_folders(tmp_path):
    with pytest.raises(InputError, match="neither"):
        read_labelled_folder(tmp_path)
    (tmp_path / "labels.json").write_text('{"images": [{"file": "gone.png", "lines": []}]}')
    with pytest.raises(InputError, match="missing"):
        read_labelled_folder(tmp_path)
    (tmp_path / "labels.json").write_text('{"pictures": []}')
    with pytest.raises(InputError, match="not a valid labels file"):
        read_labelled_folder(tmp_path)
