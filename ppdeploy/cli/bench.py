"""`ppdeploy bench`: offline model matrix, OCR pipeline vs reference tools, or the whole suite (`--all`)."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

from ppdeploy.core.errors import PPDeployError
from ppdeploy.precision.registry import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmark models (backends x precisions x batch sizes x threads) or the OCR pipeline",
        description="Examples:\n  ppdeploy bench ppocrv4-rec --backends onnxruntime,openvino --batch-sizes 1,4,8\n"
                    "  ppdeploy bench ocr --data pages/ --backends onnxruntime,openvino\n"
                    "  ppdeploy bench --all --out bench/     (regenerates BENCHMARKS.md)",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL|ocr|detect",
                   help="zoo names (ppocrv4-det, ppocrv4-rec, ppocr-cls), model paths, 'ocr' for the OCR pipeline, "
                        "or 'detect' for a detector end to end with mAP (--detector, --data)")
    p.add_argument("--detector", default=None,
                   help="detect: the detector (model folder with infer_cfg.yml, .onnx, or layout-cdla); --data is a "
                        "COCO folder (default: synthetic pages for layout-cdla, synthetic PCB boards otherwise); "
                        "--peers auto: rapid-layout for layout-cdla, paddle-inference for Paddle models")
    p.add_argument("--calib", default=None, help="detect: INT8 calibration images (default: --data)")
    p.add_argument("--backends", default="onnxruntime", help="comma list (onnxruntime, openvino, paddle, auto, ...)")
    p.add_argument("--precisions", default="fp32", help=f"comma list of {', '.join(PRECISIONS.names())}")
    p.add_argument("--batch-sizes", default="1", help="comma list, e.g. 1,2,4,8 (models only)")
    p.add_argument("--threads", default=None, help="comma list of CPU thread counts (default: cores available)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="per-sample input shape without the batch dim for dynamic models, e.g. x=3x224x224")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 3 models / 1 OCR)")
    p.add_argument("--min-runs", type=int, default=None, help="timed calls at least (default 10 models / 4 OCR)")
    p.add_argument("--min-time", type=float, default=None, help="timed seconds at least (default 1 models / 5 OCR)")
    p.add_argument("--max-time", type=float, default=None, help="stop a case after this many seconds (default 30/60)")
    p.add_argument("--pipeline", action="append", default=[], metavar="SPEC",
                   help="OCR: also a per-stage pipeline, e.g. det=openvino,cls=onnxruntime,rec=openvino:bf16 "
                        "(stage=backend[:precision]; guard=off drops the FP32 rec guard, guard=0.4 sets its margin, "
                        "keep_fp32=off runs a BF16 det without its FP32 encoder); "
                        "repeatable")
    p.add_argument("--data", default=None, help="OCR: folder of page images, labelled or not (default: synthetic labelled pages)")
    p.add_argument("--pages", type=int, default=4, help="OCR: synthetic labelled pages to generate when --data is not given")
    p.add_argument("--peers", default="auto",
                   help="OCR: reference tools to run in the same run (comma list; 'none' for none; auto: those running "
                        "the --ocr-models generations: rapidocr-paddle/-onnxruntime/-openvino for ppocrv4, "
                        "rapidocr-3.10-onnxruntime/-openvino for ppocrv6)")
    p.add_argument("--ocr-models", default="ppocrv4",
                   help="OCR: model generations to run every backend/precision and --pipeline with (comma list of "
                        "ppocrv4, ppocrv6; a --pipeline naming models= runs that one only)")
    p.add_argument("--throughput", action="store_true",
                   help="OCR: a folder read one page at a time and in throughput mode (pages in flight, rec batches "
                        "shared), same engines, same run: pages/s and per-page latency; every --threads value is a "
                        "separate set of engines")
    p.add_argument("--inflight", default="2,4", help="OCR --throughput: comma list of pages in flight (default 2,4)")
    p.add_argument("--out", default="bench-results", help="output folder for JSON, PNG plots and report (default %(default)s)")
    p.add_argument("--interleave", action="store_true",
                   help="models: load every engine first and time the cases in alternating slices (fairer ratios on "
                        "a busy machine; memory is then reported as RSS added at load, not per-case peak)")
    p.add_argument("--no-samples", action="store_true", help="leave raw per-call samples out of the JSON (smaller files)")
    p.add_argument("--all", action="store_true", help="run the whole suite and regenerate BENCHMARKS.md")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="the markdown file --all (or --update-markdown) updates "
                                                               "(default %(default)s)")
    p.add_argument("--update-markdown", action="store_true",
                   help="also replace the Models / OCR pipeline block of --markdown with this run's table")
    p.add_argument("--quick", action="store_true", help="--all: short timing windows (a smoke run, not for publishing)")
    p.add_argument("--skip", default="", help="--all: parts to leave out, comma list of models, ocr, precision, detection, "
                                                  "serving")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _ints(text: str | None, what: str) -> list[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError as exc:
        raise PPDeployError(f"--{what} takes comma-separated integers, got '{text}'") from exc
    if any(v < 1 for v in values):
        raise PPDeployError(f"--{what} values must be >= 1, got '{text}'")
    return values


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[], None]] | None]:
    """A factory `progress(description, total) -> tick` backed by one rich progress display (stderr)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as prog:
        def factory(description: str, total: int) -> Callable[[], None]:
            task = prog.add_task(description, total=total)
            return lambda: prog.advance(task)

        yield factory


