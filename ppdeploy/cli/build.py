"""`ppdeploy build MODEL --precision fp32|fp16|bf16|int8 ...`: convert, apply the precision (gated against FP32),
build the engine, and say what was built, how the gate judged it and what came from the cache."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ppdeploy.cli.common import add_model_args, load_from_args, parse_shapes, print_json
from ppdeploy.core.errors import InputError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.precision.registry import QUANTIZERS


def register(sub) -> None:
    p = sub.add_parser(
        "build", help="build a cached engine at a precision (FP16/INT8 graphs, BF16 hint), gated on accuracy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Examples:\n"
                    "  ppdeploy build ppocrv4-rec --backend openvino --precision bf16\n"
                    "  ppdeploy build ppocrv4-rec --precision int8 --calib pages/ --gate-data eval_pages/\n"
                    "  ppdeploy build model.onnx --precision int8 --calib-npy samples/ --max-loss 0.01\n"
                    "  ppdeploy build ppocrv4-det --precision fp16 --calib pages/\n"
                    "  ppdeploy build model.onnx --backend tensorrt-rtx --target 8.9   (ahead of time, no GPU needed)\n"
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
    p.add_argument("--calib-method", default=None, choices=sorted({m for _, q in QUANTIZERS.items() for m in q.methods}),
                   help="INT8 activation range method (default: the quantizer's first, minmax)")
    p.add_argument("--quantizer", default="auto", choices=["auto", *QUANTIZERS.names()],
                   help="INT8: onnxruntime = QDQ ONNX graph (ONNX Runtime, TensorRT); openvino = NNCF on the "
                        "OpenVINO model (OpenVINO's fast INT8; an IR only the openvino backend runs); "
                        "openvino-bf16 = the same with the unquantized ops at BF16 (CPUs with avx512_bf16/AMX); "
                        "auto (default) = the quantizer native to the backend that runs the model")
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
    p.add_argument("--target", default=None, metavar="CC",
                   help="build ahead of time for another GPU, on a machine that need not have one: tensorrt-rtx "
                        "takes a compute capability (8.9, 12.0; `ppdeploy doctor` lists them), tensorrt takes "
                        "'ampere+'. The engine is cached under the target and only loads on a matching GPU")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=run)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _fp32_ort_runner(model: str, args) -> Any:
    from ppdeploy.deploy import REFERENCE_BACKEND, load_model

    # The FP32 reference the calibration crops and the task gate run on.
    return load_model(model, backend=REFERENCE_BACKEND, precision="fp32", threads=args.threads,
                      cache_dir=args.cache_dir).runner


def task_role(model: str) -> tuple[Any, str] | None:
    """(Task class, role) of a model some registered task knows (e.g. ppocrv4-rec: ocr's rec), else None."""
    from ppdeploy.tasks.registry import TASKS

    for _, task in TASKS.items():
        role = task.role_of(model)
        if role is not None:
            return task, role
    return None


def calibration_from_args(args) -> Any:
    from ppdeploy.precision.calibration import CalibrationSet

    if args.calib_npy:
        return CalibrationSet.from_npy(args.calib_npy, _input_names(args), limit=args.calib_limit)
    found = task_role(args.model)
    if not args.calib and found is not None and args.precision != "fp32":
        args.calib = synthetic_data(args, found[0])
    if not args.calib:
        return None
    if found is None:
        raise InputError(f"--calib images need the task's preprocessing, which ppdeploy does not know for {args.model}",
                         hint="use a model a task knows (an OCR zoo model, a classifier folder with "
                              "preprocess.yaml), or --calib-npy DIR")
    task, role = found
    needs = () if args.crops else task.calibration_needs.get(role, ())
    runners = {r: _fp32_ort_runner(task.default_models[r], args) for r in needs}
    return task.calibration(role, args.calib, runners=runners, limit=args.calib_limit, model=args.model)


SYNTHETIC_PAGES = 8
SYNTHETIC_SEED = 1000  # the evaluation sets elsewhere use other seeds: calibration stays disjoint from them


def synthetic_data(args, task) -> str | None:
    """Models of a task that can generate labelled inputs (OCR pages), without --calib: calibrate/gate on those
    (printed, never silent)."""
    import sys

    from ppdeploy.core.cache import EngineCache
    from ppdeploy.core.errors import PPDeployError

    folder = EngineCache(args.cache_dir).root / "calibration-pages" / f"synth-{SYNTHETIC_SEED}-{SYNTHETIC_PAGES}"
    try:
        made = task.synthetic_data(folder, SYNTHETIC_PAGES, SYNTHETIC_SEED)
    except PPDeployError as exc:  # no CJK font: fall back to generated tensors (fp16/bf16) or ask for --calib
        print(f"note: no --calib given and synthetic pages are unavailable ({exc})", file=sys.stderr)
        return None
    if made is None:
        return None
    print(f"note: no --calib given; using {SYNTHETIC_PAGES} synthetic pages (seed {SYNTHETIC_SEED}) in {made}",
          file=sys.stderr)
    return str(made)


def _input_names(args) -> list[str]:
    return _fp32_ort_runner(args.model, args).input_names


def task_gate_from_args(args) -> dict[str, Any]:
    if not args.gate_data:
        return {}
    found = task_role(args.model)
    if found is None or not found[0].default_models:
        raise InputError("--gate-data is for models of a task with a metric on labelled folders "
                         "(the OCR zoo models: ppocrv4-det, ppocrv4-rec, ppocr-cls)")
    if args.calib and Path(args.calib).resolve() == Path(args.gate_data).resolve():
        raise InputError("--gate-data must not be the calibration folder: the gate would judge on calibration data")
    task, role = found
    # FP32 runners of the other stages (the candidate takes `role`); a model that is not the task's default for
    # its role is named, so the metric reads its own side files (a detector's infer_cfg.yml and labels)
    runners = {r: _fp32_ort_runner(model, args) for r, model in task.default_models.items() if r != role}
    own = {} if args.model == task.default_models.get(role) else {"model": args.model}
    metric = task.metric(role, args.gate_data, runners, **own)
    name = getattr(metric, "__name__", f"{task.name}_metric").split("[")[0]  # e.g. ocr_char_accuracy
    return {"task_metric": metric, "task_name": f"{name}[{Path(args.gate_data).resolve()}]"}


def run(args) -> int:
    if args.calib_limit is not None and args.calib_limit < 1:
        raise InputError("--calib-limit must be >= 1")
    calib = calibration_from_args(args)
    metric = args.metric
    if metric == "auto":  # a model folder a task claims is judged the way that task uses it (a classifier: top-1)
        from ppdeploy.tasks.registry import TASKS

        metric = next((task.gate_metric for _, task in TASKS.items() if task.claims_folder(Path(args.model))), "auto")
    options: dict[str, Any] = {"method": args.calib_method, "metric": metric, "quantizer": args.quantizer,
                               "keep_fp32": _csv(args.keep_fp32), "exclude": _csv(args.exclude),
                               "repair": not args.no_repair, **task_gate_from_args(args)}
    if args.target is not None:
        return build_for_target(args, calib, options)
    dep = load_from_args(args, calib=calib, max_loss=args.max_loss, precision_options=options)
    report = dep.precision_report or {}
    summary = {**dep.summary(), "precision_report": report}
    if args.json:
        print_json(summary)
    else:
        print(format_summary(dep, report))
    dep.close()
    return 0


def build_for_target(args, calib: Any, precision_options: dict[str, Any]) -> int:
    """`--target`: convert, apply the precision and build for the named GPU, without loading the engine (this
    machine may have no GPU, or another one). The cache key carries the target in place of this machine's GPU."""
    from ppdeploy.backends.base import BuildOptions
    from ppdeploy.backends.registry import get_backend
    from ppdeploy.core.cache import EngineCache, sha256_file
    from ppdeploy.core.errors import BackendUnavailable
    from ppdeploy.deploy.prepared import Prepared
    from ppdeploy.source.model import detect

    backend = get_backend(args.backend)  # one backend: a target names a GPU of one library
    targets = backend.targets()
    if not targets:
        raise InputError(f"--target is for backends that build ahead of time for another GPU; {args.backend} "
                         "does not (or its library is not installed)", hint="--backend tensorrt-rtx or tensorrt")
    reason = backend.build_unavailable_reason(args.target)
    if reason:
        raise BackendUnavailable(f"cannot build {args.backend} engines for target {args.target} here: {reason}")
    cache = EngineCache(args.cache_dir)
    source = detect(args.model, None, export_dir=None, exports_root=cache.root / "layer-exports")
    options = BuildOptions(precision=args.precision, threads=args.threads,
                           shapes=parse_shapes(args.shapes) or ShapeProfile(), extra={"target": args.target})
    prepared = Prepared(source, cache, args.opset, args.rebuild, calib, args.max_loss, precision_options, args.head)
    variant = prepared.for_precision(args.precision, backend)
    parts = {"model": {"onnx": sha256_file(variant.model_path), "precision": variant.key_parts},
             "backend": backend.key_parts(options), "options": options.key_parts(), "device": {"target": args.target}}
    entry = cache.get_or_build("engine", parts, lambda out: backend.build(variant.model_path, out, options),
                               label=f"{source.name} {backend.name} {args.precision} for {args.target}",
                               rebuild=args.rebuild)
    summary = {"model": source.name, "backend": backend.name, "precision": args.precision, "target": args.target,
               "engine": str(entry.path), "cache_hit": entry.hit, "build_s": entry.build_s,
               "precision_report": variant.report or {}}
    if args.json:
        print_json(summary)
    else:
        print(f"{source.name}: {args.precision} on {backend.name} for target {args.target} — "
              f"{'engine from cache' if entry.hit else f'built now in {entry.build_s:.1f} s'} (not loaded: "
              f"ahead-of-time build)\n  engine: {entry.path}")
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
    speed = getattr(dep, "speed_vs_fp32", None)  # measured at build, kept in the engine's cache entry
    if speed and speed.get("ratio"):
        lines.append(f"  speed vs FP32 on {dep.backend}: {speed['ratio']:.2f}x ({speed['ms']:.1f} ms against "
                     f"{speed['fp32_ms']:.1f} ms, median of {speed['calls']} calls at {speed.get('input')})")
    return "\n".join(lines)
