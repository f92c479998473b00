"""The candidates bar chart of an optimize report (matplotlib through `ppdeploy.bench.report`, imported on use)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ppdeploy.bench import report
from ppdeploy.optimize.candidates import Candidate


def plot_candidates(cands: Sequence[Candidate], path: Path, target: str, title: str,
                    value: Callable[[Candidate], float | None] | None = None, xlabel: str | None = None) -> Path | None:
    value = value or (lambda c: c.score)
    shown = [c for c in cands if value(c) is not None]
    if not shown:
        return None
    plt = report._plt()
    shown.sort(key=lambda c: value(c), reverse=(target == "latency"))
    fig, ax = plt.subplots(figsize=(6.4, 0.4 * len(shown) + 1.2))
    colors = {"winner": "tab:green", "passed": "tab:blue"}
    bars = ax.barh([c.label for c in shown], [value(c) for c in shown],
                   color=[colors.get(c.status, "tab:red") for c in shown])
    for bar, c in zip(bars, shown):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value(c):.2f} {c.status}", va="center", fontsize=7)
    ax.set_xlabel(xlabel or ("p50 latency at batch 1 (ms) — lower is better" if target == "latency"
                             else "best throughput (items/s) — higher is better"))
    ax.set_title(title + " (green: winner; failed candidates: see the table)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(x=0.35)
    fig.tight_layout()
    return report._save(fig, path)
