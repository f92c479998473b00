"""Synthetic PCB-defect boards with boxes, written as a COCO folder (images + annotations.json).

A board is a solder-mask background with copper traces (parallel bundles and L-shaped routes), pads at trace
ends and drill holes in the pads. Defects are drawn into the copper mask, each with its box: missing hole (a pad
without its drill), short (a copper bridge between neighbouring traces), open circuit (a gap across a trace), spur
(a thin protrusion from a trace), mouse bite (a notch bitten out of a trace edge), spurious copper (an isolated
blob). The board's scale (trace width 2.5-8 px) and the defect size vary, so defects span several scales. Splits
come from disjoint seeds: `generate(folder, count, seed)` is deterministic in (count, seed).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="pip install opencv-python-headless")

CLASSES = ("missing_hole", "short", "open_circuit", "spur", "mouse_bite", "spurious_copper")
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}  # disjoint: each image's RNG is seeded from (seed, index)


@dataclass
class Board:
    image: np.ndarray  # HxWx3 BGR uint8
    boxes: list[tuple[int, float, float, float, float]]  # class index, x1, y1, x2, y2


def _overlaps(box, used, margin=3.0) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < u[2] + margin and u[0] - margin < x2 and y1 < u[3] + margin and u[1] - margin < y2 for u in used)


def render_board(rng: random.Random, size: int = 320, defects: tuple[int, int] = (1, 4)) -> Board:
    w_trace = rng.uniform(2.5, 8.0)
    tw = max(2, int(round(w_trace)))
    copper = np.zeros((size, size), np.uint8)
    holes = np.zeros((size, size), np.uint8)
    traces: list[tuple[tuple[int, int], tuple[int, int], int]] = []  # straight segments (p, q, width)
    parallel: list[tuple[tuple, tuple]] = []  # pairs of neighbouring parallel segments
    pads: list[tuple[int, int, int]] = []
    # bundles of parallel traces
    for _ in range(rng.randint(2, 4)):
        horizontal = rng.random() < 0.5
        n = rng.randint(2, 5)
        gap = int(tw * rng.uniform(1.8, 3.2)) + tw
        length = rng.randint(size // 3, size - 20)
        a0 = rng.randint(10, max(11, size - 10 - length))
        b0 = rng.randint(14, max(15, size - 14 - n * gap))
        prev = None
        for i in range(n):
            b = b0 + i * gap
            p, q = ((a0, b), (a0 + length, b)) if horizontal else ((b, a0), (b, a0 + length))
            cv2.line(copper, p, q, 255, tw)
            seg = (p, q, tw)
            traces.append(seg)
            if prev is not None:
                parallel.append((prev, seg))
            prev = seg
            for end in (p, q):
                if rng.random() < 0.7:
                    pads.append((end[0], end[1], int(tw * rng.uniform(1.3, 2.0)) + 1))
    # L-shaped routes with pads
    for _ in range(rng.randint(2, 5)):
        p = (rng.randint(12, size - 12), rng.randint(12, size - 12))
        q = (rng.randint(12, size - 12), rng.randint(12, size - 12))
        corner = (q[0], p[1]) if rng.random() < 0.5 else (p[0], q[1])
        for a, b in ((p, corner), (corner, q)):
            cv2.line(copper, a, b, 255, tw)
            traces.append((a, b, tw))
        for end in (p, q):
            pads.append((end[0], end[1], int(tw * rng.uniform(1.3, 2.0)) + 1))
    # isolated pads (component footprints)
    for _ in range(rng.randint(3, 10)):
        pads.append((rng.randint(10, size - 10), rng.randint(10, size - 10), int(tw * rng.uniform(1.3, 2.2)) + 1))
    for x, y, r in pads:
        cv2.circle(copper, (x, y), r, 255, -1)

    boxes: list[tuple[int, float, float, float, float]] = []
    used: list[tuple[float, float, float, float]] = []
    no_hole = set()
    wanted = rng.randint(*defects)
    tries = 0
    while len(boxes) < wanted and tries < 60:
        tries += 1
        kind = rng.randrange(len(CLASSES))
        box = _draw_defect(kind, rng, copper, traces, parallel, pads, no_hole, size, used)
        if box is not None:
            boxes.append((kind, *box))
            used.append(box)
    for i, (x, y, r) in enumerate(pads):
        if i not in no_hole and r >= 3:
            cv2.circle(holes, (x, y), max(1, int(r * 0.45)), 255, -1)
    return Board(_paint(rng, copper, holes, size), boxes)


def _segment_point(rng, seg, margin):
    (x1, y1), (x2, y2), _ = seg
    length = math.hypot(x2 - x1, y2 - y1)
    if length < 2 * margin + 4:
        return None
    t = rng.uniform(margin / length, 1 - margin / length)
    return x1 + t * (x2 - x1), y1 + t * (y2 - y1), (x2 - x1) / length, (y2 - y1) / length


def _draw_defect(kind, rng, copper, traces, parallel, pads, no_hole, size, used):
    name = CLASSES[kind]
    if name == "missing_hole":
        candidates = [i for i, (_, _, r) in enumerate(pads) if r >= 3 and i not in no_hole]
        if not candidates:
            return None
        i = rng.choice(candidates)
        x, y, r = pads[i]
        box = (x - r - 1.0, y - r - 1.0, x + r + 1.0, y + r + 1.0)
        if _overlaps(box, used):
            return None
        no_hole.add(i)
        return _clip(box, size)
    if name == "short":
        if not parallel:
            return None
        a, b = rng.choice(parallel)
        pt = _segment_point(rng, a, 12)
        if pt is None:
            return None
        x, y, dx, dy = pt
        (bx1, by1), _, tw = b
        # the neighbour is offset along the normal: project
        nx, ny = -dy, dx
        offset = (bx1 - x) * nx + (by1 - y) * ny
        x2, y2 = x + offset * nx, y + offset * ny
        thick = max(2, int(tw * rng.uniform(0.5, 1.0)))
        jitter = rng.uniform(-tw, tw)
        p = (int(round(x)), int(round(y)))
        q = (int(round(x2 + jitter * dx)), int(round(y2 + jitter * dy)))
        half = tw / 2 + 1
        box = (min(p[0], q[0]) - half, min(p[1], q[1]) - half, max(p[0], q[0]) + half, max(p[1], q[1]) + half)
        if _overlaps(box, used):
            return None
        cv2.line(copper, p, q, 255, thick)
        return _clip(box, size)
    if name in ("open_circuit", "spur", "mouse_bite"):
        seg = rng.choice(traces)
        tw = seg[2]
        pt = _segment_point(rng, seg, 3 * tw + 4)
        if pt is None:
            return None
        x, y, dx, dy = pt
        nx, ny = -dy, dx
        if name == "open_circuit":
            gap = tw * rng.uniform(0.8, 2.0) + 1
            half_w = tw / 2 + 1.5
            corners = np.array([[x + sx * dx * gap / 2 + sy * nx * half_w, y + sx * dy * gap / 2 + sy * ny * half_w]
                                for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
            box = (corners[:, 0].min() - 1, corners[:, 1].min() - 1, corners[:, 0].max() + 1, corners[:, 1].max() + 1)
            if _overlaps(box, used):
                return None
            cv2.fillPoly(copper, [np.round(corners).astype(np.int32)], 0)
            return _clip(box, size)
        side = rng.choice((-1, 1))
        if name == "spur":
            length = tw * rng.uniform(1.0, 2.5) + 2
            base = tw / 2
            thick = max(1, int(tw * rng.uniform(0.35, 0.6)))
            ang = rng.uniform(-0.6, 0.6)
            ux, uy = side * nx * math.cos(ang) + dx * math.sin(ang), side * ny * math.cos(ang) + dy * math.sin(ang)
            p = (x + side * nx * (base - 1), y + side * ny * (base - 1))
            q = (p[0] + ux * length, p[1] + uy * length)
            pad = thick / 2 + 1.5
            box = (min(p[0], q[0]) - pad, min(p[1], q[1]) - pad, max(p[0], q[0]) + pad, max(p[1], q[1]) + pad)
            if _overlaps(box, used):
                return None
            cv2.line(copper, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])), int(round(q[1]))), 255, thick)
            return _clip(box, size)
        # mouse bite: a notch on one edge
        r = tw * rng.uniform(0.35, 0.7) + 0.5
        cx, cy = x + side * nx * tw / 2, y + side * ny * tw / 2
        box = (cx - r - 1.5, cy - r - 1.5, cx + r + 1.5, cy + r + 1.5)
        if _overlaps(box, used):
            return None
        cv2.circle(copper, (int(round(cx)), int(round(cy))), max(1, int(round(r))), 0, -1)
        return _clip(box, size)
    # spurious copper: a blob where there is no copper
    for _ in range(20):
        r = rng.uniform(2.0, 9.0) * (1 + 0.15 * len(traces) ** 0)
        cx, cy = rng.uniform(r + 4, size - r - 4), rng.uniform(r + 4, size - r - 4)
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        x1, y1, x2, y2 = (int(max(0, v)) for v in box)
        if copper[y1:y2, x1:x2].any() or _overlaps(box, used):
            continue
        pts = []
        for k in range(rng.randint(5, 8)):
            a = 2 * math.pi * k / 7 + rng.uniform(-0.3, 0.3)
            rr = r * rng.uniform(0.5, 1.0)
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        pts = np.array(pts)
        cv2.fillPoly(copper, [np.round(pts).astype(np.int32)], 255)
        return _clip((pts[:, 0].min() - 1, pts[:, 1].min() - 1, pts[:, 0].max() + 1, pts[:, 1].max() + 1), size)
    return None


def _clip(box, size):
    x1, y1, x2, y2 = box
    return (max(0.0, float(x1)), max(0.0, float(y1)), min(float(size), float(x2)), min(float(size), float(y2)))


def _paint(rng, copper, holes, size):
    """Masks -> a board photo: mask colour with noise and shading, copper, dark holes, a little blur."""
    base = np.array([rng.uniform(20, 60), rng.uniform(90, 150), rng.uniform(20, 60)], np.float32)  # BGR green
    cu = np.array([rng.uniform(60, 120), rng.uniform(160, 220), rng.uniform(170, 235)], np.float32)  # copper/tin
    np_rng = np.random.default_rng(rng.getrandbits(32))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 1 + rng.uniform(-0.2, 0.2) * (xx - 0.5) + rng.uniform(-0.2, 0.2) * (yy - 0.5)
    m = cv2.GaussianBlur(copper.astype(np.float32) / 255, (3, 3), 0.7)[..., None]
    img = base * (1 - m) + cu * m
    img *= shade[..., None]
    h = cv2.GaussianBlur(holes.astype(np.float32) / 255, (3, 3), 0.7)[..., None]
    img = img * (1 - h) + np.float32(rng.uniform(5, 30)) * h
    img += np_rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(folder: str | Path, count: int, seed: int, size: int = 320) -> Path:
    """`count` boards into `folder` (PNG + annotations.json in COCO format); returns the folder."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        board = render_board(random.Random(seed * 1_000_003 + i), size)
        name = f"images/{seed}_{i:05d}.png"
        cv2.imwrite(str(folder / name), board.image)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for cls, x1, y1, x2, y2 in board.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    (folder / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


__all__ = ["CLASSES", "SPLIT_SEEDS", "Board", "generate", "render_board"]
