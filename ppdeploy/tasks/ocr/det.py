"""Text detection with a DB (Differentiable Binarization) model, pre/post-processing as PaddleOCR does it.

Mirrors PaddleOCR 2.x `tools/infer/predict_det.py` + `ppocr/postprocess/db_postprocess.py` for PP-OCRv4:
`DetResizeForTest` (type 0), `NormalizeImage` (ImageNet mean/std on the BGR image, scale 1/255),
`DBPostProcess`, then `filter_tag_det_res` and `sorted_boxes` from `predict_system.py`.

One addition, on by default: the adaptive resolution (`DetOptions.adaptive`, `next_ratio`). A single fixed resize
rule fails both ways: a 4000 px scan with 10 px text shrinks to 960 px and its lines vanish, a 400 px sign with
80 px text is fed too big and its lines split. The first pass's boxes measure the page's text height; when it is
outside the detector's comfortable range, the page is detected again at the scale that brings it inside. With
`adaptive=False` the detector is PaddleOCR's, pass for pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="opencv-python-headless")
pyclipper = lazy_import("pyclipper", install="pyclipper")
shapely_geometry = lazy_import("shapely.geometry", install="shapely")


@dataclass(frozen=True)
class DetOptions:
    """Detection settings: PaddleOCR's PP-OCRv4 defaults (`tools/infer/utility.py`) plus the adaptive resolution.

    The defaults were chosen on the `tune` split of ppdeploy.tasks.ocr.synth.suite and confirmed on its `heldout`
    split (`python -m ppdeploy.bench.ocr_defaults`): PaddleOCR's thresholds, unclip ratio, mean/std and no dilation
    read better there than RapidOCR's (box_thresh 0.5, unclip 1.6, dilation, mean/std 0.5), and the adaptive pass
    is what keeps tiny, huge and photographed text readable."""

    limit_side_len: int = 960
    """Resize so this side limit holds (see `limit_type`); both sides then round to multiples of 32."""
    limit_type: str = "max"
    """"max": the long side is at most limit_side_len (smaller images keep their size); "min": the short side is
    at least limit_side_len."""
    thresh: float = 0.3
    """Probability above which a pixel of the DB map counts as text."""
    box_thresh: float = 0.6
    """Boxes whose mean probability is below this are dropped."""
    unclip_ratio: float = 1.5
    """How far each shrunk text region is expanded back (distance = area * ratio / perimeter)."""
    use_dilation: bool = False
    """Dilate the binary map with a 2x2 kernel before finding contours."""
    score_mode: str = "fast"
    """"fast": box score from the min-area rectangle; "slow": from the exact contour polygon."""
    max_candidates: int = 1000
    """At most this many contours are considered."""
    min_size: int = 3
    """Boxes whose short side (in the model's resolution) is below this are dropped."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    adaptive: bool = True
    """Detect again at another scale when the first pass's text is too small or too big for the detector
    (see `next_ratio`); off: one pass at the limit rule, as PaddleOCR does."""
    adaptive_min_px: float = 24.0
    """Median box height (detector input pixels) under which a page is detected again, larger."""
    adaptive_max_px: float = 40.0
    """Median box height (detector input pixels) over which a page is detected again, smaller."""
    adaptive_max_side: int = 4096
    """The adaptive pass never feeds the detector a long side beyond this (time and memory grow with its square)."""
    adaptive_passes: int = 2
    """At most this many passes after the first."""

    def __post_init__(self) -> None:
        if self.limit_type not in ("max", "min"):
            raise ConfigError(f"det limit_type must be 'max' or 'min', got {self.limit_type!r}")
        if self.score_mode not in ("fast", "slow"):
            raise ConfigError(f"det score_mode must be 'fast' or 'slow', got {self.score_mode!r}")
        if self.limit_side_len < 32:
            raise ConfigError(f"det limit_side_len must be >= 32, got {self.limit_side_len}")
        for name in ("thresh", "box_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"det {name} must be in [0, 1], got {value}")
        if self.unclip_ratio <= 0:
            raise ConfigError(f"det unclip_ratio must be > 0, got {self.unclip_ratio}")
        if not 0 < self.adaptive_min_px < self.adaptive_max_px:
            raise ConfigError(f"det adaptive_min_px must be > 0 and below adaptive_max_px, got "
                              f"{self.adaptive_min_px} / {self.adaptive_max_px}")
        if self.adaptive_max_side < 32 or self.adaptive_passes < 0:
            raise ConfigError("det adaptive_max_side must be >= 32 and adaptive_passes >= 0")


@dataclass
class DetResult:
    boxes: np.ndarray  # (N, 4, 2) float32 quads, clockwise from top-left, in image pixels, reading order
    scores: list[float]
    timings: dict[str, float] = field(default_factory=dict)  # det_pre, det_infer, det_post (ms)


def limit_ratio(shape: tuple[int, int], options: DetOptions) -> float:
    """The scale `limit_side_len` / `limit_type` give an image of this (h, w)."""
    h, w = shape[:2]
    limit = options.limit_side_len
    if options.limit_type == "max":
        return float(limit) / max(h, w) if max(h, w) > limit else 1.0
    return float(limit) / min(h, w) if min(h, w) < limit else 1.0


def resize_for_det(image: np.ndarray, options: DetOptions, ratio: float | None = None) -> tuple[np.ndarray, float, float]:
    """DetResizeForTest type 0 (or the given scale). Returns the resized image and the (h, w) ratios
    resized/original."""
    h, w = image.shape[:2]
    if ratio is None:
        ratio = limit_ratio((h, w), options)
    resize_h = max(int(round(int(h * ratio) / 32) * 32), 32)
    resize_w = max(int(round(int(w * ratio) / 32) * 32), 32)
    if (resize_h, resize_w) != (h, w):
        image = cv2.resize(image, (resize_w, resize_h))
    return image, resize_h / float(h), resize_w / float(w)


def normalize_to_nchw(image: np.ndarray, mean, std, scale: float = 1.0 / 255.0) -> np.ndarray:
    """(x * scale - mean) / std per channel, HWC uint8 -> 1xCxHxW float32, one output allocation."""
    c = image.shape[2]
    out = np.empty((1, c, image.shape[0], image.shape[1]), dtype=np.float32)
    for ch in range(c):
        plane = out[0, ch]
        np.multiply(image[:, :, ch], np.float32(scale / std[ch]), out=plane, casting="unsafe")
        plane -= np.float32(mean[ch] / std[ch])
    return out


def preprocess(image: np.ndarray, options: DetOptions, ratio: float | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    resized, _, _ = resize_for_det(image, options, ratio)
    return normalize_to_nchw(resized, options.mean, options.std), image.shape[:2]


def median_line_height(boxes: np.ndarray) -> float | None:
    """Median short side of the detected quads (image pixels): the page's text height as the detector saw it."""
    if not len(boxes):
        return None
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2)
    sides = np.stack([np.linalg.norm(boxes[:, 0] - boxes[:, 1], axis=1),
                      np.linalg.norm(boxes[:, 0] - boxes[:, 3], axis=1)], axis=1)
    return float(np.median(sides.min(axis=1)))


def next_ratio(shape: tuple[int, int], ratio: float, height: float | None, options: DetOptions) -> float | None:
    """The adaptive rule: the scale for another detection pass, or None when the last one (at `ratio`, where the
    median line height was `height` image pixels) is to be kept.

    Text whose boxes are under adaptive_min_px or over adaptive_max_px in the detector's input is read worse (DB
    merges or loses small lines, and splits big ones); another pass brings the median to the range's geometric
    mean. A pass that found nothing on a shrunk image is repeated at full size. The long side never exceeds
    adaptive_max_side (and the short side never drops under 32 px)."""
    h, w = shape[:2]
    if height is None:
        if ratio >= 0.999:
            return None
        wanted = 1.0
    else:
        seen = height * ratio
        if options.adaptive_min_px <= seen <= options.adaptive_max_px:
            return None
        wanted = ratio * float(np.sqrt(options.adaptive_min_px * options.adaptive_max_px)) / seen
    wanted = min(wanted, options.adaptive_max_side / max(h, w))
    wanted = max(wanted, 32.0 / min(h, w))
    return wanted if abs(np.log(wanted / ratio)) > np.log(1.2) else None


class DBPostProcess:
    """Probability map -> quadrilaterals in original-image pixels (PaddleOCR's DBPostProcess)."""

    def __init__(self, options: DetOptions):
        self.options = options
        self.dilation_kernel = np.array([[1, 1], [1, 1]], dtype=np.uint8) if options.use_dilation else None

    def __call__(self, pred: np.ndarray, src_shape: tuple[int, int]) -> tuple[np.ndarray, list[float]]:
        prob = pred.reshape(pred.shape[-2], pred.shape[-1]) if pred.ndim > 2 else pred
        mask = (prob > self.options.thresh).astype(np.uint8)
        if self.dilation_kernel is not None:
            mask = cv2.dilate(mask, self.dilation_kernel)
        return self.boxes_from_bitmap(prob, mask, src_shape[1], src_shape[0])

    def boxes_from_bitmap(self, pred: np.ndarray, bitmap: np.ndarray, dest_width: int, dest_height: int):
        opts = self.options
        height, width = bitmap.shape
        contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)[-2:]
        boxes: list[np.ndarray] = []
        scores: list[float] = []
        for contour in contours[: opts.max_candidates]:
            points, sside = get_mini_boxes(contour)
            if sside < opts.min_size:
                continue
            if opts.score_mode == "fast":
                score = box_score_fast(pred, points)
            else:
                score = box_score_slow(pred, contour)
            if opts.box_thresh > score:
                continue
            expanded = unclip(points, opts.unclip_ratio)
            if expanded is None:
                continue
            box, sside = get_mini_boxes(expanded.reshape(-1, 1, 2))
            if sside < opts.min_size + 2:
                continue
            box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_width), 0, dest_width)
            box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_height), 0, dest_height)
            boxes.append(box.astype(np.int32))
            scores.append(float(score))
        return (np.array(boxes, dtype=np.int32).reshape(-1, 4, 2)), scores


