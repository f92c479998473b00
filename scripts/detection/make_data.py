"""Write the synthetic detection sets as COCO folders (images/ + annotations.json).

  python scripts/detection/make_data.py pcb OUT [--split train|val|test] [--count N]   PCB-defect boards
  python scripts/detection/make_data.py pages OUT [--count N] [--seed S]              document pages (CDLA names)

PCB splits use disjoint seeds (ppdeploy.tasks.detection.synth.pcb.SPLIT_SEEDS): train 1, val 2, test 3.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("pcb", "pages"))
    ap.add_argument("out")
    ap.add_argument("--split", choices=("train", "val", "test"), default="test")
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--seed", type=int, default=None, help="overrides the split's seed")
    args = ap.parse_args()
    if args.kind == "pcb":
        from ppdeploy.tasks.detection.synth import pcb

        seed = args.seed if args.seed is not None else pcb.SPLIT_SEEDS[args.split]
        folder = pcb.generate(args.out, args.count, seed)
    else:
        from ppdeploy.tasks.detection.synth import pages

        folder = pages.generate(args.out, args.count, args.seed if args.seed is not None else 77)
    doc = json.loads((Path(folder) / "annotations.json").read_text())
    print(f"wrote {len(doc['images'])} images, {len(doc['annotations'])} boxes to {folder}")


if __name__ == "__main__":
    main()