def _settings(args, *, ocr: bool):
    from ppdeploy.bench.offline import MeasureSettings

    d = MeasureSettings(warmup=1, min_runs=4, min_time_s=5.0, max_time_s=60.0) if ocr else MeasureSettings()
    return MeasureSettings(
        warmup=d.warmup if args.warmup is None else args.warmup,
        min_runs=d.min_runs if args.min_runs is None else args.min_runs,
        min_time_s=d.min_time_s if args.min_time is None else args.min_time,
        max_time_s=d.max_time_s if args.max_time is None else args.max_time,
    )


def run(args) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    if args.all:
        return _run_all(args, show)
    if not args.models:
        raise PPDeployError("name a model (or 'ocr'), or pass --all", hint="ppdeploy bench ppocrv4-rec --backends onnxruntime,openvino")
    out = Path(args.out)
    ocr = [m for m in args.models if m == "ocr"]
    detect = [m for m in args.models if m == "detect"]
    models = [m for m in args.models if m not in ("ocr", "detect")]
    threads = _ints(args.threads, "threads") or [None]
    code = 0
    if models:
        code |= _run_models(args, models, threads, out, show)
    if ocr and args.throughput:
        code |= _run_ocr_throughput(args, threads, out)
    elif ocr:
        code |= _run_ocr(args, threads[0], out, show)
    if detect:
        code |= _run_detect(args, threads[0], out)
    return code


def _run_detect(args, threads: int | None, out: Path) -> int:
    from ppdeploy.bench import environment
    from ppdeploy.bench.detection import (
        DetConfig,
        bench_detection,
        default_peers,
        detection_data,
        detection_markdown,
        write_detection_run,
    )

    model = args.detector or "layout-cdla"
    data = Path(args.data) if args.data else detection_data(model)
    choice = args.peers.strip().lower()
    peers = [] if choice == "none" else default_peers(model) if choice == "auto" else _csv(args.peers)
    configs = [DetConfig(b, p) for b in _csv(args.backends) for p in _csv(args.precisions)]
    result = bench_detection(model, data, configs, peers=peers, threads=threads, settings=_settings(args, ocr=False),
                             calib_dir=args.calib)
    files = write_detection_run(result, environment.describe(), out, with_samples=not args.no_samples)
    print(detection_markdown(result))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0 if any(e["ok"] and e["kind"] == "ppdeploy" for e in result["entries"]) else 1


