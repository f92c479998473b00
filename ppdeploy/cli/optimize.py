"""`ppdeploy optimize MODEL|ocr`: try every backend x precision here, gate on accuracy, benchmark, write the winner
as a model-repository folder plus the comparison table and plot."""
from __future__ import annotations

import sys
from pathlib import Path

from ppdeploy.core.errors import PPDeployError
from ppdeploy.precision.registry import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser("optimize", help="choose the fastest backend/precision that keeps accuracy; write a model repository",
                       description="Examples:\n  ppdeploy optimize ppocrv4-rec --out repo/\n"
                                   "  ppdeploy optimize ocr --calib pages/ --data eval_pages/ --out repo/\n"
                                   "  ppdeploy optimize model.onnx --calib npy_dir/ --target throughput --out repo/",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL|ocr", help="zoo name, Paddle model dir, .onnx file, or 'ocr' for the OCR task")
    p.add_argument("--calib", default=None,
                   help="calibration data: .npy/.npz folder for a model, page images for ocr (enables INT8)")
    p.add_argument("--data", default=None, help="ocr: evaluation page images (must differ from --calib)")
    p.add_argument("--max-loss", type=float, default=None,
                   help="accuracy budget: model = precision gate loss (default per precision); "
                        "ocr = share of reference lines allowed to read differently (default 0.01)")
    p.add_argument("--target", choices=["latency", "throughput"], default="latency")
    p.add_argument("--precisions", default=None, help=f"comma list to try (default: {','.join(PRECISIONS.names())} where they apply)")
    p.add_argument("--backends", default=None, help="comma list to try (default: every backend available here)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--name", default=None, help="model name in the repository (default: from the model)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per candidate (default %(default)s)")
    p.add_argument("--pages", type=int, default=3, help="ocr: synthetic pages when --calib/--data are not given")
    p.add_argument("--out", required=True, help="output folder: model repository + optimize.json/.md/.png")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ppdeploy.bench.offline import MeasureSettings
    from ppdeploy.cli.bench import _csv, progress_bars
    from ppdeploy.optimize import optimize_model, optimize_ocr

    precisions = _csv(args.precisions) or None
    backends = _csv(args.backends) or None
    if args.min_time < 0:
        raise PPDeployError("--min-time must be >= 0")
    show = not args.no_progress and sys.stderr.isatty()
    out = Path(args.out)
    with progress_bars(show) as progress:
        if args.model == "ocr":
            res = optimize_ocr(out, calib=args.calib, data=args.data, max_loss=args.max_loss, target=args.target,
                               precisions=precisions, backends=backends, threads=args.threads, pages=args.pages,
                               settings=MeasureSettings(warmup=1, min_runs=3, min_time_s=args.min_time, max_time_s=30),
                               progress=progress)
            ok = bool(res.combined.get("passed"))
        else:
            if args.data:
                raise PPDeployError("--data is for 'optimize ocr'; a model is judged on --calib inputs or generated ones")
            res = optimize_model(args.model, out, target=args.target, calib=args.calib, max_loss=args.max_loss,
                                 precisions=precisions, backends=backends, threads=args.threads, name=args.name,
                                 settings=MeasureSettings(warmup=3, min_runs=10, min_time_s=args.min_time, max_time_s=30),
                                 progress=progress)
            ok = res.winner is not None
    print(Path(res.files["markdown"]).read_text())
    print(f"wrote {', '.join(res.files.values())}")
    return 0 if ok else 1
