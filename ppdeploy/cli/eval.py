"""`ppdeploy eval ocr --data DIR`: OCR accuracy on a labelled folder (line exact match, char accuracy,
detection P/R at IoU >= 0.5). `ppdeploy eval synth OUT`: write a synthetic labelled set.

Label formats (see ppdeploy.tasks.ocr.dataset):
  DIR/labels.json  {"version": 1, "images": [{"file": "a.png", "lines": [{"text": "...", "box": [[x,y] x4]}]}]}
  DIR/Label.txt    PaddleOCR/PPOCRLabel format: "a.png<TAB>[{"transcription": "...", "points": [[x,y],...]}]"
"""
from __future__ import annotations

import argparse
import json

from ppdeploy.cli.detect import add_eval_detect


def register(subparsers) -> None:
    from ppdeploy.cli.ocr import add_ocr_model_args

    p = subparsers.add_parser("eval", help="accuracy of a task on labelled data", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="eval_task", metavar="TASK")
    o = sub.add_parser("ocr", help="OCR metrics on a labelled folder", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("--data", required=True, help="folder with images and labels.json or Label.txt")
    add_ocr_model_args(o)
    o.add_argument("--keep-spaces", action="store_true", help="compare texts with spaces (default: ignore spaces)")
    o.add_argument("--nfkc", action="store_true",
                   help="NFKC-normalise texts before comparing (full-width = half-width: ￥ = ¥, ， = ,)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(handler=run_ocr)
    s = sub.add_parser("synth", help="generate a synthetic labelled OCR set")
    s.add_argument("out", help="output folder")
    s.add_argument("--pages", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(handler=run_synth)
    add_eval_detect(sub)
    p.set_defaults(handler=lambda args: (p.print_help(), 1)[1])


def run_ocr(args: argparse.Namespace) -> int:
    from ppdeploy.cli.ocr import build_ocr
    from ppdeploy.tasks.ocr.evaluate import evaluate_ocr

    ocr = build_ocr(args)
    try:
        report = evaluate_ocr(ocr, args.data, ignore_space=not args.keep_spaces, nfkc=args.nfkc)
    finally:
        ocr.close()
    doc = {"data": args.data, "backends": ocr.backends, **report.to_dict()}
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    m = report.metrics
    print(f"images {m.images}  lines {m.gt_lines}  backends {ocr.backends}")
    print(f"line exact match  {m.line_exact_match * 100:.2f} %")
    print(f"char accuracy     {m.char_accuracy * 100:.2f} %")
    print(f"det precision     {m.det_precision * 100:.2f} %   recall {m.det_recall * 100:.2f} %  (IoU >= 0.5)")
    print(f"speed             {report.run.pages_per_s:.2f} images/s")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from ppdeploy.tasks.ocr.synth import SynthOptions, generate

    images = generate(args.out, SynthOptions(pages=args.pages, seed=args.seed))
    print(f"wrote {len(images)} images, {sum(len(i.lines) for i in images)} lines, labels.json to {args.out}")
    return 0
