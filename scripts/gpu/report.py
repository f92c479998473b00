"""Render a device run's ort_cuda.json as markdown: python scripts/gpu/report.py bench/gpu/ort_cuda_run1.json"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def render(path: Path) -> str:
    r = json.loads(path.read_text())
    gpu = r["gpu"][0] if r.get("gpu") else {}
    lines = [f"# ONNX Runtime CUDA on {gpu.get('name', '?')} (cc {gpu.get('compute_capability', '?')}, "
             f"driver {gpu.get('driver', '?')}) — `{path.name}`", "",
             f"onnxruntime-gpu {r['onnxruntime']}, Python {r['python']}; cuDNN conv algo search: "
             f"{r.get('conv_algo_default', 'HEURISTIC')}. {r['notes']}", "",
             "## Parity with the CPU reference (ONNX Runtime CPU EP, FP32), worst of 2 inputs", "",
             "| model | batch | variant | max abs | rel L2 | argmax agree |", "|---|---|---|---|---|---|"]
    for model, entry in r["parity"].items():
        for variant, outs in entry.items():
            if variant == "batch":
                continue
            if "error" in outs:
                lines.append(f"| {model} | {entry['batch']} | {variant} | error: {outs['error'][:80]} | | |")
                continue
            for _out, d in outs.items():
                agree = f"{d['argmax_agree']:.3f}" if "argmax_agree" in d else "–"
                lines.append(f"| {model} | {entry['batch']} | {variant} | {d['max_abs']:.2e} | {d['rel_l2']:.2e} | {agree} |")
    if r.get("conv_algo"):
        lines += ["", "## cuDNN algorithm search (rec FP32)", "", "| batch | algo | median ms |", "|---|---|---|"]
        lines += [f"| {c['batch']} | {c['algo']} | {c['median_ms']:.3f} |" for c in r["conv_algo"]]
    lines += ["", "## Batch sweep (median of ≥1 s / ≥20 calls; items/s = batch / median latency)", "",
              "| model | precision | batch | CUDA graph | median ms | p90 ms | items/s | h2d ms | compute ms | d2h ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["sweep"]:
        if "error" in s:
            lines.append(f"| {s['model']} | {s['precision']} | {s.get('batch', '')} | {s.get('cuda_graph', '')} | "
                         f"error: {s['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {s['model']} | {s['precision']} | {s['batch']} | {'yes' if s['cuda_graph'] else 'no'} | "
                     f"{s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['items_per_s']:.0f} | {s['h2d_ms']:.3f} | "
                     f"{s['compute_ms']:.3f} | {s['d2h_ms']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        p = Path(arg)
        p.with_suffix(".md").write_text(render(p))
        print(p.with_suffix(".md"))
