"""Detector outputs -> (class, score, box) rows, for the three output layouts PaddleDetection exports.

- "nms": NMS is in the graph (paddle2onnx's `multiclass_nms3` -> ONNX NonMaxSuppression): a rows tensor Kx6
  (class, score, x1, y1, x2, y2) over the whole batch and an integer tensor with the row count per image.
- "raw": PicoDet-style heads without post-processing: per stride a score map BxHWxC (sigmoid already applied)
  and a box distribution BxHWx4(R+1) (DFL: softmax over R+1 bins, expectation = distance in strides from the
  anchor centre to the left, top, right, bottom sides). Scores come first, then boxes (PaddleDetection's order);
  each level's stride is found from its anchor count and the input size.
- "decoded": PP-YOLOE exported with `exclude_nms`: boxes BxNx4 (x1, y1, x2, y2) and scores BxCxN.
"raw" and "decoded" go through host NMS: OpenCV's `cv2.dnn.NMSBoxes` once per class, after a vectorized score
threshold and per-class top-k, as PaddleDetection's MultiClassNMS does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.core.tensors import IOSpec

cv2 = lazy_import("cv2", install="pip install opencv-python-headless")

STRIDE_CANDIDATES = (8, 16, 32, 64, 128, 4)
HEAD_KINDS = ("nms", "raw", "decoded")


@dataclass(frozen=True)
class NMSOptions:
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    nms_top_k: int = 1000  # candidates per class going into NMS
    keep_top_k: int = 100  # detections kept per image


@dataclass(frozen=True)
class HeadLayout:
    """Which outputs hold what; `kind` is one of HEAD_KINDS."""

    kind: str
    names: tuple[str, ...]  # nms: (rows, num); raw: scores of each level then boxes of each level; decoded: (boxes, scores)
    levels: int = 0

    @property
    def has_nms(self) -> bool:
        return self.kind == "nms"


def inspect_outputs(io: IOSpec) -> HeadLayout:
    """The output layout of a detector graph; ConfigError (with the outputs listed) for anything else."""
    outs = list(io.outputs)
    described = ", ".join(t.describe() for t in outs)
    rows = [t for t in outs if len(t.shape) == 2 and t.shape[-1] == 6 and t.dtype.startswith("float")]
    counts = [t for t in outs if len(t.shape) == 1 and t.dtype.startswith("int")]
    if len(rows) == 1 and counts:
        return HeadLayout("nms", (rows[0].name, counts[0].name))
    rank3 = [t for t in outs if len(t.shape) == 3]
    if len(outs) == 2 and len(rank3) == 2:
        boxes = [t for t in rank3 if t.shape[-1] == 4]
        if len(boxes) == 1:
            other = rank3[1] if boxes[0] is rank3[0] else rank3[0]
            if other.shape[2] is None or boxes[0].shape[1] is None or other.shape[2] == boxes[0].shape[1]:
                return HeadLayout("decoded", (boxes[0].name, other.name))
    if len(outs) >= 2 and len(outs) % 2 == 0 and len(rank3) == len(outs) and outs[0].dtype.startswith("float"):
        k = len(outs) // 2
        scores, boxes = outs[:k], outs[k:]
        box_dims = {t.shape[-1] for t in boxes}
        score_dims = {t.shape[-1] for t in scores}
        if (len(box_dims) == 1 and len(score_dims) == 1 and None not in box_dims and None not in score_dims
                and next(iter(box_dims)) % 4 == 0 and next(iter(box_dims)) >= 8
                and all(s.shape[1] is None or b.shape[1] is None or s.shape[1] == b.shape[1]
                        for s, b in zip(scores, boxes))):
            return HeadLayout("raw", tuple(t.name for t in outs), k)
    raise ConfigError(
        f"the model's outputs do not look like a detector's: {described}",
        hint="expected NMS rows Kx6 plus a per-image count (NMS in the graph), PicoDet-style score maps BxHWxC "
             "and box distributions BxHWx4(R+1) per stride, or decoded boxes BxNx4 with scores BxCxN")


def dfl_boxes(dist: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """One level's Bx(HW)x4(R+1) distributions -> Bx(HW)x4 boxes (x1, y1, x2, y2) in input pixels."""
    b, n, c = dist.shape
    bins = c // 4
    logits = dist.reshape(b, n, 4, bins).astype(np.float32, copy=False)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    distance = (e @ np.arange(bins, dtype=np.float32)) / e.sum(axis=-1)  # B x n x 4: l, t, r, b in strides
    fh, fw = -(-height // stride), -(-width // stride)
    ys, xs = np.meshgrid(np.arange(fh, dtype=np.float32), np.arange(fw, dtype=np.float32), indexing="ij")
    cx = ((xs.ravel() + 0.5) * stride)[None, :]
    cy = ((ys.ravel() + 0.5) * stride)[None, :]
    distance *= stride
    return np.stack([cx - distance[..., 0], cy - distance[..., 1], cx + distance[..., 2], cy + distance[..., 3]], -1)


def level_stride(count: int, height: int, width: int, strides: Sequence[int] = STRIDE_CANDIDATES) -> int:
    for s in strides:
        if -(-height // s) * -(-width // s) == count:
            return s
    raise ConfigError(f"a head level has {count} anchors, which no stride in {list(strides)} gives for a "
                      f"{height}x{width} input", hint="set the detector option 'strides' (infer_cfg.yml fpn_stride)")


def decode_raw(outputs: Mapping[str, np.ndarray], layout: HeadLayout, height: int, width: int,
               strides: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """PicoDet levels -> (boxes BxNx4 in input pixels, scores BxNxC) over all levels."""
    k = layout.levels
    all_boxes, all_scores = [], []
    for score_name, box_name in zip(layout.names[:k], layout.names[k:]):
        scores, dist = outputs[score_name], outputs[box_name]
        stride = level_stride(scores.shape[1], height, width, strides or STRIDE_CANDIDATES)
        all_boxes.append(dfl_boxes(dist, stride, height, width))
        all_scores.append(scores)
    return np.concatenate(all_boxes, axis=1), np.concatenate(all_scores, axis=1)


def host_nms(boxes: np.ndarray, scores: np.ndarray, options: NMSOptions) -> np.ndarray:
    """One image: boxes Nx4 (x1, y1, x2, y2), scores NxC -> Kx6 rows (class, score, x1, y1, x2, y2), best first.

    Every (box, class) pair above the threshold is a candidate (a box may be kept for several classes, as in
    PaddleDetection's MultiClassNMS); each class keeps its `nms_top_k` best before NMS."""
    anchor, cls = np.nonzero(scores > options.score_threshold)
    if anchor.size == 0:
        return np.zeros((0, 6), np.float32)
    conf = scores[anchor, cls]
    order = np.lexsort((-conf, cls))  # by class, best first within a class
    anchor, cls, conf = anchor[order], cls[order], conf[order]
    starts = np.r_[0, np.flatnonzero(np.diff(cls)) + 1]
    rank = np.arange(cls.size) - np.repeat(starts, np.diff(np.r_[starts, cls.size]))
    keep = rank < options.nms_top_k
    anchor, cls, conf = anchor[keep], cls[keep], conf[keep]
    b = boxes[anchor].astype(np.float64)
    xywh = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    conf32 = conf.astype(np.float32)
    # One NMSBoxes call per class rather than one NMSBoxesBatched over all: the batched call offsets boxes per class
    # and compares every candidate with every other, which on a detector with many classes and thousands of
    # candidates (PP-YOLOE+'s 80) costs several times the per-class calls, for the same kept boxes.
    bounds = np.r_[np.flatnonzero(np.diff(cls)) + 1, cls.size]
    picked_parts, start = [], 0
    for end in bounds:
        kept = cv2.dnn.NMSBoxes(xywh[start:end], conf32[start:end], float(options.score_threshold),
                                float(options.iou_threshold))
        picked_parts.append(np.asarray(kept, np.int64).reshape(-1) + start)
        start = end
    picked = np.concatenate(picked_parts)
    picked = picked[np.argsort(-conf[picked], kind="stable")][: options.keep_top_k]
    return np.concatenate([cls[picked, None].astype(np.float32), conf[picked, None].astype(np.float32),
                           boxes[anchor[picked]].astype(np.float32)], axis=1)


def split_nms_rows(outputs: Mapping[str, np.ndarray], layout: HeadLayout, batch: int) -> list[np.ndarray]:
    """In-graph NMS outputs -> one Kx6 array per image (padding rows with class < 0 dropped)."""
    rows = np.asarray(outputs[layout.names[0]], np.float32).reshape(-1, 6)
    num = np.asarray(outputs[layout.names[1]]).reshape(-1).astype(np.int64)
    if num.size != batch or num.sum() > len(rows):
        raise ConfigError(f"the NMS outputs do not fit a batch of {batch}: counts {num.tolist()} for {len(rows)} rows")
    per_image = np.split(rows[: num.sum()], np.cumsum(num)[:-1])
    return [r[r[:, 0] >= 0] for r in per_image]


__all__ = ["HEAD_KINDS", "HeadLayout", "NMSOptions", "decode_raw", "dfl_boxes", "host_nms", "inspect_outputs",
           "level_stride", "split_nms_rows"]
