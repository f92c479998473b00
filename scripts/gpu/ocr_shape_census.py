"""Here (CPU, no timing): what the GPU OCR path asks of the GPU per page, counted, not timed.

The 24 synthetic pages through the PP-OCRv4 detector on the CPU give the crops; from them, with the onnxruntime-cuda
runner's own bucketing code (`ppdeploy.backends.onnxruntime_cuda.shapes`: batch dims to powers of two, the OCR
task's `GPU_SHAPE_BUCKETS` axis padding) and the pipeline's batching (`TextRecognizer._batches`, the classifier's
fixed rows), this counts per page: engine calls, the shapes they run, the share of the work that is padding, and
the bytes copied each way. Deterministic (same pages, same detector): these are evidence for where GPU time can go
that no timing on a shared 2-core machine would give.

  python scripts/gpu/ocr_shape_census.py [--out bench/gpu/run13_shape_census.json]
"""
from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default=str(ROOT / ".gpu-carry/onnx"))
    ap.add_argument("--pages", default=str(next((ROOT / ".gpu-carry/pages").glob("synth-*"))))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ppdeploy.backends.onnxruntime_cuda.shapes import batch_bucket
    from ppdeploy.deploy.load import load_model
    from ppdeploy.tasks.image_io import load_image
    from ppdeploy.tasks.ocr.builder import GPU_SHAPE_BUCKETS
    from ppdeploy.tasks.ocr.cls import ClsOptions
    from ppdeploy.tasks.ocr.crop import crop_all
    from ppdeploy.tasks.ocr.dataset import read_labelled_folder
    from ppdeploy.tasks.ocr.det import DetOptions, TextDetector, resize_for_det
    from ppdeploy.tasks.ocr.rec import RecOptions

    det_dep = load_model(str(Path(args.onnx) / "ppocrv4-det.onnx"), backend="onnxruntime")
    detector = TextDetector(det_dep.runner, DetOptions())
    det_pad = GPU_SHAPE_BUCKETS["det"]["pad_multiple"]["x"]
    rec_pad = int(GPU_SHAPE_BUCKETS["rec"]["pad_multiple"]["x"]["3"])
    items = read_labelled_folder(args.pages)
    pages = []
    for item in items:
        bgr = load_image(item.path)
        resized, _, _ = resize_for_det(bgr, detector.options)
        h, w = resized.shape[:2]
        ph, pw = (-(-h // int(det_pad["2"])) * int(det_pad["2"]), -(-w // int(det_pad["3"])) * int(det_pad["3"]))
        p320 = (-(-h // 320) * 320, -(-w // 320) * 320)
        det = detector(bgr)
        crops = crop_all(bgr, det.boxes)
        pages.append({"file": item.path.name, "size": list(bgr.shape[:2]), "det_input": [h, w], "det_padded": [ph, pw],
                      "det_padded_320": list(p320), "crops": [list(c.shape[:2]) for c in crops]})
    det_dep.runner.close()

    def det_stats() -> dict:
        real = sum(p["det_input"][0] * p["det_input"][1] for p in pages)
        pad = sum(p["det_padded"][0] * p["det_padded"][1] for p in pages)
        p320 = sum(p["det_padded_320"][0] * p["det_padded_320"][1] for p in pages)
        n = len(pages)
        return {"pixels_real_per_page": real // n, "pixels_960_bucket_per_page": pad // n,
                "useful_share_960": round(real / pad, 3), "useful_share_320": round(real / p320, 3),
                "buckets_320": sorted(Counter(tuple(p["det_padded_320"]) for p in pages).items()),
                "h2d_MB_per_page_fp32_padded": round(pad / n * 3 * 4 / 1e6, 2),
                "h2d_MB_per_page_uint8_unpadded": round(real / n * 3 / 1e6, 2),
                "d2h_MB_per_page_prob_map_fp32": round(pad / n * 4 / 1e6, 2)}

    def cls_stats(batch_size: int) -> dict:
        opts = ClsOptions(batch_size=batch_size)
        calls = rows = real = 0
        for p in pages:
            n = len(p["crops"])
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                padded = batch_bucket(max(k, batch_size), None)  # the classifier pads to batch_size rows, then pow2
                calls += 1
                rows += padded
                real += k
        return {"batch_size": batch_size, "calls_per_page": round(calls / len(pages), 2),
                "rows_per_call": round(rows / calls, 1), "useful_row_share": round(real / rows, 3),
                "h2d_MB_per_page": round(rows / len(pages) * 3 * opts.image_height * opts.image_width * 4 / 1e6, 2)}

    def rec_stats(batch_size: int, merge_pages: int = 1, pad: int = rec_pad) -> dict:
        opts = RecOptions(batch_size=batch_size)
        calls = 0
        work = useful = 0  # rows x width (48 high)
        shapes: Counter = Counter()
        groups = [pages[i:i + merge_pages] for i in range(0, len(pages), merge_pages)]
        for group in groups:
            crops = [tuple(c) for p in group for c in p["crops"]]
            ratios = [w / float(h) for h, w in crops]
            order = np.argsort(ratios, kind="stable").tolist()
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                max_ratio = max(opts.image_width / opts.image_height, max(ratios[i] for i in idx))
                width = min(opts.max_width, max(opts.image_width, int(opts.image_height * max_ratio)))
                padded_w = -(-width // pad) * pad
                rows = batch_bucket(len(idx), None)
                calls += 1
                work += rows * padded_w
                useful += sum(min(width, math.ceil(opts.image_height * crops[i][1] / crops[i][0])) for i in idx)
                shapes[(rows, padded_w)] += 1
        n = len(pages)
        return {"batch_size": batch_size, "pages_merged": merge_pages, "width_multiple": pad,
                "calls_per_page": round(calls / n, 2),
                "distinct_shapes": len(shapes), "useful_share": round(useful / work, 3),
                "padded_columns_per_page": work // n, "useful_columns_per_page": useful // n,
                "h2d_MB_per_page": round(work / n * 3 * opts.image_height * 4 / 1e6, 2),
                "d2h_MB_per_page_softmax": round(work / n / 4 * 6625 * 4 / 1e6, 1),
                "d2h_KB_per_page_ctc_greedy": round(work / n / 4 * 12 / 1e3, 1)}

    lines = [len(p["crops"]) for p in pages]
    census = {
        "pages": len(pages), "lines_per_page": round(float(np.mean(lines)), 2),
        "page_sizes": [p["size"] for p in pages],
        "det": det_stats(),
        "cls": [cls_stats(b) for b in (6, 8, 16, 32)],
        "rec": [rec_stats(b) for b in (6, 8, 16, 32)] + [rec_stats(b, 4) for b in (16, 32, 64)]
        + [rec_stats(b, 1, p) for p in (160, 64) for b in (6, 8, 16)] + [rec_stats(b, 4, 160) for b in (16, 32)],
        "crop_aspect_ratios": {"p50": round(float(np.median([w / h for p in pages for h, w in p["crops"]])), 2),
                               "p90": round(float(np.percentile([w / h for p in pages for h, w in p["crops"]], 90)), 2),
                               "max": round(float(max(w / h for p in pages for h, w in p["crops"])), 2)},
        "per_page": pages,
    }
    text = json.dumps(census, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in census.items() if k not in ("per_page", "page_sizes")}, indent=1, default=str))


if __name__ == "__main__":
    main()
