"""OCR metrics over labelled pages, and agreement between two OCR systems.

Matching: a predicted line and a ground-truth line match when their quadrilaterals overlap with IoU >= 0.5;
pairs are taken greedily by IoU, each line used once.

- det precision = matched / predicted lines, det recall = matched / ground-truth lines.
- line exact match = ground-truth lines whose matched prediction has exactly their text / ground-truth lines.
- char accuracy = 1 - mean over ground-truth lines of edit_distance(pred, gt) / max(len(pred), len(gt))
  (PaddleOCR's "norm_edit_dis"); an unmatched ground-truth line counts as fully wrong.
With `ignore_space=True` (PaddleOCR's RecMetric default) spaces are removed before texts are compared.
With `nfkc=True` both texts are NFKC-normalised first, so full-width and half-width forms count as equal
(￥/¥, ，/, , ０/0): off by default, as in PaddleOCR; useful when labels mix the two forms.
"""
from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from ppdeploy.core.lazy import lazy_import

shapely_geometry = lazy_import("shapely.geometry", install="shapely")

IOU_THRESHOLD = 0.5


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance of two strings (or any sequences of hashables, e.g. CTC token ids)."""
    return Levenshtein.distance(a, b)


def normalized_edit_distance(pred: str, gt: str) -> float:
    return edit_distance(pred, gt) / max(len(pred), len(gt), 1)


def polygon_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    pa, pb = shapely_geometry.Polygon(a), shapely_geometry.Polygon(b)
    if not pa.is_valid:
        pa = pa.buffer(0)
    if not pb.is_valid:
        pb = pb.buffer(0)
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return float(inter / union) if union > 0 else 0.0


def match_boxes(pred_boxes: Sequence, gt_boxes: Sequence, iou_threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by IoU. Returns (pred_index, gt_index) pairs."""
    candidates = []
    for i, p in enumerate(pred_boxes):
        p_arr = np.asarray(p, dtype=np.float64)
        for j, g in enumerate(gt_boxes):
            g_arr = np.asarray(g, dtype=np.float64)
            # cheap axis-aligned rejection before the polygon intersection
            if (p_arr[:, 0].max() < g_arr[:, 0].min() or g_arr[:, 0].max() < p_arr[:, 0].min()
                    or p_arr[:, 1].max() < g_arr[:, 1].min() or g_arr[:, 1].max() < p_arr[:, 1].min()):
                continue
            iou = polygon_iou(p_arr, g_arr)
            if iou >= iou_threshold:
                candidates.append((iou, i, j))
    candidates.sort(key=lambda c: -c[0])
    used_p, used_g, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return pairs


@dataclass
class OCRMetrics:
    images: int = 0
    gt_lines: int = 0
    pred_lines: int = 0
    matched: int = 0
    exact_lines: int = 0
    norm_edit_sum: float = 0.0

    @property
    def det_precision(self) -> float:
        return self.matched / self.pred_lines if self.pred_lines else 0.0

    @property
    def det_recall(self) -> float:
        return self.matched / self.gt_lines if self.gt_lines else 0.0

    @property
    def line_exact_match(self) -> float:
        return self.exact_lines / self.gt_lines if self.gt_lines else 0.0

    @property
    def char_accuracy(self) -> float:
        return 1.0 - self.norm_edit_sum / self.gt_lines if self.gt_lines else 0.0

    def add(self, other: "OCRMetrics") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "det_precision": round(self.det_precision, 5),
            "det_recall": round(self.det_recall, 5),
            "line_exact_match": round(self.line_exact_match, 5),
            "char_accuracy": round(self.char_accuracy, 5),
        }


def _norm(text: str, ignore_space: bool, nfkc: bool = False) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    return text.replace(" ", "") if ignore_space else text


def score_image(pred: Sequence[tuple[str, Sequence]], gt: Sequence[tuple[str, Sequence]], *,
                ignore_space: bool = True, nfkc: bool = False, iou_threshold: float = IOU_THRESHOLD) -> OCRMetrics:
    """pred / gt: (text, box) pairs of one image."""
    pairs = match_boxes([b for _, b in pred], [b for _, b in gt], iou_threshold)
    m = OCRMetrics(images=1, gt_lines=len(gt), pred_lines=len(pred), matched=len(pairs))
    matched_text = {j: pred[i][0] for i, j in pairs}
    for j, (gt_text, _) in enumerate(gt):
        p = _norm(matched_text.get(j, ""), ignore_space, nfkc)
        g = _norm(gt_text, ignore_space, nfkc)
        m.exact_lines += int(p == g)
        m.norm_edit_sum += normalized_edit_distance(p, g)
    return m


def score_dataset(preds: Iterable[Sequence[tuple[str, Sequence]]], gts: Iterable[Sequence[tuple[str, Sequence]]],
                  **kwargs) -> OCRMetrics:
    total = OCRMetrics()
    for pred, gt in zip(preds, gts, strict=True):
        total.add(score_image(pred, gt, **kwargs))
    return total


@dataclass
class Agreement:
    """How often system A's lines equal system B's (B is the reference)."""

    reference_lines: int = 0
    same_text: int = 0
    differences: list[tuple[int, str, str]] = None  # (image index, reference text, other text)

    @property
    def rate(self) -> float:
        return self.same_text / self.reference_lines if self.reference_lines else 1.0


def text_agreement(other: Sequence[Sequence[tuple[str, Sequence]]],
                   reference: Sequence[Sequence[tuple[str, Sequence]]]) -> Agreement:
    """Per image, match lines by box IoU >= 0.5; a reference line agrees when its match has the same text.
    Extra lines in `other` count as disagreements too (each adds one to the denominator)."""
    agree = Agreement(differences=[])
    for n, (o, r) in enumerate(zip(other, reference, strict=True)):
        pairs = match_boxes([b for _, b in o], [b for _, b in r])
        matched_o = {i for i, _ in pairs}
        text_of = {j: o[i][0] for i, j in pairs}
        for j, (ref_text, _) in enumerate(r):
            agree.reference_lines += 1
            got = text_of.get(j)
            if got == ref_text:
                agree.same_text += 1
            else:
                agree.differences.append((n, ref_text, got if got is not None else "<missing>"))
        for i, (text, _) in enumerate(o):
            if i not in matched_o:
                agree.reference_lines += 1
                agree.differences.append((n, "<none>", text))
    return agree
