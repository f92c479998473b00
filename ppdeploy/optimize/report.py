"""Markdown for optimize results: the candidates table of one model, the per-stage tables of the OCR search."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ppdeploy.bench import report
from ppdeploy.optimize.candidates import Candidate, rank_key
from ppdeploy.optimize.results import ModelOptimizeResult, OCROptimizeResult


def model_markdown(result: ModelOptimizeResult, png: Path | None, out_dir: Path) -> str:
    rows = []
    tried = [c for c in result.candidates if c.status != "skipped"]
    for c in sorted(tried, key=rank_key(result.target)):
        acc = c.accuracy
        gate = acc.get("precision_gate") or {}
        acc_txt = (f"max abs {acc['max_abs']:.2g}, cos {acc['min_cosine']:.6f}" if acc else "")
        if isinstance(gate, dict) and gate.get("loss") is not None:
            acc_txt += f"; gate loss {gate['loss']:.4f}"
        rows.append([c.label, c.status, (c.latency_ms or {}).get("p50"), (c.latency_ms or {}).get("p99"),
                     c.throughput, c.best_batch, acc_txt, c.reason or ""])
    table = report.markdown_table(["candidate", "status", "p50 ms (b1)", "p99 ms (b1)", "items/s", "best batch",
                                   "accuracy vs reference", "note"], rows)
    lines = [f"# optimize {result.model} (target: {result.target})", "",
             f"Reference: {result.reference}; inputs {result.inputs}.", "",
             f"**Winner: {result.winner.label}**" if result.winner else "**No candidate passed.**", "", table, ""]
    lines += skipped_lines(result.candidates)
    link = report.image_link(png, out_dir, "candidates")
    if link:
        lines += [link, ""]
    if result.files.get("config"):
        lines += [f"Model repository entry: `{Path(result.files['config']).relative_to(out_dir)}` "
                  f"(serve with `ppdeploy serve --repo {out_dir}`).", ""]
    return "\n".join(lines)


def skipped_lines(cands: Sequence[Candidate]) -> list[str]:
    """Candidates not tried here, grouped by reason (one line per reason, not one per backend x precision)."""
    by_reason: dict[str, list[str]] = {}
    for c in cands:
        if c.status == "skipped":
            by_reason.setdefault(c.reason or "?", []).append(c.label)
    if not by_reason:
        return []
    return ["Not tried on this machine:", ""] + [f"- {', '.join(labels)}: {reason}" for reason, labels in by_reason.items()] + [""]


def ocr_optimize_section(result: OCROptimizeResult, pngs: Mapping[str, Path], out_dir: Path, relative_to: Path,
                         heading: str = "##") -> str:
    """The OCR optimize report body (tables per stage, plots linked relative to `relative_to`)."""
    lines = [f"Reference: {result.reference}. A stage candidate passes when the whole pipeline with it swapped in reads "
             f"at least {(1 - result.max_line_loss) * 100:.1f} % of the reference's lines identically on the evaluation "
             "pages (disjoint from the calibration pages); its speed is the stage's own time per page on the tensors "
             "the pipeline fed it, the passing candidates timed in turns. `lines = reference` compares exact strings, "
             "spaces included; `char acc.` is against the page labels and, like ppdeploy.tasks.ocr.metrics, ignores "
             "spaces — so a candidate can keep 100 % character accuracy and still fail the line gate on spacing "
             "alone.", ""]
    ref_acc = result.evaluation.get("reference_char_accuracy")
    lines += [f"Evaluation pages: {result.evaluation.get('source')}"
              + (f"; the reference pipeline's character accuracy on them: {ref_acc * 100:.2f} %." if ref_acc is not None
                 else "."), ""]
    comb = result.combined
    if comb.get("passed"):
        lines += [f"**Chosen: {', '.join(f'{s}: {l}' for s, l in comb['stages'].items())}** — "
                  f"{comb['line_agreement'] * 100:.1f} % of reference lines identical"
                  + (f", character accuracy {comb['char_accuracy'] * 100:.2f} %" if comb.get("char_accuracy") is not None else "")
                  + f", ~{comb['ms_per_page']} ms/page of model time.", ""]
    else:
        lines += [f"**No combination passed: {comb.get('reason')}**", ""]
    for stage, cands in result.stages.items():
        rows = [[c.label, c.status, (c.latency_ms or {}).get("p50"), (c.latency_ms or {}).get("p90"),
                 f"{c.accuracy['line_agreement'] * 100:.1f} %" if c.accuracy.get("line_agreement") is not None else None,
                 f"{c.accuracy['char_accuracy'] * 100:.2f} %" if c.accuracy.get("char_accuracy") is not None else None,
                 c.reason or ""] for c in sorted(cands, key=rank_key("latency")) if c.status != "skipped"]
        lines += [f"{heading} {stage}", "", report.markdown_table(["candidate", "status", "ms/page p50", "ms/page p90",
                                                                  "lines = reference", "char acc. (labels)", "note"],
                                                                 rows), ""]
        lines += skipped_lines(cands)
        link = report.image_link(pngs.get(stage), relative_to, f"{stage} candidates")
        if link:
            lines += [link, ""]
    if result.files.get("config_ocr"):
        folders = "det/, cls/, rec/, " + ("rec_guard/, " if result.files.get("config_rec_guard") else "") + "ocr/"
        lines += [f"Model repository: `{out_dir}` ({folders} config.yaml); serve it with "
                  f"`ppdeploy serve --repo {out_dir}`.", ""]
    return "\n".join(lines)
