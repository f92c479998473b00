"""`ppdeploy quickstart`: convert, build, verify and time the bundled real models on every CPU backend."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="convert + build + verify + time the bundled PP-OCRv4 models (CPU)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per model and backend")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-ocr", action="store_true", help="skip the end-to-end OCR demo on rendered pages")
    p.set_defaults(handler=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ppdeploy.demo import quickstart

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
    if not args.no_ocr:
        from ppdeploy.core.errors import PPDeployError

        try:
            with console.status("OCR end to end on 2 rendered, labelled pages…"):
                demo = quickstart.ocr_demo(threads=args.threads)
        except PPDeployError as exc:  # e.g. no CJK font to render pages with: the table above still stands
            console.print(f"[yellow]OCR demo skipped:[/] {exc}")
        else:
            stages = ", ".join(f"{k} {v}" for k, v in demo.backends.items())
            console.print(f"OCR (det → cls → rec; {stages}): {demo.lines} labelled lines on {demo.pages} pages, "
                          f"character accuracy {demo.char_accuracy:.2%}, detection recall {demo.det_recall:.2%}, "
                          f"{demo.pages_per_s:.2f} pages/s. Try `ppdeploy ocr PAGE.png --draw out.png`.")
    return 0 if all(r.verdict == "PASS" for r in rows) else 1
