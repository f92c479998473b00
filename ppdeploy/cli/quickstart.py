"""`ppdeploy quickstart`: convert, build, verify and time the bundled real models on every CPU backend."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="convert + build + verify + time the bundled PP-OCRv4 models (CPU)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per model and backend")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(handler=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ppdeploy import quickstart

    console = Console(width=max(Console().width, 100))  # never wrap the table in narrow/non-tty output
    with console.status("starting…") as status:
        rows = quickstart.run(runs=args.runs, threads=args.threads, progress=lambda msg: status.update(msg))
    table = Table(title="ppdeploy quickstart: bundled models, CPU backends vs Paddle Inference (batch 1)")
    for col in ("model", "backend", "engine", "prepare s", "max |err|", "p50 ms", "verdict"):
        table.add_column(col, justify="right" if col in ("prepare s", "max |err|", "p50 ms") else "left")
    for r in rows:
        table.add_row(r.model, r.backend, r.cache, f"{r.prepare_s:.2f}", f"{r.max_abs:.2e}", f"{r.p50_ms:.2f}",
                      f"[green]{r.verdict}[/]" if r.verdict == "PASS" else f"[red]{r.verdict}[/]")
    console.print(table)
    console.print("engine: 'built' = converted and compiled now, 'hit' = loaded from the engine cache "
                  "(run `ppdeploy quickstart` again to see it). `ppdeploy doctor` lists what else can run here.")
    return 0 if all(r.verdict == "PASS" for r in rows) else 1