def get_mini_boxes(contour: np.ndarray) -> tuple[np.ndarray, float]:
    bounding_box = cv2.minAreaRect(contour)
    points = sorted(list(cv2.boxPoints(bounding_box)), key=lambda x: x[0])
    if points[1][1] > points[0][1]:
        index_1, index_4 = 0, 1
    else:
        index_1, index_4 = 1, 0
    if points[3][1] > points[2][1]:
        index_2, index_3 = 2, 3
    else:
        index_2, index_3 = 3, 2
    box = np.array([points[index_1], points[index_2], points[index_3], points[index_4]], dtype=np.float32)
    return box, min(bounding_box[1])


def box_score_fast(bitmap: np.ndarray, box: np.ndarray) -> float:
    h, w = bitmap.shape[:2]
    box = box.copy()
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    box[:, 0] -= xmin
    box[:, 1] -= ymin
    cv2.fillPoly(mask, box.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(bitmap[ymin:ymax + 1, xmin:xmax + 1], mask)[0]


def box_score_slow(bitmap: np.ndarray, contour: np.ndarray) -> float:
    h, w = bitmap.shape[:2]
    contour = contour.reshape(-1, 2).copy()
    xmin = int(np.clip(contour[:, 0].min(), 0, w - 1))
    xmax = int(np.clip(contour[:, 0].max(), 0, w - 1))
    ymin = int(np.clip(contour[:, 1].min(), 0, h - 1))
    ymax = int(np.clip(contour[:, 1].max(), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    contour[:, 0] -= xmin
    contour[:, 1] -= ymin
    cv2.fillPoly(mask, contour.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(bitmap[ymin:ymax + 1, xmin:xmax + 1], mask)[0]


def unclip(box: np.ndarray, unclip_ratio: float) -> np.ndarray | None:
    poly = shapely_geometry.Polygon(box)
    if poly.length == 0:
        return None
    distance = poly.area * unclip_ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    expanded = offset.Execute(distance)
    if len(expanded) != 1:  # PaddleOCR skips boxes that unclip into several (or no) polygons
        return None
    return np.array(expanded[0], dtype=np.float32)


def order_points_clockwise(pts: np.ndarray) -> np.ndarray:
    x_sorted = pts[np.argsort(pts[:, 0], kind="stable"), :]
    left = x_sorted[:2, :]
    right = x_sorted[2:, :]
    tl, bl = left[np.argsort(left[:, 1], kind="stable"), :]
    tr, br = right[np.argsort(right[:, 1], kind="stable"), :]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def filter_boxes(boxes: np.ndarray, scores: list[float], image_shape: tuple[int, int]):
    """Order each quad clockwise, clip to the image, drop boxes 3 px or thinner (PaddleOCR filter_tag_det_res)."""
    h, w = image_shape
    kept_boxes, kept_scores = [], []
    for box, score in zip(boxes, scores):
        box = order_points_clockwise(box.astype(np.float32))
        box[:, 0] = np.clip(box[:, 0], 0, w - 1).astype(np.int32)
        box[:, 1] = np.clip(box[:, 1], 0, h - 1).astype(np.int32)
        rect_width = int(np.linalg.norm(box[0] - box[1]))
        rect_height = int(np.linalg.norm(box[0] - box[3]))
        if rect_width <= 3 or rect_height <= 3:
            continue
        kept_boxes.append(box)
        kept_scores.append(score)
    return kept_boxes, kept_scores


def sort_reading_order(boxes: list[np.ndarray], scores: list[float]) -> tuple[list[np.ndarray], list[float]]:
    """Top-to-bottom, then left-to-right for boxes whose tops are within 10 px (PaddleOCR sorted_boxes)."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[order[j]], boxes[order[j + 1]]
            if abs(b[0][1] - a[0][1]) < 10 and b[0][0] < a[0][0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return [boxes[i] for i in order], [scores[i] for i in order]


class TextDetector:
    """One DB detector over any runner-like object (`.io`, `.infer(dict) -> dict`)."""

    def __init__(self, runner: Any, options: DetOptions | None = None):
        self.runner = runner
        self.options = options or DetOptions()
        self.input_name = runner.io.inputs[0].name
        self.postprocess = DBPostProcess(self.options)

    def __call__(self, image: np.ndarray) -> DetResult:
        timings = {"det_pre": 0.0, "det_infer": 0.0, "det_post": 0.0}
        ratio = limit_ratio(image.shape[:2], self.options)
        boxes, scores = self.detect_at(image, ratio, timings)
        passes = 0
        while self.options.adaptive and passes < self.options.adaptive_passes:
            again = next_ratio(image.shape[:2], ratio, median_line_height(boxes), self.options)
            if again is None:
                break
            ratio, passes = again, passes + 1
            boxes, scores = self.detect_at(image, ratio, timings)
        return DetResult(np.array(boxes, dtype=np.float32).reshape(-1, 4, 2), scores, timings)

    def detect_at(self, image: np.ndarray, ratio: float, timings: dict[str, float]):
        """One pass at this scale: boxes (image pixels, reading order) and scores; adds to `timings` (ms)."""
        t0 = time.perf_counter()
        blob, src_shape = preprocess(image, self.options, ratio)
        t1 = time.perf_counter()
        outputs = self.runner.infer({self.input_name: blob})
        pred = next(iter(outputs.values()))
        t2 = time.perf_counter()
        boxes, scores = self.postprocess(pred[0, 0], src_shape)
        boxes, scores = filter_boxes(boxes, scores, src_shape)
        boxes, scores = sort_reading_order(boxes, scores)
        t3 = time.perf_counter()
        timings["det_pre"] += (t1 - t0) * 1e3
        timings["det_infer"] += (t2 - t1) * 1e3
        timings["det_post"] += (t3 - t2) * 1e3
        return boxes, scores
