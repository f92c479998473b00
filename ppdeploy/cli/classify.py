"""`ppdeploy classify IMAGE... --model DIR`: top-k classes; preprocessing from DIR/preprocess.yaml
(ImageNet defaults when absent), class names from DIR/labels.txt or --labels."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="classify images with an image classification model",
                              description=__doc__)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True, help="model directory (Paddle inference model), .onnx, or zoo name")
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--labels", default=None, help="class names, one per line (default: MODEL/labels.txt)")
    p.add_argument("--preprocess", default=None, help="preprocess YAML (default: MODEL/preprocess.yaml, else ImageNet)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ppdeploy.tasks.classification.task import Classifier

    clf = Classifier(args.model, backend=args.backend, precision=args.precision, topk=args.topk,
                     labels=args.labels, preprocess=args.preprocess, threads=args.threads)
    try:
        results = [(img, clf.predict(img)) for img in args.images]
    finally:
        clf.close()
    if args.json:
        doc = [{"image": img, **res.to_dict()} for img, res in results]
        print(json.dumps(doc[0] if len(doc) == 1 else doc, ensure_ascii=False, indent=1))
        return 0
    for img, res in results:
        print(img)
        for p in res.topk:
            print(f"  {p.score:.4f}  {p.label}")
    return 0
