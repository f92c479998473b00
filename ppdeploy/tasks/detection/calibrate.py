"""Detection calibration sets and the mAP task metric for the precision gates.

INT8 ranges taken from images of one class or one object size clip the activations of the others, so with COCO
annotations in the folder the calibration images are chosen to cover every (class, scale) pair the folder has
(greedy set cover, then the rest in a seeded order up to `limit`), and a class with no instance at all is an
InputError: the set cannot represent it.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable

from ppdeploy.core.cache import folder_digest
from ppdeploy.core.errors import InputError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.select import REFERENCE_BACKEND
from ppdeploy.precision.calibration import CalibrationSet, load_image
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.detection.dataset import (
    coco_map,
    find_annotations,
    read_coco,
    scale_of,
)
from ppdeploy.tasks.detection.preprocess import Preprocess, preprocess_batch

onnx = lazy_import("onnx", install="pip install onnx")
log = logging.getLogger("ppdeploy.tasks.detection")


def model_inputs(model: Any) -> list[tuple[str, tuple[int | None, ...]]]:
    """(name, shape) of the model's inputs: read from an .onnx file, else from an ONNX Runtime load."""
    path = Path(model) if isinstance(model, (str, Path)) else None
    if path is not None and path.suffix == ".onnx" and path.is_file():
        graph = onnx.load(str(path), load_external_data=False).graph
        init = {i.name for i in graph.initializer}
        return [(i.name, tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim))
                for i in graph.input if i.name not in init]
    runner = load_model(model, backend=REFERENCE_BACKEND, precision="fp32").runner
    try:
        return [(t.name, t.shape) for t in runner.io.inputs]
    finally:
        runner.close()


def covering_selection(folder: str | Path, limit: int | None, seed: int = 0) -> list[Path]:
    """Images of a COCO folder covering every (class, scale) pair present; InputError for a class without instances."""
    data = read_coco(folder)
    pairs_of: dict[int, set[tuple[int, str]]] = {img["id"]: set() for img in data.images}
    for a in data.doc["annotations"]:
        pairs_of.setdefault(a["image_id"], set()).add((a["category_id"], scale_of(a["bbox"][2] * a["bbox"][3])))
    present = {c for pairs in pairs_of.values() for c, _ in pairs}
    missing = [c["name"] for c in data.categories if c["id"] not in present]
    if missing:
        raise InputError(f"the calibration folder {folder} has no instance of class(es) {missing}",
                         hint="INT8 ranges must see every class: add images that show them")
    order = list(data.images)
    random.Random(seed).shuffle(order)
    uncovered = set().union(*pairs_of.values())
    chosen: list[dict] = []
    while uncovered:
        best = max(order, key=lambda img: len(pairs_of[img["id"]] & uncovered))
        gain = pairs_of[best["id"]] & uncovered
        if not gain:
            break
        chosen.append(best)
        uncovered -= gain
    if limit is not None and len(chosen) > limit:
        raise InputError(f"covering every class and object scale of {folder} takes {len(chosen)} images, above "
                         f"--calib-limit {limit}", hint=f"raise the limit to at least {len(chosen)}")
    rest = [img for img in order if img not in chosen]
    chosen += rest[: None if limit is None else limit - len(chosen)]
    return [data.path(img) for img in chosen]


def detection_calibration(folder: str | Path, preprocess: Preprocess, model: Any, *, limit: int | None = None,
                          seed: int = 0) -> CalibrationSet:
    """One feed dict per image (the model's image input, and scale_factor / im_shape when it takes them)."""
    inputs = model_inputs(model)
    image = [(n, s) for n, s in inputs if len(s) == 4]
    if len(image) != 1:
        raise InputError(f"a detector takes one NCHW image input; this model takes {[n for n, _ in inputs]}")
    name, shape = image[0]
    fixed = (shape[2], shape[3])
    names = [n for n, _ in inputs]

    def feeds(bgr):
        return preprocess_batch([bgr], preprocess, fixed).feeds(names, name)

    if find_annotations(folder) is None:
        log.warning("calibration folder %s has no COCO annotations: class and scale coverage is not checked", folder)
        return CalibrationSet.from_images(folder, feeds, limit=limit, seed=seed)
    files = covering_selection(folder, limit, seed)
    return CalibrationSet([dict(feeds(load_image(p))) for p in files], f"{folder} ({len(files)} images, every class "
                                                                        "and scale)")


def detection_map_metric(data: str | Path, build: Callable[[Any], Any]) -> TaskMetric:
    """TaskMetric: mAP@0.5 of `build(candidate_runner)` (a Detector) on the COCO folder `data`."""
    folder = read_coco(data)

    def metric(candidate: Any) -> float:
        detector = build(candidate)
        return coco_map(folder, detector.predict_batch, detector.labels)["map50"]

    metric.__name__ = "detection_map50"
    metric.data_hash = folder_digest(data)  # the precision cache key must change when the gate's images do
    return metric


__all__ = ["covering_selection", "detection_calibration", "detection_map_metric", "model_inputs"]
