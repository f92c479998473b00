"""Fixtures for the precision tests: the real PP-OCRv4 rec / mobile cls ONNX graphs (converted once through the
shared cache), rendered text lines through the task's own preprocessing, and a fresh precision cache per
session so the builds under test really run."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.core.cache import EngineCache


@pytest.fixture(scope="session")
def precision_cache(tmp_path_factory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("precision-cache"))


def _onnx_of(model) -> Path:
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    return to_onnx(detect(model, None, export_dir=None), cache=EngineCache()).onnx_path


@pytest.fixture(scope="session")
def rec_onnx() -> Path:
    return _onnx_of("ppocrv4-rec")


@pytest.fixture(scope="session")
def cls_onnx() -> Path:
    return _onnx_of("ppocr-cls")


@pytest.fixture(scope="session")
def classifier_onnx(demo_classifier_dir) -> Path:
    return _onnx_of(str(demo_classifier_dir))


def render_lines(count: int, seed: int) -> list[np.ndarray]:
    """Text-line crops (BGR uint8) of the synthetic OCR set's text generator, in its CJK and Latin fonts."""
    from PIL import Image, ImageDraw, ImageFont

    from ppdeploy.tasks.ocr.fonts import cjk_fonts, latin_fonts
    from ppdeploy.tasks.ocr.synth import make_line

    rng = random.Random(seed)
    cjk, latin = cjk_fonts(), latin_fonts()
    if not cjk:
        pytest.skip("no CJK font installed (fonts-wqy-microhei)")
    crops = []
    for _ in range(count):
        text, _ = make_line(rng)
        text = text[:24]
        needs_cjk = any(ord(ch) > 0x2000 for ch in text)
        font = ImageFont.truetype(str(rng.choice(cjk if needs_cjk else cjk + latin)), rng.randint(22, 32))
        left, top, right, bottom = font.getbbox(text)
        img = Image.new("RGB", (right - left + 12, bottom - top + 10), (rng.randint(225, 255),) * 3)
        ImageDraw.Draw(img).text((6 - left, 5 - top), text, fill=(rng.randint(0, 60),) * 3, font=font)
        crops.append(np.asarray(img)[:, :, ::-1].copy())
    return crops


def _rec_feeds(crop: np.ndarray) -> dict[str, np.ndarray]:
    from ppdeploy.tasks.ocr.textline import fill_batch

    width = max(320, int(math.ceil(48 * crop.shape[1] / crop.shape[0])))
    return {"x": fill_batch([crop], 48, width)}


def _cls_feeds(crop: np.ndarray) -> dict[str, np.ndarray]:
    from ppdeploy.tasks.ocr.textline import fill_batch

    return {"x": fill_batch([crop], 48, 192)}


@pytest.fixture(scope="session")
def line_crops() -> list[np.ndarray]:
    return render_lines(32, seed=7)


@pytest.fixture(scope="session")
def rec_calib(line_crops):
    from ppdeploy.precision.build import CalibrationSet

    return CalibrationSet.from_arrays([_rec_feeds(c) for c in line_crops], "rendered lines (rec)")


@pytest.fixture(scope="session")
def cls_calib(line_crops):
    """Upright and upside-down lines, so the 0/180 classifier sees both classes."""
    import cv2

    from ppdeploy.precision.build import CalibrationSet

    feeds = [_cls_feeds(c if i % 2 == 0 else cv2.rotate(c, cv2.ROTATE_180)) for i, c in enumerate(line_crops)]
    return CalibrationSet.from_arrays(feeds, "rendered lines (cls)")


@pytest.fixture(scope="session")
def classifier_data():
    """(CalibrationSet, labels): the demo classifier's own renderer, seeds disjoint from its training."""
    from ppdeploy.demo import shapes_classifier
    from ppdeploy.precision.build import CalibrationSet

    images, labels = shapes_classifier.dataset(48, seed=777)
    x = shapes_classifier.to_tensor(images)
    return CalibrationSet.from_arrays([{"x": x[i:i + 1]} for i in range(len(x))], "shapes"), [int(v) for v in labels]
