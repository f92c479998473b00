"""`ppdeploy detect IMAGE... --model DIR`: objects (class, score, box in image pixels). Preprocessing comes from
DIR/infer_cfg.yml (PaddleDetection's export) when present, class names from it, DIR/labels.txt, --labels or the
ONNX metadata; `--model layout-cdla` is the bundled document-layout detector."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect objects with a PaddleDetection-style detector", description=__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", default="layout-cdla",
                   help="model directory (Paddle inference model), .onnx, or zoo name (default layout-cdla)")
    p.add_argument("--labels", default=None, help="class names, one per line")
    p.add_argument("--infer-cfg", default=None, help="PaddleDetection infer_cfg.yml (default: MODEL/infer_cfg.yml)")
    p.add_argument("--score-threshold", type=float, default=None, help="drop detections below it")
    p.add_argument("--iou-threshold", type=float, default=None, help="host NMS IoU threshold")
    p.add_argument("--draw", default=None, help="write the first image with its boxes drawn to this file")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ppdeploy.tasks.detection.draw import draw_detections
    from ppdeploy.tasks.detection.task import Detector

    det = Detector(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                   labels=args.labels, infer_cfg=args.infer_cfg, score_threshold=args.score_threshold,
                   iou_threshold=args.iou_threshold)
    try:
        results = list(zip(args.images, det.predict_batch(args.images)))
    finally:
        det.close()
    if args.draw:
        draw_detections(args.images[0], results[0][1], args.draw)
    if args.json:
        doc = [{"image": img, **res.to_dict()} for img, res in results]
        print(json.dumps(doc[0] if len(doc) == 1 else doc, ensure_ascii=False, indent=1))
        return 0
    for img, res in results:
        print(f"{img}: {len(res)} objects ({res.timings.get('total', 0):.1f} ms)")
        for d in res.detections:
            x1, y1, x2, y2 = d.box
            print(f"  {d.score:.3f}  {d.label:<16} [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    return 0


def add_eval_detect(eval_subparsers) -> None:
    """`ppdeploy eval detect --data DIR --model M`: mAP of a detector on a COCO folder (called by cli/eval.py)."""
    e = eval_subparsers.add_parser("detect", help="detection mAP (pycocotools) on a COCO-labelled folder")
    e.add_argument("--data", required=True, help="folder with images and a COCO annotations.json")
    e.add_argument("--model", default="layout-cdla", help="model directory, .onnx or zoo name")
    e.add_argument("--score-threshold", type=float, default=0.05, help="keep detections above it (default 0.05)")
    e.add_argument("--backend", default="auto")
    e.add_argument("--precision", default="fp32")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true")
    e.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import time

    from ppdeploy.tasks.detection.dataset import coco_map, read_coco
    from ppdeploy.tasks.detection.task import Detector

    data = read_coco(args.data)
    det = Detector(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                   score_threshold=args.score_threshold)
    try:
        start = time.perf_counter()
        scores = coco_map(data, det.predict_batch, det.labels)
        seconds = time.perf_counter() - start
        backend = getattr(det.runner, "backend", "?")
    finally:
        det.close()
    doc = {"data": args.data, "model": str(args.model), "backend": backend, "images": len(data.images), **scores,
           "images_per_s": round(len(data.images) / seconds, 2)}
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"images {doc['images']}  backend {backend}  detections {scores['detections']}")
    print(f"mAP@0.5       {scores['map50'] * 100:.2f}")
    print(f"mAP@0.5:0.95  {scores['map'] * 100:.2f}")
    print(f"speed         {doc['images_per_s']:.2f} images/s")
    return 0
