"""Precision benchmark: what `OCR(precision=..., calib=...)` gives a user, against FP32 on the same backend, in one run.

    python -m ppdeploy.bench.precision [--backend openvino] [--precision int8 [bf16 ...]] [--calib DIR] [--gate DIR]
                                       [--data DIR] [--pages N] [--rounds N] [--threads N] [--json out.json]

Every variant is built by the user-facing call and nothing else: `OCR(backend=B, precision=P, calib=calib pages,
gate_data=gate pages)` with its defaults (the per-stage precision, the kept FP32 regions and the rec guard it picks;
each stage through `load_model(precision=...)`), and the reference is `OCR(backend=B)` at FP32. Three disjoint page sets:
calibration (--calib), the gate's (--gate: the INT8 exclusion search is tuned on them) and evaluation (--data: every
number reported); without them, synthetic pages are generated with seeds 1000, 3000 and 2000.

Per variant it reports, on the evaluation pages:
- speed: median seconds per page over `--rounds` interleaved passes (the variants take turns over the whole folder,
  so load from other processes hits them alike), and the ratio FP32 / variant;
- page character accuracy against the labels, and its delta to FP32 in points;
- the share of FP32's lines read identically (lines matched by box, ppdeploy.tasks.ocr.metrics.text_agreement);
- per stage: the engine each stage runs, its mean milliseconds per page, and the engine's own speed ratio against FP32
  as `load_model` recorded it in the engine's cache entry (ppdeploy.deploy.speed).

The goal line checks issue 21's targets: >= GOAL_SPEEDUP x faster, < GOAL_MAX_LOSS point of page character accuracy,
>= GOAL_IDENTICAL of the lines identical to FP32.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ppdeploy.core.errors import InputError
from ppdeploy.tasks.ocr.builder import OCR
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.metrics import score_dataset, text_agreement
from ppdeploy.tasks.ocr.result import mean_timings
from ppdeploy.tasks.ocr.synth import SynthOptions, generate

GOAL_SPEEDUP = 1.8
GOAL_MAX_LOSS = 0.5  # points of page character accuracy
GOAL_IDENTICAL = 0.99
SEEDS = {"calib": 1000, "gate": 3000, "data": 2000}


def page_sets(args: argparse.Namespace, tmp: Path) -> dict[str, Path]:
    """The three page folders, generated where not given; InputError unless they are three different folders."""
    sets = {}
    for name, seed in SEEDS.items():
        given = getattr(args, name)
        if given is None:
            given = tmp / name
            generate(given, SynthOptions(pages=args.pages, seed=seed))
        sets[name] = Path(given)
    if len({p.resolve() for p in sets.values()}) != len(sets):
        raise InputError("--calib, --gate and --data must be three different page sets")
    return sets


def build(backend: str, precision: str, sets: dict[str, Path], threads: int | None) -> tuple[OCR, float]:
    """The user's call, and how long it took (conversion, calibration, gates and engine builds, or cache reads)."""
    start = time.perf_counter()
    if precision == "fp32":
        ocr = OCR(backend=backend, threads=threads)
    else:
        ocr = OCR(backend=backend, precision=precision, calib=sets["calib"], gate_data=sets["gate"], threads=threads)
    return ocr, time.perf_counter() - start


def describe(ocr: OCR) -> dict[str, Any]:
    """What the call chose per stage: backend, precision, kept regions, guard, and the recorded engine speed."""
    out = {}
    for stage, dep in ocr.deployments.items():
        report = dep.precision_report or {}
        out[stage] = {"backend": dep.backend, "precision": dep.precision, "quantizer": report.get("quantizer"),
                      "kept_fp32": report.get("kept_fp32"), "excluded": len(report.get("excluded") or ()),
                      "gate": {k: (report.get("gate") or {}).get(k) for k in ("reference", "candidate", "loss")},
                      "engine_speed_vs_fp32": (dep.speed_vs_fp32 or {}).get("ratio"), "cache_hit": dep.cache_hit,
                      "left_at_fp32": ocr.left_at_fp32.get(stage)}
    return out


def measure(ocrs: dict[str, OCR], data_dir: Path, rounds: int) -> dict[str, dict[str, Any]]:
    """Interleaved timed passes over the evaluation pages; accuracy and lines from the last pass."""
    labelled = read_labelled_folder(data_dir)
    paths = [item.path for item in labelled]
    gts = [[(line.text, line.box) for line in item.lines] for item in labelled]
    for ocr in ocrs.values():  # warm-up: first calls allocate
        ocr.predict(paths[0])
    seconds: dict[str, list[float]] = {name: [] for name in ocrs}
    results: dict[str, list] = {}
    for _ in range(max(1, rounds)):
        for name, ocr in ocrs.items():
            start = time.perf_counter()
            results[name] = [ocr.predict(p) for p in paths]
            seconds[name].append((time.perf_counter() - start) / len(paths))
    out = {}
    for name in ocrs:
        preds = [[(line.text, line.box) for line in r.lines] for r in results[name]]
        metrics = score_dataset(preds, gts)
        out[name] = {"s_per_page": statistics.median(seconds[name]), "s_per_page_all": seconds[name],
                     "char_accuracy": metrics.char_accuracy, "preds": preds,
                     "guarded_lines": sum(r.guarded_lines for r in results[name]),
                     "stage_ms": {k: round(v, 2) for k, v in mean_timings(results[name]).items()}}
    return out


