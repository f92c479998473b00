"""Device run for the ctc_greedy rec head (ppdeploy.graph.heads) against issue 7's serving goals.

1. The raw rec runner on onnxruntime-cuda, softmax model vs the same model with the head, at each batch size,
   interleaved (lines/s; the softmax copies 2.1 MB per line back to the host, the head 960 bytes).
2. `serving_goals.run_model` on the headed rec: batch-1 vs batched server under Poisson load and the raw runner
   (goal (a): batched >= 3x batch-1 at equal p99; goal (b): server within 10 % of the raw runner).

Needs `.gpu-carry/onnx/ppocrv4-rec-greedy.onnx` (the carried rec with the head added, made here with
`ppdeploy.graph.heads.add_head`) and its conversion entry in `.gpu-carry/cache`. Writes $OUT/head_goals.json and
$OUT/serving_goals.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("GOAL_VARIANTS", "inproc")
sys.path.insert(0, str(Path(__file__).parent))
import serving_goals as sg  # noqa: E402

SHAPE = (3, 48, 320)
BATCHES = [1, 2, 4, 8, 16, 32, 64]


def raw_sweep(seconds: float) -> dict:
    """Both models loaded first, then each batch size timed on one and the other in alternation."""
    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.models import load_engine

    x1 = np.random.default_rng(0).uniform(-1, 1, (1, *SHAPE)).astype(np.float32)
    runners = {}
    for label, key in (("softmax", "ppocrv4-rec"), ("ctc_greedy head", "ppocrv4-rec-greedy")):
        cfg = sg.config("raw", sg.ONNX / f"{key}.onnx", SHAPE, max(BATCHES), 1.0)
        runners[label] = load_engine(ModelConfig.model_validate(cfg)).runners[0]
    rows = []
    for b in BATCHES:
        x = np.ascontiguousarray(np.repeat(x1, b, axis=0))
        row = {"batch": b}
        for label, runner in runners.items():
            for _ in range(3):
                runner.infer({"x": x})
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                runner.infer({"x": x})
                calls += 1
            row[label] = round(calls * b / (time.perf_counter() - start), 1)
        print(f"  raw rec batch {b:3d}: " + "  ".join(f"{k} {v:9.1f} lines/s" for k, v in row.items() if k != "batch"),
              flush=True)
        rows.append(row)
    for runner in runners.values():
        runner.close()
    return {"rows": rows}


def main() -> int:
    from ppdeploy.bench.load import default_workers
    from ppdeploy.core.device import gpu_info

    out = Path(os.environ.get("OUT", "."))
    results = {"gpu": gpu_info(), "raw": raw_sweep(float(os.environ.get("RAW_SECONDS", 1.0)))}
    (out / "head_goals.json").write_text(json.dumps(results, indent=1, default=str))
    sg.RESULTS["gpu"] = results["gpu"]
    rates = [float(r) for r in os.environ.get(
        "GOAL_RATES_REC", "200,300,400,600,800,1000,1300,1600,2000,2500,3000,3500").split(",")]
    sg.run_model("ppocrv4-rec-greedy", SHAPE, int(os.environ.get("GOAL_MAX_BATCH", 64)), 1.0, rates,
                 float(os.environ.get("GOAL_SECONDS", 3.0)), int(os.environ.get("LOAD_WORKERS", default_workers())))
    sg.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
