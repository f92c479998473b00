"""Benchmark results as files a person reads: JSON (everything), markdown tables, PNG plots, and a markdown
report that embeds the plots. Plots use matplotlib's Agg backend (no display needed)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ppdeploy.bench.stats import ecdf
from ppdeploy.core.lazy import missing

# Speed-ups are reported relative to Paddle Inference FP32 (what a PaddleOCR user runs today), measured in the same run.
BASELINE_BACKEND = "paddle"


def write_json(path: Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- offline model matrix

def model_rows(results: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        backend = r["backend"] if r.get("resolved_backend") in (None, r["backend"]) else f"{r['backend']}→{r['resolved_backend']}"
        if not r["ok"]:
            err = str(r.get("error"))
            verdict = "rejected by its accuracy gate" if "accuracy gate" in err else "could not run"
            rows.append([r["model"], backend, r["precision"], r["batch"], r.get("threads") or "auto",
                         None, None, None, None, None, None, None, f"{verdict}: {err}"])
            continue
        lat = r["latency"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r.get("stages_ms", {}).items() if k != "infer")
        mem = r.get("peak_rss_mib")
        if mem is None and r.get("load_rss_mib") is not None:
            mem = f"{r['load_rss_mib']:+.0f} at load"
        if r.get("gpu_memory_mib") is not None:
            mem = f"{mem} (GPU {r['gpu_memory_mib']:.0f})"
        rows.append([r["model"], backend, r["precision"], r["batch"], r.get("threads") or "auto",
                     lat["p50"], lat["p90"], lat["p99"], lat["max"], (r.get("cpu_ms") or {}).get("mean"),
                     r["throughput"], mem, stages])
    return rows


MODEL_HEADERS = ["model", "backend", "precision", "batch", "threads", "p50 ms", "p90 ms", "p99 ms", "max ms",
                 "CPU ms", "items/s", "RSS MiB (GPU MiB)", "stages (mean ms)"]


def models_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    return markdown_table(MODEL_HEADERS, model_rows(results))


def ratio_markdown(results: Sequence[Mapping[str, Any]], baseline_backend: str = BASELINE_BACKEND, batch: int = 1) -> str:
    """Per model, p50 latency of each backend/precision relative to a baseline measured in the same run."""
    by_model: dict[str, dict[str, tuple[float, float | None]]] = {}
    for r in results:
        if r["ok"] and r["batch"] == batch:
            cpu = (r.get("cpu_ms") or {}).get("mean")
            by_model.setdefault(r["model"], {})[f"{r['backend']} {r['precision']}"] = (r["latency"]["p50"], cpu)
    rows = []
    for model, lat in by_model.items():
        base = lat.get(f"{baseline_backend} fp32")
        for key, (p50, cpu) in sorted(lat.items(), key=lambda kv: kv[1][0]):
            rows.append([model, key, p50, round(base[0] / p50, 2) if base else None,
                         round(base[1] / cpu, 2) if base and base[1] and cpu else None])
    return markdown_table(["model", "backend precision", f"p50 ms (batch {batch})",
                           f"speed-up vs {baseline_backend} fp32 (p50)", "same, by CPU time"], rows)


def _plt():
    try:
        import matplotlib
    except ImportError as exc:  # plots are the [bench] extra; a base install still writes JSON and markdown
        raise missing("matplotlib", exc) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r: Mapping[str, Any]) -> str:
    threads = f" t{r['threads']}" if r.get("threads") else ""
    return f"{r['backend']} {r['precision']}{threads}"


def plot_latency_vs_batch(results: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    ok = [r for r in results if r["ok"]]
    # only models measured at more than one batch size have a curve to show
    models = sorted(m for m in {r["model"] for r in ok} if len({r["batch"] for r in ok if r["model"] == m}) > 1)
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        series: dict[str, list[tuple[int, float, float]]] = {}
        for r in ok:
            if r["model"] == model:
                series.setdefault(_label(r), []).append((r["batch"], r["latency"]["p50"], r["latency"]["p99"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            line, = ax.plot(xs, [p[1] for p in pts], marker="o", label=f"{label} p50")
            ax.plot(xs, [p[2] for p in pts], linestyle=":", color=line.get_color(), alpha=0.7)
        batches = sorted({r["batch"] for r in ok if r["model"] == model})
        if batches[-1] / batches[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_title(f"{model}: latency per batch (p50, dotted p99)", fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per call")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_throughput(results: Sequence[Mapping[str, Any]], path: Path, batch: int | None = None) -> Path | None:
    """Best throughput (over batch sizes unless `batch` is given) per model and backend/precision."""
    ok = [r for r in results if r["ok"] and (batch is None or r["batch"] == batch)]
    models = sorted({r["model"] for r in ok})
    if not models:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        best: dict[str, tuple[float, int]] = {}
        for r in ok:
            if r["model"] == model:
                key = _label(r)
                if key not in best or r["throughput"] > best[key][0]:
                    best[key] = (r["throughput"], r["batch"])
        labels = sorted(best, key=lambda k: best[k][0])
        bars = ax.barh(labels, [best[k][0] for k in labels], color="tab:blue")
        for bar, k in zip(bars, labels):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {best[k][0]:.0f} (b{best[k][1]})",
                    va="center", fontsize=7)
        ax.set_title(f"{model}: best throughput", fontsize=9)
        ax.set_xlabel("items / s")
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(x=0.25)
    fig.tight_layout()
    return _save(fig, path)


def plot_cdf(series: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str = "latency (ms)") -> Path | None:
    series = {k: v for k, v in series.items() if len(v)}
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, samples in series.items():
        xs, ys = ecdf(samples)
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel + " (log)")
    ax.set_ylabel("fraction of calls ≤ x")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def model_cdf_series(results: Sequence[Mapping[str, Any]], batch: int = 1) -> dict[str, list[float]]:
    return {f"{r['model']} {_label(r)}": r.get("samples_ms", []) for r in results if r["ok"] and r["batch"] == batch}


# ---------------------------------------------------------------- load test

LOAD_HEADERS = ["offered /s", "achieved /s", "sent", "ok", "429", "other errors", "failures", "dropped",
                "p50 ms", "p90 ms", "p99 ms", "max ms", "send lag p99 ms"]


def load_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in results:
        lat = r.get("latency_ms") or {}
        lag = r.get("send_lag_ms") or {}
        rows.append([r["offered_rate"], r["achieved_rps"], r["sent"], r["ok"], r["http_429"], r["http_errors"],
                     r["failures"], r["dropped"], lat.get("p50"), lat.get("p90"), lat.get("p99"), lat.get("max"),
                     lag.get("p99")])
    return markdown_table(LOAD_HEADERS, rows)


def plot_latency_vs_load(results: Sequence[Mapping[str, Any]], path: Path, title: str = "latency vs offered load") -> Path | None:
    pts = sorted(results, key=lambda r: r["offered_rate"])
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = [r["offered_rate"] for r in pts]
    for q, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
        ys = [(r.get("latency_ms") or {}).get(q, float("nan")) for r in pts]
        ax.plot(xs, ys, style, label=f"{q} latency")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["achieved_rps"] for r in pts], "k-.", alpha=0.6, label="achieved /s")
    ax2.plot(xs, xs, color="grey", linewidth=0.5, alpha=0.5)
    ax2.set_ylabel("achieved throughput (ok responses/s)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=4, frameon=False)
    import textwrap

    ax.set_title(textwrap.fill(title + " (grey: achieved = offered)", 80), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- markdown documents

def image_link(png: Path | None, relative_to: Path, alt: str) -> str:
    if png is None:
        return ""
    try:
        rel = Path(png).resolve().relative_to(Path(relative_to).resolve())
    except ValueError:
        rel = Path(png)
    return f"![{alt}]({rel.as_posix()})"


BEGIN = "<!-- ppdeploy-bench:{name}:begin (generated by `ppdeploy bench`; edits inside are overwritten) -->"
END = "<!-- ppdeploy-bench:{name}:end -->"


def replace_block(document: str, name: str, body: str) -> str:
    """Replace the generated block `name` in a markdown document (append it when absent).

    Everything outside the markers is left alone, so hand-written sections and numbers pasted from other
    machines survive a regeneration.
    """
    begin, end = BEGIN.format(name=name), END.format(name=name)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin.split(" (")[0]) + r".*?" + re.escape(end), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _m: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"
