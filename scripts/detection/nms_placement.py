"""Measure where a detector's NMS should run on each CPU backend: in the engine (ONNX NonMaxSuppression) or on the
host (the graph cut before NMS, OpenCV's NMSBoxesBatched), end to end per image (preprocessing, engine and
post-processing), on the same images, interleaved so background load falls on both alike. The result sets the
backends' `nms_in_graph` class data (ppdeploy/backends); the detections of both placements are also compared.

  nice -n 10 python scripts/detection/nms_placement.py [--model ppdeploy/tasks/detection/weights/pcb_nms]
      [--backends onnxruntime,openvino] [--images 40] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[2] / "ppdeploy" / "tasks" / "detection" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(WEIGHTS / "pcb_nms"))
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--images", type=int, default=40, help="synthetic PCB boards (test split)")
    ap.add_argument("--data", default=None, help="a folder of images instead of synthetic boards")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--score-threshold", type=float, default=0.3)
    args = ap.parse_args()

    from ppdeploy.tasks.detection import Detector
    from ppdeploy.tasks.detection.synth import pcb
    from ppdeploy.tasks.image_io import load_image

    if args.data:
        files = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    else:
        folder = pcb.generate(Path(tempfile.mkdtemp()) / "boards", args.images, seed=pcb.SPLIT_SEEDS["test"])
        files = sorted((folder / "images").glob("*.png"))
    images = [load_image(f) for f in files]
    print(f"{len(images)} images, model {args.model}")
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        dets = {p: Detector(args.model, backend=backend, threads=args.threads, nms=p,
                            score_threshold=args.score_threshold) for p in ("graph", "host")}
        times: dict[str, list[float]] = {p: [] for p in dets}
        for det in dets.values():
            det.predict_batch(images[:2])  # warm-up
        for _ in range(args.rounds):
            for placement, det in dets.items():
                start = time.perf_counter()
                for img in images:
                    det.predict(img)
                times[placement].append((time.perf_counter() - start) * 1e3 / len(images))
        same = sum(len(a) == len(b) for a, b in zip(dets["graph"].predict_batch(images),
                                                     dets["host"].predict_batch(images)))
        for placement in dets:
            print(f"{backend:<12} NMS {placement:<5} median {statistics.median(times[placement]):7.2f} ms/image "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[placement])})")
        print(f"{backend:<12} same detection count on {same}/{len(images)} images")
        for det in dets.values():
            det.close()


if __name__ == "__main__":
    main()