def _run_models(args, models, threads, out: Path, show: bool) -> int:
    from ppdeploy.bench import environment, report
    from ppdeploy.bench.offline import expand_cases, run_cases
    from ppdeploy.bench.suite import ModelRun, write_model_run
    from ppdeploy.cli.common import parse_named_dims

    shapes = parse_named_dims(args.shape, "x=3x224x224")
    cases = expand_cases(models, _csv(args.backends), _csv(args.precisions), _ints(args.batch_sizes, "batch-sizes") or [1],
                         threads)
    settings = _settings(args, ocr=False)
    with progress_bars(show) as progress:
        tick = progress("benchmark cases", len(cases)) if progress else None
        results = run_cases(cases, settings, shape_overrides=shapes, on_case=(lambda c, r: tick()) if tick else None,
                            interleave=args.interleave)
    env = environment.describe()
    files = write_model_run(ModelRun(env, settings, results, interleaved=args.interleave), out,
                            with_samples=not args.no_samples)
    if args.update_markdown:
        from ppdeploy.bench.suite import (
            _settings_line,
            models_section,
            update_benchmarks_md,
        )

        md = Path(args.markdown)
        rows = [r.to_dict(True) for r in results]
        plots = {k: files.get(k) for k in ("latency_vs_batch", "throughput", "cdf")}
        update_benchmarks_md(md, {"environment": environment.markdown(env),
                                  "models": _settings_line(settings, args.interleave) + "\n\n"
                                            + models_section(rows, out, plots, md.resolve().parent)},
                             env)
        files["benchmarks_md"] = md
    print(report.models_markdown([r.to_dict(False) for r in results]))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0 if any(r.ok for r in results) else 1


def _run_ocr(args, threads: int | None, out: Path, show: bool) -> int:
    from ppdeploy.bench import environment
    from ppdeploy.bench.ocr import OCRConfig, bench_ocr, ocr_markdown
    from ppdeploy.bench.pages import load_pages, synthetic_pages
    from ppdeploy.bench.peers import PEERS, peers_for
    from ppdeploy.bench.suite import _pages_dir, write_ocr_run

    pages = load_pages(Path(args.data)) if args.data else synthetic_pages(_pages_dir(), args.pages)
    generations = _csv(args.ocr_models)
    peers = {"none": [], "auto": None}.get(args.peers.strip().lower(), _csv(args.peers))
    unknown = [p for p in peers or [] if p not in PEERS]
    if unknown:
        raise PPDeployError(f"unknown peer(s) {unknown}", hint=f"choose from {', '.join(PEERS)}, auto or none")
    configs = [OCRConfig(b, p, models=g) for g in generations for b in _csv(args.backends) for p in _csv(args.precisions)]
    for spec in args.pipeline:  # once per generation, unless it names its own
        configs += ([OCRConfig.parse(spec)] if "models=" in spec else
                    [replace(OCRConfig.parse(spec), models=g) for g in generations])
    if peers is None:
        peers = [p for g in generations for p in peers_for(g)]
    with progress_bars(show) as progress:
        tick = progress("OCR pipelines", len(configs) + len(peers)) if progress else None
        result = bench_ocr(pages.images, configs, labels=pages.labels, peers=peers, threads=threads, settings=_settings(args, ocr=True),
                           on_entry=(lambda e: tick()) if tick else None)
    result["pages_source"] = pages.source
    env = environment.describe()
    files = write_ocr_run(result, env, out, with_samples=not args.no_samples)
    if args.update_markdown:
        from ppdeploy.bench.suite import ocr_section, update_benchmarks_md

        md = Path(args.markdown)
        update_benchmarks_md(md, {"environment": environment.markdown(env),
                                  "ocr": ocr_section(result, out, files.get("cdf"), files.get("bars"), md.resolve().parent)},
                             env)
        files["benchmarks_md"] = md
    print(ocr_markdown(result))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0 if any(e["ok"] and e["kind"] == "ppdeploy" for e in result["entries"]) else 1


