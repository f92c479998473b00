"""Labelled OCR folders: how `ppdeploy eval ocr --data DIR` reads ground truth.

Two formats are accepted (the first one found wins):

1. `DIR/labels.json` (ppdeploy's own; what `ppdeploy.tasks.ocr.synth` writes)::

       {"version": 1,
        "images": [{"file": "page_000.png",
                    "lines": [{"text": "发票号码 12345", "box": [[x1, y1], [x2, y2], [x3, y3], [x4, y4]]}, ...]},
                   ...]}

   `file` is relative to DIR; `box` is the line's quadrilateral in image pixels, clockwise from top-left.

2. `DIR/Label.txt` (PaddleOCR / PPOCRLabel detection format), one image per line::

       page_000.png<TAB>[{"transcription": "...", "points": [[x, y], ...]}, ...]

   Lines whose transcription is "###" are treated as "don't care" and skipped, as PaddleOCR does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppdeploy.core.errors import InputError

LABELS_JSON = "labels.json"
PADDLE_LABELS = "Label.txt"


@dataclass
class LabelledLine:
    text: str
    box: list[list[float]]  # 4 (or more) [x, y] points

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "box": [[round(float(x), 1), round(float(y), 1)] for x, y in self.box]}


@dataclass
class LabelledImage:
    path: Path
    lines: list[LabelledLine] = field(default_factory=list)


def read_labelled_folder(folder: str | Path) -> list[LabelledImage]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"labelled data folder not found: {folder}")
    if (folder / LABELS_JSON).is_file():
        return _read_json(folder)
    if (folder / PADDLE_LABELS).is_file():
        return _read_paddle(folder)
    raise InputError(
        f"{folder} has neither {LABELS_JSON} nor {PADDLE_LABELS}",
        hint="see `ppdeploy eval ocr --help` for the label formats, or generate a set with `ppdeploy eval synth`",
    )


def _read_json(folder: Path) -> list[LabelledImage]:
    path = folder / LABELS_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = doc["images"]
        out = []
        for item in items:
            lines = [LabelledLine(str(l["text"]), [list(map(float, p)) for p in l["box"]]) for l in item["lines"]]
            out.append(LabelledImage(folder / item["file"], lines))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a valid labels file: {exc!r}") from exc
    _check_files(out)
    return out


def _read_paddle(folder: Path) -> list[LabelledImage]:
    path = folder / PADDLE_LABELS
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            name, payload = raw.split("\t", 1)
            lines = [LabelledLine(str(d["transcription"]), [list(map(float, p)) for p in d["points"]])
                     for d in json.loads(payload) if d.get("transcription") != "###"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{n}: not '<image>\\t<json list>' ({exc!r})") from exc
        # PPOCRLabel writes paths that start with the folder's own name
        image = folder / name
        if not image.exists() and (folder.parent / name).exists():
            image = folder.parent / name
        out.append(LabelledImage(image, lines))
    _check_files(out)
    return out


def _check_files(images: list[LabelledImage]) -> None:
    missing = [str(i.path) for i in images if not i.path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} labelled image(s) missing, e.g. {missing[0]}")


def write_labels_json(folder: Path, images: list[LabelledImage]) -> Path:
    doc = {"version": 1, "images": [
        {"file": img.path.name, "lines": [line.to_dict() for line in img.lines]} for img in images]}
    path = folder / LABELS_JSON
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
