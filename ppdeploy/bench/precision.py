"""Precision benchmark for the OCR models: FP32 vs BF16 vs INT8 on the same backend, in the same run.

    python -m ppdeploy.bench.precision [--calib DIR] [--gate DIR] [--data DIR] [--pages N] [--json out.json]

Builds every variant through `ppdeploy.precision.build.apply` (cached; INT8 gated on page character accuracy of
the whole pipeline, calibrated on pages disjoint from the evaluation pages), then measures per backend:
det and rec latency (median of interleaved runs: the variants take turns, so load from other processes
hits them alike) and the whole pipeline (pages/s and page character accuracy on the evaluation pages).
Three disjoint page sets: calibration (--calib), the INT8 gate's (--gate: the exclusion search is tuned on them),
and evaluation (--data: the reported accuracy and speed). Without them, synthetic pages are generated with a
different seed for each.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.backends.registry import get_backend
from ppdeploy.convert.pipeline import to_onnx
from ppdeploy.core.cache import EngineCache
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.core.errors import BackendUnavailable
from ppdeploy.core.lazy import lazy_import
from ppdeploy.precision.build import apply
from ppdeploy.precision.runners import candidate_runner, ort_runner
from ppdeploy.source.model import detect
from ppdeploy.tasks.ocr.calibrate import ocr_calibration
from ppdeploy.tasks.ocr.det import DetOptions, preprocess
from ppdeploy.tasks.ocr.evaluate import evaluate_ocr
from ppdeploy.tasks.ocr.pipeline import OCRPipeline
from ppdeploy.tasks.ocr.synth import SynthOptions, generate
from ppdeploy.tasks.ocr.textline import fill_batch

cv2 = lazy_import("cv2", install="opencv-python-headless")

ZOO = {"det": "ppocrv4-det", "rec": "ppocrv4-rec", "cls": "ppocr-cls"}


def _onnx(role: str) -> Path:
    return to_onnx(detect(ZOO[role], None, export_dir=None), cache=EngineCache()).onnx_path


def build_variants(calib_dir: Path, gate_dir: Path, max_loss: float) -> dict[str, dict[str, Any]]:
    """{backend/precision: {"det"|"rec"|"cls": (path, hint)}, ...} plus the gate reports."""
    cache = EngineCache()
    fp32 = {role: _onnx(role) for role in ZOO}
    # The compared variants are this benchmark's fixed matrix: (graph, how it runs) per role, the second item a
    # `precision.runners.candidate_runner` hint (None: ONNX Runtime; "bf16"; or the quantizer whose engine runs it).
    variants: dict[str, dict[str, Any]] = {
        "onnxruntime fp32": {r: (p, None) for r, p in fp32.items()},
        "openvino fp32": {r: (p, "openvino") for r, p in fp32.items()},
    }
    reports: dict[str, Any] = {}
    # (variant, INT8 quantizer, calibration method, backend of its FP32 reference runners, cls kept at BF16)
    specs = [("onnxruntime int8", "onnxruntime", "entropy", None, False),
             ("openvino int8", "openvino", "minmax", "openvino", False)]
    if _has_bf16():
        variants["openvino bf16"] = {r: (p, "bf16") for r, p in fp32.items()}
        # NNCF's IR with BF16 for what it left unquantized (OpenVINO's CPU plugin keeps depthwise convolutions in
        # float: a third of INT8 rec's time), gated that way. Its cls stays BF16: slower in INT8 than in BF16
        # (more converting than computing).
        specs.append(("openvino int8+bf16", "openvino-bf16", "minmax", "openvino", True))
    for name, quantizer, method, ref_backend, cls_bf16 in specs:
        refs = {r: _fp32_runner(p, ref_backend) for r, p in fp32.items()}
        variant: dict[str, Any] = {}
        for role in ZOO:
            if role == "cls" and cls_bf16:
                variant[role] = (fp32[role], "bf16")
                continue
            calib = ocr_calibration(role, calib_dir, det_runner=None if role == "det" else refs["det"])
            res = apply(fp32[role], "int8", cache=cache, calib=calib, method=method, quantizer=quantizer,
                        max_loss=max_loss, task_metric=OCRPipeline.metric(role, gate_dir, refs), task_name=f"ocr_char_accuracy[{role}]")
            variant[role] = (res.onnx_path, res.backend_hint)
            reports[f"{name} {role}"] = {k: res.report.get(k) for k in ("gate", "int8", "excluded", "data")}
        variants[name] = variant
        for r in refs.values():
            r.close()
    return {"variants": variants, "reports": reports}


def _fp32_runner(onnx_path: Path, backend: str | None):
    """FP32 runner of `onnx_path` on `backend` (None: ONNX Runtime's plain reference runner), built outside the
    cache: the gate's reference runs on the engine the quantized graph will run on."""
    if backend is None:
        return ort_runner(onnx_path)
    be, options = get_backend(backend), BuildOptions()
    reason = be.unavailable_reason()
    if reason:
        raise BackendUnavailable(f"{backend} is unavailable: {reason}")
    with tempfile.TemporaryDirectory(prefix="ppdeploy-gate-") as tmp:
        be.build(onnx_path, Path(tmp), options)
        return be.load(Path(tmp), options)


def _has_bf16() -> bool:
    return cpu_supports_bf16()


THREADS: int | None = None


def _runner(path: Path, hint: str | None):
    return candidate_runner(path, hint, THREADS)


def model_latency(variants: dict, page_feeds: dict, rec_feeds: dict, rounds: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for role, feeds in (("det", page_feeds), ("rec", rec_feeds)):
        runners = {name: _runner(*v[role]) for name, v in variants.items()}
        for r in runners.values():
            r.infer(feeds)
        times: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, r in runners.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                r.infer(feeds)
                times[name].append((time.perf_counter() - start) * 1e3)
                cpu[name].append((time.process_time() - start_cpu) * 1e3)
        for name, ts in times.items():
            out.setdefault(name, {})[f"{role}_ms"] = round(statistics.median(ts), 2)
            # CPU time of the process: on a machine shared with other jobs it tracks the work done, where
            # wall time also counts waiting for a core (compare the two before trusting either).
            out[name][f"{role}_cpu_ms"] = round(statistics.median(cpu[name]), 2)
        for r in runners.values():
            r.close()
    return out


def pipeline(variants: dict, data_dir: Path, rounds: int) -> dict[str, dict[str, float]]:
    ocrs = {}
    for name, v in variants.items():
        stages = {role: _runner(*v[role]) for role in ZOO}
        ocrs[name] = OCRPipeline.from_runners(det=stages["det"], rec=stages["rec"], cls=stages["cls"])
    out: dict[str, dict[str, Any]] = {name: {"s_per_page": [], "cpu_s_per_page": []} for name in ocrs}
    for _ in range(rounds):  # interleaved: each variant takes its turn over the whole folder
        for name, ocr in ocrs.items():
            start_cpu = time.process_time()
            ev = evaluate_ocr(ocr, data_dir)
            pages = max(ev.metrics.images, 1) + 1  # evaluate_ocr runs one warm-up page first
            out[name]["cpu_s_per_page"].append((time.process_time() - start_cpu) / pages)
            out[name]["s_per_page"].append(1.0 / ev.run.pages_per_s)
            out[name]["stage_ms"] = {k: round(v, 1) for k, v in ev.run.stage_ms.items()}
            out[name]["char_accuracy"] = round(ev.metrics.char_accuracy, 5)
            out[name]["line_exact_match"] = round(ev.metrics.line_exact_match, 5)
    for name in out:
        for key in ("s_per_page", "cpu_s_per_page"):
            out[name][key] = round(statistics.median(out[name][key]), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=Path, default=None, help="calibration pages (default: synthetic, seed 1000)")
    p.add_argument("--gate", type=Path, default=None, help="labelled pages the INT8 gate judges on (default: synthetic, "
                                                          "seed 3000)")
    p.add_argument("--data", type=Path, default=None, help="labelled evaluation pages (default: synthetic, seed 2000)")
    p.add_argument("--pages", type=int, default=12, help="synthetic pages per set")
    p.add_argument("--max-loss", type=float, default=0.005, help="INT8 gate: page char accuracy points")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds for model latency")
    p.add_argument("--pipeline-rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="threads per engine (default: cores available)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads

    tmp = Path(tempfile.mkdtemp(prefix="ppdeploy-precision-bench-"))
    calib_dir = args.calib or tmp / "calib"
    gate_dir = args.gate or tmp / "gate"
    data_dir = args.data or tmp / "data"
    if args.calib is None:
        generate(calib_dir, SynthOptions(pages=args.pages, seed=1000))
    if args.gate is None:
        generate(gate_dir, SynthOptions(pages=args.pages, seed=3000))
    if args.data is None:
        generate(data_dir, SynthOptions(pages=args.pages, seed=2000))
    built = build_variants(calib_dir, gate_dir, args.max_loss)
    variants = built["variants"]
    page = cv2.imread(str(sorted(p for p in data_dir.iterdir() if p.suffix in (".png", ".jpg"))[0]))
    page_feeds = {"x": preprocess(page, DetOptions())[0]}
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (40, 300, 3), dtype=np.uint8) for _ in range(6)]
    rec_feeds = {"x": fill_batch(crops, 48, 320)}
    result = {
        "models": model_latency(variants, page_feeds, rec_feeds, args.rounds),
        "pipeline": pipeline(variants, data_dir, args.pipeline_rounds),
        "gates": built["reports"],
        "inputs": {"det": list(page_feeds["x"].shape), "rec": list(rec_feeds["x"].shape)},
    }
    for name in result["models"]:
        result["models"][name].update(result["pipeline"].get(name, {}))
    print(f"{'variant':20s} {'det ms':>8s} {'det cpu':>8s} {'rec ms':>8s} {'rec cpu':>8s} {'s/page':>8s} "
          f"{'cpu s/pg':>8s} {'char acc':>9s}")
    for name, row in result["models"].items():
        print(f"{name:20s} {row['det_ms']:8.1f} {row['det_cpu_ms']:8.1f} {row['rec_ms']:8.1f} {row['rec_cpu_ms']:8.1f} "
              f"{row.get('s_per_page', 0):8.3f} {row.get('cpu_s_per_page', 0):8.3f} {row.get('char_accuracy', 0):9.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
