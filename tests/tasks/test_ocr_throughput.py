"""Throughput mode (ppdeploy.tasks.ocr.throughput) on the real PP-OCR models (ONNX Runtime FP32): every page reads
exactly as `predict` reads it, in input order, with a bad image reported for its page only."""
from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from ppdeploy.core.errors import ImageError
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.result import TIMING_KEYS
from ppdeploy.tasks.ocr.throughput import ThroughputExecutor

pytestmark = pytest.mark.slow


def lines(result):
    return [(line.text, line.score, line.box) for line in result.lines]


@pytest.fixture(scope="module")
def pages(synth_pages):
    return [item.path for item in read_labelled_folder(synth_pages)[:4]]


def stage_threads():
    return [t for t in threading.enumerate() if t.name in ("ocr-front", "ocr-rec")]


def test_every_page_reads_as_predict_reads_it_in_order_past_a_bad_image(ocr_ort, pages):
    blank = np.full((400, 500, 3), 255, np.uint8)  # no text line at all
    upside_down = cv2.rotate(cv2.imread(str(pages[1])), cv2.ROTATE_180)
    inputs = [pages[0], blank, b"not an image", pages[1], upside_down, pages[2].read_bytes(), pages[3]]
    expected = []
    for image in inputs:
        try:
            expected.append(lines(ocr_ort.predict(image)))
        except ImageError as exc:
            expected.append(str(exc))
    assert expected[1] == [] and isinstance(expected[2], str) and all(expected[i] for i in (0, 3, 4, 5, 6))

    outcomes = list(ocr_ort.iter_predict(inputs, inflight=3))
    assert [o.index for o in outcomes] == list(range(len(inputs)))
    assert [o.source is i for o, i in zip(outcomes, inputs)] == [True] * len(inputs)
    assert isinstance(outcomes[2].error, ImageError) and str(outcomes[2].error) == expected[2]
    assert outcomes[2].result is None
    got = [str(o.error) if o.error is not None else lines(o.result) for o in outcomes]
    assert got == expected  # same texts, scores, boxes and line order, page by page
    for o in outcomes:
        if o.result is not None:
            t = o.result.timings
            assert set(t) == set(TIMING_KEYS) and t["decode"] > 0 and t["det_infer"] > 0
            assert sum(v for k, v in t.items() if k != "total") <= t["total"] * 1.01  # total: the page's latency
    assert (outcomes[0].result.width, outcomes[0].result.height) == cv2.imread(str(pages[0])).shape[1::-1]
    assert not stage_threads()


def test_rec_batches_of_equal_width_are_shared_between_pages_and_read_alike(ocr_ort, pages):
    inputs = [pages[0]] * 4  # the same page four times: its rec batches have the same widths on every copy
    expected = lines(ocr_ort.predict(pages[0]))
    executor = ThroughputExecutor(ocr_ort, inflight=4)
    outcomes = list(executor.run(inputs))
    assert executor.merged_batches > 0, "no rec batch was shared between pages"
    _, crops = ocr_ort.detect_and_crop(cv2.imread(str(pages[0])), dict.fromkeys(TIMING_KEYS, 0.0))
    assert executor.rec_batches < 4 * len(ocr_ort.recognizer.plan(crops))  # fewer calls than page by page
    assert [lines(o.result) for o in outcomes] == [expected] * 4
    assert {o.result.guarded_lines for o in outcomes} == {0}

    unmerged = ThroughputExecutor(ocr_ort, inflight=4, merge_rows=0)
    assert [lines(o.result) for o in unmerged.run(inputs)] == [expected] * 4 and unmerged.merged_batches == 0


def test_predict_many_raises_the_first_error_and_closing_early_stops_the_threads(ocr_ort, pages):
    assert [lines(r) for r in ocr_ort.predict_many(pages[:2])] == [lines(ocr_ort.predict(p)) for p in pages[:2]]
    with pytest.raises(ImageError, match="not a recognised image"):
        ocr_ort.predict_many([pages[0], b"junk", pages[1]])
    stream = ocr_ort.iter_predict(pages * 3, inflight=2)
    assert next(stream).error is None
    stream.close()  # a consumer that stops early: the stage threads end after the calls they are in
    assert not stage_threads()

    def failing():
        yield pages[0]
        raise OSError("the folder went away")

    got = []
    with pytest.raises(OSError, match="the folder went away"):
        for outcome in ocr_ort.iter_predict(failing(), inflight=2):
            got.append(outcome)  # the pages before the failure still come back
    assert [lines(o.result) for o in got] == [lines(ocr_ort.predict(pages[0]))]
    with pytest.raises(Exception, match="inflight must be >= 1"):
        ThroughputExecutor(ocr_ort, inflight=0)


def test_cli_folder_in_throughput_mode_prints_what_one_page_at_a_time_prints(ocr_ort, pages, tmp_path, capsys):
    from ppdeploy.cli import main

    folder = tmp_path / "pages"
    folder.mkdir()
    names = ["a.png", "b.png", "c.jpg", "d.png"]
    (folder / names[0]).write_bytes(pages[0].read_bytes())
    cv2.imwrite(str(folder / names[1]), np.full((300, 300, 3), 255, np.uint8))
    (folder / names[2]).write_text("not an image")
    (folder / names[3]).write_bytes(pages[1].read_bytes())
    runs = []
    for flags in ([], ["--inflight", "1"]):
        code = main(["ocr", str(folder), "--backend", "onnxruntime", "--json", *flags])
        out, err = capsys.readouterr()
        assert code == 2 and "1 of 4 inputs failed" in err
        records = [json.loads(line) for line in out.splitlines()]
        for r in records:
            r.pop("timings_ms", None)
        runs.append(records)
    assert runs[0] == runs[1]
    assert [r["image"] for r in runs[0]] == [str(folder / n) for n in names]
    assert runs[0][1]["lines"] == [] and "not a recognised image" in runs[0][2]["error"]
    assert [(l["text"], l["score"]) for l in runs[0][3]["lines"]] == \
        [(l.text, round(l.score, 5)) for l in ocr_ort.predict(pages[1]).lines]
