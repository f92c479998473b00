"""`ppdeploy build MODEL --precision fp32|fp16|bf16|int8 ...`: convert, apply the precision (gated against FP32),
build the engine, and say what was built, how the gate judged it and what came from the cache."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppdeploy.cli.common import add_model_args, load_from_args, print_json
from ppdeploy.core.errors import InputError

OCR_ROLE = {"ppocrv4-det": "det", "ppocrv4-rec": "rec", "ppocr-cls": "cls"}


def register(sub) -> None:
    p = sub.add_parser(
        "build", help="build a cached engine at a precision (FP16/INT8 graphs, BF16 hint), gated on accuracy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Examples:\n"
                    "  ppdeploy build ppocrv4-rec --backend openvino --precision bf16\n"
                    "  ppdeploy build ppocrv4-rec --precision int8 --calib pages/ --gate-data eval_pages/\n"
                    "  ppdeploy build model.onnx --precision int8 --calib-npy samples/ --max-loss 0.01\n"
                    "  ppdeploy build ppocrv4-det --precision fp16 --calib pages/\n"
                    "Loss is measured in points of agreement with FP32 (0.005 = half a point), or of the task\n"
                    "metric when one is given (OCR: page character accuracy on --gate-data).")
    add_model_args(p)
    data = p.add_mutually_exclusive_group()
    data.add_argument("--calib", default=None, metavar="DIR",
                      help="calibration images, fed through the task's preprocessing (OCR zoo models: pages; "
                           "classifiers: the model's preprocess.yaml)")
    data.add_argument("--calib-npy", default=None, metavar="DIR",
                      help="calibration inputs for raw models: .npz per sample keyed by input name, or .npy")
    p.add_argument("--calib-limit", type=int, default=None, metavar="N", help="use at most N calibration images/files")
    p.add_argument("--crops", action="store_true",
                   help="OCR rec/cls: --calib images are text-line crops, not pages")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="INT8 activation range method (default %(default)s)")
    p.add_argument("--quantizer", default="auto", choices=["auto", "onnxruntime", "openvino", "openvino-bf16"],
                   help="INT8: onnxruntime = QDQ ONNX graph (ONNX Runtime, TensorRT); openvino = NNCF on the "
                        "OpenVINO model (OpenVINO's fast INT8; an IR only the openvino backend runs); "
                        "openvino-bf16 = the same with the unquantized ops at BF16 (CPUs with avx512_bf16/AMX); "
                        "auto = openvino when --backend openvino and NNCF is installed")
    p.add_argument("--max-loss", type=float, default=None,
                   help="accuracy budget (default: 0.005 fp16/bf16, 0.01 int8)")
    p.add_argument("--metric", default="auto", choices=["auto", "ctc", "top1", "mask_iou", "prob_abs", "rel_l2"],
                   help="output agreement metric of the gate (default: picked from the outputs)")
    p.add_argument("--gate-data", default=None, metavar="DIR",
                   help="OCR zoo models: labelled pages (not the calibration pages) to gate on page character "
                        "accuracy of the whole pipeline")
    p.add_argument("--keep-fp32", default="", metavar="NODE,..",
                   help="what stays FP32: FP16 takes node names and/or 'encoder'; BF16 takes 'encoder' (everything "
                        "before the model's first upsampling, e.g. the PP-OCR detector's backbone)")
    p.add_argument("--exclude", default="", metavar="NODE,..", help="INT8: nodes never to quantize")
    p.add_argument("--no-repair", action="store_true",
                   help="fail at once when the first candidate misses the gate (no FP32 keep / exclusion search)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=run)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _fp32_ort_runner(model: str, args) -> Any:
    from ppdeploy.deploy.load import load_model

    return load_model(model, backend="onnxruntime", precision="fp32", threads=args.threads,
                      cache_dir=args.cache_dir).runner


def calibration_from_args(args) -> Any:
    from ppdeploy.precision.calibration import CalibrationSet

    if args.calib_npy:
        return CalibrationSet.from_npy(args.calib_npy, _input_names(args), limit=args.calib_limit)
    role = OCR_ROLE.get(args.model)
    if not args.calib and role is not None and args.precision != "fp32":
        args.calib = synthetic_pages(args)
    if not args.calib:
        return None
    from ppdeploy.tasks.ocr import calibrate as tasks

    if role is not None:
        det = None if role == "det" or args.crops else _fp32_ort_runner("ppocrv4-det", args)
        return tasks.ocr_calibration(role, args.calib, det_runner=det, limit=args.calib_limit)
    preprocess_yaml = Path(args.model) / "preprocess.yaml"
    if Path(args.model).is_dir() and preprocess_yaml.is_file():
        return tasks.classification_calibration(args.calib, preprocess_yaml, limit=args.calib_limit)
    raise InputError(f"--calib images need the task's preprocessing, which ppdeploy does not know for {args.model}",
                     hint="use an OCR zoo model, a classifier folder with preprocess.yaml, or --calib-npy DIR")


SYNTHETIC_PAGES = 8
SYNTHETIC_SEED = 1000  # the evaluation sets elsewhere use other seeds: calibration stays disjoint from them


def synthetic_pages(args) -> str | None:
    """OCR zoo models without --calib: calibrate/gate on generated pages (printed, never silent)."""
    import sys

    from ppdeploy.core.cache import EngineCache
    from ppdeploy.core.errors import PPDeployError
    from ppdeploy.tasks.ocr.synth import SynthOptions, generate

    folder = EngineCache(args.cache_dir).root / "calibration-pages" / f"synth-{SYNTHETIC_SEED}-{SYNTHETIC_PAGES}"
    try:
        if not (folder / "labels.json").is_file():
            generate(folder, SynthOptions(pages=SYNTHETIC_PAGES, seed=SYNTHETIC_SEED))
    except PPDeployError as exc:  # no CJK font: fall back to generated tensors (fp16/bf16) or ask for --calib
        print(f"note: no --calib given and synthetic pages are unavailable ({exc})", file=sys.stderr)
        return None
    print(f"note: no --calib given; using {SYNTHETIC_PAGES} synthetic pages (seed {SYNTHETIC_SEED}) in {folder}",
          file=sys.stderr)
    return str(folder)


def _input_names(args) -> list[str]:
    return _fp32_ort_runner(args.model, args).input_names


def task_gate_from_args(args) -> dict[str, Any]:
    if not args.gate_data:
        return {}
    role = OCR_ROLE.get(args.model)
    if role is None:
        raise InputError("--gate-data is for the OCR zoo models (ppocrv4-det, ppocrv4-rec, ppocr-cls)")
    if args.calib and Path(args.calib).resolve() == Path(args.gate_data).resolve():
        raise InputError("--gate-data must not be the calibration folder: the gate would judge on calibration data")
    from ppdeploy.tasks.ocr.calibrate import ocr_char_accuracy

    runners = {name: _fp32_ort_runner(zoo, args) for zoo, name in OCR_ROLE.items()}
    return {"task_metric": ocr_char_accuracy(args.gate_data, role, runners),
            "task_name": f"ocr_char_accuracy[{Path(args.gate_data).resolve()}]"}


def quantizer_for(args) -> str:
    if args.quantizer != "auto":
        return args.quantizer
    from ppdeploy.backends.openvino import quantize as int8_openvino

    wants_openvino = args.backend.strip().lower() in ("openvino", "ov")
    return "openvino" if wants_openvino and int8_openvino.available() is None else "onnxruntime"


def run(args) -> int:
    if args.calib_limit is not None and args.calib_limit < 1:
        raise InputError("--calib-limit must be >= 1")
    calib = calibration_from_args(args)
    metric = args.metric
    if metric == "auto" and (Path(args.model) / "preprocess.yaml").is_file():
        metric = "top1"  # a classifier (logits): judged by top-1 agreement, as it is used
    options: dict[str, Any] = {"method": args.calib_method, "metric": metric, "quantizer": quantizer_for(args),
                               "keep_fp32": _csv(args.keep_fp32), "exclude": _csv(args.exclude),
                               "repair": not args.no_repair, **task_gate_from_args(args)}
    dep = load_from_args(args, calib=calib, max_loss=args.max_loss, precision_options=options)
    report = dep.precision_report or {}
    summary = {**dep.summary(), "precision_report": report}
    if args.json:
        print_json(summary)
    else:
        print(format_summary(dep, report))
    dep.close()
    return 0


def format_summary(dep, report: dict) -> str:
    lines = [f"{dep.source.name}: {dep.precision} on {dep.backend} — "
             f"{'engine from cache' if dep.cache_hit else 'built now'}"]
    if dep.onnx_path:
        lines.append(f"  graph: {dep.onnx_path}")
    gate = report.get("gate")
    if gate:
        verdict = "PASS" if gate.get("passed") else "FAIL"
        lines.append(f"  gate: {verdict} {gate['gate']}/{gate['metric']} reference {gate['reference']:.4f} "
                     f"candidate {gate['candidate']:.4f} loss {gate['loss']:.4f} (max {gate['max_loss']:.4f})")
        for name, out in (gate.get("outputs") or {}).items():
            lines.append(f"    {name}: {out.get('metric')} agreement {out.get('agreement', 0):.4f}, "
                         f"max abs {out.get('max_abs', 0):.3g}, cosine {out.get('cosine', 0):.6f}")
    data = report.get("data") or {}
    if data:
        lines.append(f"  data: gate on {data.get('gate')}; calibration {data.get('calibration') or '-'}")
    if report.get("kept_fp32"):
        lines.append(f"  kept in FP32 ({len(report['kept_fp32'])}): {', '.join(report['kept_fp32'][:12])}"
                     + (" ..." if len(report["kept_fp32"]) > 12 else ""))
    if "int8" in report:
        q = report["int8"]
        lines.append(f"  INT8: {q['int8_nodes']}/{q['compute_nodes']} compute nodes quantized "
                     f"({report.get('method')}); excluded {len(report.get('excluded', []))}")
    if "calibration_cache_hit" in report:
        hit = report["calibration_cache_hit"]
        lines.append("  calibration: " + ("statistics by NNCF per candidate" if hit is None
                                          else "from cache" if hit else "computed now"))
    if report:
        step = "from cache" if report.get("cache_hit") else f"{report.get('seconds', 0)} s"
        evaluations = (report.get("search") or {}).get("evaluations", 0)
        lines.append(f"  precision step: {step}, search evaluations {evaluations}")
    timings = getattr(dep, "timings", {}) or {}
    if timings:
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return "\n".join(lines)
