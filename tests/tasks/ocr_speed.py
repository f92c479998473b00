"""OCR speed, side by side in one process: ppdeploy configurations vs rapidocr_paddle (PaddleOCR pipeline on
Paddle Inference, configured as in test_ocr_accuracy). Not a test (speed is not asserted); run:

    python tests/tasks/ocr_speed.py [--pages 8] [--repeat 3] [--configs ort,ov,...]

Passes are interleaved round-robin and the best pass per configuration is reported, which keeps a noisy shared
machine from favouring whichever ran in a quiet moment. Agreement = lines with the reference's exact text.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def configs():
    from ppdeploy.tasks.ocr.builder import OCR

    return {
        "onnxruntime": lambda: OCR(backend="onnxruntime"),
        "openvino": lambda: OCR(backend="openvino"),
        "openvino-1-thread": lambda: OCR(backend="openvino", threads=1),
        "onnxruntime-1-thread": lambda: OCR(backend="onnxruntime", threads=1),
        "det:openvino rec:openvino cls:onnxruntime 1-thread": lambda: OCR(
            backend={"det": "openvino", "rec": "openvino", "cls": "onnxruntime"}, threads=1),
        "paddle": lambda: OCR(backend="paddle"),
        "det:openvino rec:openvino cls:onnxruntime": lambda: OCR(
            backend={"det": "openvino", "rec": "openvino", "cls": "onnxruntime"}),
        "openvino-rec-batch-12": lambda: OCR(backend="openvino", rec_batch_size=12),
        "openvino-bf16-rec": lambda: OCR(backend="openvino", precision={"det": "fp32", "rec": "bf16", "cls": "fp32"},
                                         load_options={"rec": {"max_loss": 0.99}}),
        "openvino-bf16-det": lambda: OCR(backend="openvino", precision={"det": "bf16", "rec": "fp32", "cls": "fp32"},
                                         load_options={"det": {"max_loss": 0.99}}),
        "openvino-bf16-all": lambda: OCR(backend="openvino", precision="bf16",
                                         load_options={s: {"max_loss": 0.99} for s in ("det", "cls", "rec")}),
    }


class Reference:
    def __init__(self, threads: int | None):
        from test_ocr_accuracy import reference_pipeline

        self.ref = reference_pipeline(threads)

    def predict_lines(self, img):
        res, _ = self.ref(img)
        return [(text, box) for box, text, _ in (res or [])]


def main() -> int:
    import cv2

    from ppdeploy.tasks.ocr.metrics import text_agreement
    from ppdeploy.tasks.ocr.synth import SynthOptions, generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--configs", default=",".join(configs()))
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--reference-2-threads", action="store_true", help="also run the reference with 2 threads")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="ocr_speed_"))
    data = generate(out, SynthOptions(pages=args.pages, seed=args.seed))
    images = [cv2.imread(str(d.path)) for d in data]

    runners = {"rapidocr_paddle(default threads)": Reference(None)}
    if args.reference_2_threads:
        runners["rapidocr_paddle(2 threads)"] = Reference(2)
    factories = configs()
    for name in args.configs.split(","):
        ocr = factories[name]()
        runners[name] = ocr
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    lines: dict[str, list] = {}
    for _ in range(args.repeat):
        for name, r in runners.items():
            predict = r.predict_lines if isinstance(r, Reference) else (
                lambda img, r=r: [(l.text, l.box) for l in r.predict_bgr(img).lines])
            predict(images[0])  # warm-up
            start, cpu_start = time.perf_counter(), time.process_time()
            lines[name] = [predict(img) for img in images]
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - start) / len(images))
            # CPU seconds of this process per page: steadier than wall time on a shared machine
            cpu[name] = min(cpu.get(name, 1e9), (time.process_time() - cpu_start) / len(images))
    ref_name = "rapidocr_paddle(default threads)"
    rows = []
    for name in runners:
        agree = text_agreement(lines[name], lines[ref_name])
        rows.append({"config": name, "s_per_page": round(best[name], 4), "pages_per_s": round(1 / best[name], 2),
                     "speedup_vs_reference": round(best[ref_name] / best[name], 2),
                     "cpu_s_per_page": round(cpu[name], 4), "cpu_speedup": round(cpu[ref_name] / cpu[name], 2),
                     "same_text": round(agree.rate, 4), "lines": agree.reference_lines})
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