def compare(measured: dict[str, dict[str, Any]], reference: str = "fp32") -> dict[str, dict[str, Any]]:
    """Per variant: speed ratio, accuracy delta (points) and identical lines against `reference`."""
    ref = measured[reference]
    rows = {}
    for name, m in measured.items():
        agree = text_agreement(m["preds"], ref["preds"])
        rows[name] = {
            "s_per_page": round(m["s_per_page"], 4), "speedup": round(ref["s_per_page"] / m["s_per_page"], 3),
            "char_accuracy": round(m["char_accuracy"], 5),
            "char_acc_delta_pt": round(100 * (m["char_accuracy"] - ref["char_accuracy"]), 3),
            "lines_identical": round(agree.rate, 4), "lines": agree.reference_lines,
            "lines_changed": [(i, a, b) for i, a, b in agree.differences][:20],
            "guarded_lines": m["guarded_lines"], "stage_ms": m["stage_ms"],
            "s_per_page_all": [round(s, 4) for s in m["s_per_page_all"]],
        }
    return rows


def goal(row: dict[str, Any]) -> dict[str, bool]:
    return {"speedup": row["speedup"] >= GOAL_SPEEDUP, "accuracy": -row["char_acc_delta_pt"] < GOAL_MAX_LOSS,
            "identical": row["lines_identical"] >= GOAL_IDENTICAL}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="openvino", help="the backend every variant runs on (default: openvino, the "
                                                         "default CPU backend)")
    p.add_argument("--precision", nargs="+", default=["int8"], help="reduced precisions to compare with FP32")
    p.add_argument("--calib", type=Path, default=None, help="calibration pages (default: synthetic, seed 1000)")
    p.add_argument("--gate", type=Path, default=None, help="labelled pages the gates judge on (default: synthetic, "
                                                          "seed 3000)")
    p.add_argument("--data", type=Path, default=None, help="labelled evaluation pages (default: synthetic, seed 2000)")
    p.add_argument("--pages", type=int, default=12, help="synthetic pages per set")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed passes over the evaluation pages")
    p.add_argument("--threads", type=int, default=None, help="threads per engine (default: cores available)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    sets = page_sets(args, Path(tempfile.mkdtemp(prefix="ppdeploy-precision-bench-")))
    ocrs: dict[str, OCR] = {}
    built: dict[str, Any] = {}
    try:
        for precision in ["fp32", *[q for q in args.precision if q != "fp32"]]:
            ocrs[precision], seconds = build(args.backend, precision, sets, args.threads)
            built[precision] = {"seconds": round(seconds, 1), "guarded": ocrs[precision].guarded,
                                "stages": describe(ocrs[precision])}
        rows = compare(measure(ocrs, sets["data"], args.rounds))
    finally:
        for ocr in ocrs.values():
            ocr.close()
    result = {"backend": args.backend, "pages": {k: str(v) for k, v in sets.items()}, "rounds": args.rounds,
              "variants": {name: {**rows[name], **built[name], "goal": goal(rows[name])} for name in rows}}
    print(f"{'variant':10s} {'s/page':>8s} {'speedup':>8s} {'char acc':>9s} {'Δ pt':>7s} {'identical':>10s} "
          f"{'guarded':>8s}  stages")
    for name, row in result["variants"].items():
        stages = ", ".join(f"{s} {d['precision']}" + (f"+fp32 {'/'.join(d['kept_fp32'])}" if d["kept_fp32"] else "")
                           + (f" {d['engine_speed_vs_fp32']:.2f}x" if d["engine_speed_vs_fp32"] else "")
                           + (f" ({d['left_at_fp32']['precision']} was {d['left_at_fp32']['ratio']:.2f}x)"
                              if d.get("left_at_fp32") else "")
                           for s, d in row["stages"].items())
        print(f"{name:10s} {row['s_per_page']:8.3f} {row['speedup']:7.2f}x {row['char_accuracy']:9.4f} "
              f"{row['char_acc_delta_pt']:+7.2f} {100 * row['lines_identical']:9.1f}% {row['guarded_lines']:8d}  {stages}")
    for name, row in result["variants"].items():
        if name == "fp32":
            continue
        ok = row["goal"]
        print(f"goal {name} on {args.backend}: speed {row['speedup']:.2f}x (>= {GOAL_SPEEDUP}: "
              f"{'yes' if ok['speedup'] else 'NO'}), page char acc {row['char_acc_delta_pt']:+.2f} pt (loss < "
              f"{GOAL_MAX_LOSS}: {'yes' if ok['accuracy'] else 'NO'}), lines identical "
              f"{100 * row['lines_identical']:.1f} % (>= {100 * GOAL_IDENTICAL:.0f}: {'yes' if ok['identical'] else 'NO'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
