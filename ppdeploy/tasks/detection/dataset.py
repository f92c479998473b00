"""Labelled detection folders: images plus one COCO json (`annotations.json`, or the only json holding both
"images" and "annotations"); image `file_name`s are relative to the folder. Scores use pycocotools' COCOeval
(mAP@0.5 and mAP@0.5:0.95), never a hand-written AP."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.core.errors import InputError
from ppdeploy.core.lazy import lazy_import

cocoeval = lazy_import("pycocotools.cocoeval", install="pip install pycocotools")
coco_api = lazy_import("pycocotools.coco", install="pip install pycocotools")

DATASET_FILE = "annotations.json"
SCALES = ("small", "medium", "large")  # COCO's area buckets: < 32^2, < 96^2, larger


@dataclass
class CocoFolder:
    root: Path
    doc: dict[str, Any]

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.doc["images"]

    @property
    def categories(self) -> list[dict[str, Any]]:
        return sorted(self.doc.get("categories", []), key=lambda c: c["id"])

    def path(self, image: dict[str, Any]) -> Path:
        return self.root / image["file_name"]

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        return [a for a in self.doc["annotations"] if a["image_id"] == image_id]


def find_annotations(folder: str | Path) -> Path | None:
    folder = Path(folder)
    if (folder / DATASET_FILE).is_file():
        return folder / DATASET_FILE
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
            found.append(path)
    return found[0] if len(found) == 1 else None


def read_coco(folder: str | Path) -> CocoFolder:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"detection data folder not found: {folder}")
    path = find_annotations(folder)
    if path is None:
        raise InputError(f"{folder} has no COCO annotations", hint=f"put a COCO json named {DATASET_FILE} there")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not doc.get("images"):
        raise InputError(f"{path} lists no images")
    return CocoFolder(folder, doc)


def scale_of(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def class_map(categories: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[int, int]:
    """Detector class index -> COCO category id: by name when every category name is a label, else by order."""
    index = {name: i for i, name in enumerate(labels)}
    if categories and all(c["name"] in index for c in categories):
        return {index[c["name"]]: c["id"] for c in categories}
    return {i: c["id"] for i, c in enumerate(categories)}


def coco_map(data: CocoFolder, predict: Callable[[list[Path]], list[Any]], labels: Sequence[str],
             batch: int = 8) -> dict[str, float]:
    """mAP@0.5:0.95 ("map"), mAP@0.5 ("map50") and mAP@0.75 of `predict` (paths -> DetectionResults) on `data`."""
    mapping = class_map(data.categories, labels)
    dets = []
    images = data.images
    for start in range(0, len(images), batch):
        chunk = images[start: start + batch]
        for image, result in zip(chunk, predict([data.path(i) for i in chunk])):
            for d in result.detections:
                if d.class_id not in mapping:
                    continue
                x1, y1, x2, y2 = d.box
                dets.append({"image_id": image["id"], "category_id": mapping[d.class_id],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d.score})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = coco_api.COCO()
        gt.dataset = {"images": data.images, "annotations": _with_area(data.doc["annotations"]),
                      "categories": data.categories}
        gt.createIndex()
        if not dets:
            return {"map": 0.0, "map50": 0.0, "map75": 0.0, "detections": 0}
        dt = gt.loadRes(dets)
        ev = cocoeval.COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"map": float(max(s[0], 0.0)), "map50": float(max(s[1], 0.0)), "map75": float(max(s[2], 0.0)),
            "detections": len(dets)}


def _with_area(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, a in enumerate(annotations):
        a = dict(a)
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        a.setdefault("id", i + 1)
        out.append(a)
    return out


__all__ = [
    "DATASET_FILE",
    "SCALES",
    "CocoFolder",
    "class_map",
    "coco_map",
    "find_annotations",
    "read_coco",
    "scale_of",
]
