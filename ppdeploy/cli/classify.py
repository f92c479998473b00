"""`ppdeploy classify IMAGE... --model DIR`: top-k classes; preprocessing from DIR/preprocess.yaml
(ImageNet defaults when absent), class names from DIR/labels.txt or --labels."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="classify images with an image classification model",
                              description=__doc__)
    p.add_argument("images", nargs="+", help="image files or folders of them")
    p.add_argument("--model", required=True, help="model directory (Paddle inference model), .onnx, or zoo name")
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--labels", default=None, help="class names, one per line (default: MODEL/labels.txt)")
    p.add_argument("--preprocess", default=None, help="preprocess YAML (default: MODEL/preprocess.yaml, else ImageNet)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true",
                   help="print JSON: one document for one image, else one line per image (JSONL) as each is ready")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Like `ppdeploy ocr`: one image as before; several (or a folder) printed as each is ready (--json: JSONL, with
    {"image", "error"} for one that failed), bad images reported and skipped, exit status 2 when any failed."""
    from ppdeploy.cli.common import expand_images, for_each_input, print_jsonl
    from ppdeploy.tasks.classification.task import Classifier

    images = expand_images(args.images)
    several = len(images) > 1 or any(Path(i).is_dir() for i in args.images)
    clf = Classifier(args.model, backend=args.backend, precision=args.precision, topk=args.topk,
                     labels=args.labels, preprocess=args.preprocess, threads=args.threads)

    def emit(image: Path, res) -> None:
        if args.json:
            doc = {"image": str(image), **res.to_dict()}
            if several:
                print_jsonl(doc)
            else:
                print(json.dumps(doc, ensure_ascii=False, indent=1))
            return
        print(image)
        for p in res.topk:
            print(f"  {p.score:.4f}  {p.label}")

    def emit_error(image: Path, reason: str) -> None:
        if args.json and several:
            print_jsonl({"image": str(image), "error": reason})

    try:
        return for_each_input("classify", images, lambda image: clf.predict(image), emit, emit_error)
    finally:
        clf.close()