def _run_ocr_throughput(args, threads: list[int | None], out: Path) -> int:
    import json

    from ppdeploy.bench.ocr import OCRConfig
    from ppdeploy.bench.ocr_throughput import (
        bench_throughput,
        results_json,
        throughput_markdown,
    )
    from ppdeploy.bench.offline import MeasureSettings
    from ppdeploy.bench.pages import load_pages, synthetic_pages
    from ppdeploy.bench.suite import _pages_dir

    pages = load_pages(Path(args.data)) if args.data else synthetic_pages(_pages_dir(), args.pages)
    configs = [OCRConfig(b, p) for b in _csv(args.backends) for p in _csv(args.precisions)]
    configs += [OCRConfig.parse(spec) for spec in args.pipeline]
    d = MeasureSettings(warmup=1, min_runs=3, min_time_s=10.0, max_time_s=120.0)
    settings = MeasureSettings(warmup=d.warmup if args.warmup is None else args.warmup,
                               min_runs=d.min_runs if args.min_runs is None else args.min_runs,
                               min_time_s=d.min_time_s if args.min_time is None else args.min_time,
                               max_time_s=d.max_time_s if args.max_time is None else args.max_time)
    images = [Path(p).read_bytes() for p in pages.images]
    results = bench_throughput(images, configs, threads=threads, inflight=_ints(args.inflight, "inflight"),
                               settings=settings, on_result=lambda r: print(f"  {r.config}, {r.threads} threads, "
                                                                           f"{r.mode}: {r.pages_per_s} pages/s",
                                                                           file=sys.stderr))
    out.mkdir(parents=True, exist_ok=True)
    (out / "ocr_throughput.json").write_text(json.dumps(results_json(results, pages.images, settings), indent=1))
    md = throughput_markdown(results, len(images), pages.source)
    (out / "ocr_throughput.md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out / 'ocr_throughput.json'}, {out / 'ocr_throughput.md'}")
    return 0 if any(r.error is None for r in results) and all(r.identical is not False for r in results) else 1


def _run_all(args, show: bool) -> int:
    from ppdeploy.bench.offline import MeasureSettings
    from ppdeploy.bench.suite import OCRSearch, SuitePlan, run_suite
    from ppdeploy.optimize import ocr_optimize_section, optimize_ocr

    threads = _ints(args.threads, "threads")
    plan = SuitePlan(threads=threads[0] if threads else None, pages=args.pages)
    skip = set(_csv(args.skip))
    unknown = skip - {"models", "ocr", "precision", "detection", "serving"}
    if unknown:
        raise PPDeployError(f"--skip: unknown part(s) {sorted(unknown)}", hint="models, ocr, precision, detection, serving")
    plan.models, plan.ocr = "models" not in skip, "ocr" not in skip
    plan.precision, plan.serving = "precision" not in skip, "serving" not in skip
    plan.detection = "detection" not in skip
    if args.quick:
        plan.model_settings = MeasureSettings(warmup=1, min_runs=3, min_time_s=0.2, max_time_s=5.0)
        plan.ocr_settings = MeasureSettings(warmup=1, min_runs=1, min_time_s=0.0, max_time_s=30.0)
        plan.precision_settings = MeasureSettings(warmup=1, min_runs=1, min_time_s=0.0, max_time_s=10.0)
        plan.precision_pages = 1
        plan.serving_duration_s = 2.0
        plan.serving_warmup_s = 0.5
        plan.serving_rec_rates = (20.0,)
        plan.serving_ocr_rates = (0.5,)
        plan.detection_settings = MeasureSettings(warmup=1, min_runs=1, min_time_s=0.0, max_time_s=10.0)
        plan.detection_images = 4
    if args.peers.strip().lower() == "none":
        plan.peers = ()
    elif args.peers.strip().lower() != "auto":
        plan.peers = tuple(_csv(args.peers))
    with progress_bars(show) as progress:
        files = run_suite(Path(args.out), Path(args.markdown), plan, data_dir=Path(args.data) if args.data else None,
                          progress=progress, ocr_search=OCRSearch(optimize_ocr, ocr_optimize_section))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0
