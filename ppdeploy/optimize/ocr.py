"""`ppdeploy optimize ocr`: a per-stage backend x precision search for the OCR pipeline, judged on the pipeline.

The stage inputs are the task's own: OCR runs once over calibration pages with recording runners, so det/cls/rec
see exactly the tensors the pipeline produces. Each stage's candidates are then judged where it matters: the whole
pipeline with that stage swapped in must read the evaluation pages (disjoint from the calibration pages) the same
as the FP32 reference pipeline on at least `1 - max_loss` of the lines. Speed is measured per stage on those
recorded tensors (time per page), the passing candidates of a stage taking turns so a drifting background load on
a shared machine does not pick the winner. Finally all stage winners together must still pass (`_check_combined`).
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ppdeploy.backends.registry import BACKENDS
from ppdeploy.bench import environment, report
from ppdeploy.bench.ocr import line_agreement
from ppdeploy.bench.offline import MeasureSettings
from ppdeploy.bench.pages import load_pages, synthetic_pages
from ppdeploy.bench.stats import summarize
from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import InputError, PPDeployError
from ppdeploy.deploy.load import load_model
from ppdeploy.optimize.candidates import (
    REFERENCE_FORMAT,
    Candidate,
    candidate_matrix,
    check_target,
    error_text,
    failure,
    pick_winner,
    reference_backend,
)
from ppdeploy.optimize.plots import plot_candidates
from ppdeploy.optimize.report import ocr_optimize_section
from ppdeploy.optimize.repository import write_model_config, write_pipeline_config
from ppdeploy.optimize.results import OCROptimizeResult
from ppdeploy.optimize.runners import RecordingRunner, SwappableRunner
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.tasks.ocr.builder import GUARDED_PRECISIONS, keep_fp32_for
from ppdeploy.tasks.ocr.guard import GuardedRecRunner
from ppdeploy.tasks.ocr.metrics import score_dataset
from ppdeploy.tasks.ocr.pipeline import DEFAULT_MODELS, OCRPipeline


def optimize_ocr(out_dir: Path, *, calib: str | Path | None = None, data: str | Path | None = None,
                 max_loss: float | None = None, target: str = "latency", precisions: Sequence[str] | None = None,
                 backends: Sequence[str] | None = None, threads: int | None = None, pages: int = 3,
                 settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=3, min_time_s=0.5, max_time_s=20.0),
                 progress: Callable[[str, int], Callable[[], None]] | None = None) -> OCROptimizeResult:
    """Per-stage search for the OCR pipeline; see the module docstring."""
    check_target(target)
    max_line_loss = 0.01 if max_loss is None else float(max_loss)
    # Calibration and evaluation pages must differ, or the gate would grade the calibration itself.
    root = default_root() / "bench-pages"
    calib_pages = (load_pages(Path(calib)) if calib else synthetic_pages(root, pages, seed=101)).images
    eval_set = load_pages(Path(data)) if data else synthetic_pages(root, pages, seed=202)
    eval_pages = eval_set.images
    overlap = {p.resolve() for p in calib_pages} & {p.resolve() for p in eval_pages}
    if overlap:
        raise InputError("calibration and evaluation images overlap", hint="give --data a folder disjoint from --calib")
    eval_bytes = [p.read_bytes() for p in eval_pages]

    ref_backend = reference_backend(BACKENDS.names())  # the OCR models are Paddle models: their own runtime
    if ref_backend is None:
        raise PPDeployError(f"no registered backend runs {REFERENCE_FORMAT} models, the OCR search's reference")
    refs = {s: load_model(m, backend=ref_backend, precision="fp32", threads=threads) for s, m in DEFAULT_MODELS.items()}
    recorders = {s: RecordingRunner(d.runner) for s, d in refs.items()}
    rec_ocr = OCRPipeline.from_runners(recorders["det"], recorders["rec"], recorders["cls"])
    for p in calib_pages:
        rec_ocr.predict(p.read_bytes())
    stage_calib = {s: CalibrationSet.from_arrays(r.feeds, source=f"{len(calib_pages)} calibration pages ({s} inputs)")
                   for s, r in recorders.items()}
    # The evaluation pass with the reference: its texts are the target, its stage feeds are the speed workload.
    swaps = {s: SwappableRunner(refs[s].runner) for s in refs}
    eval_rec = {s: RecordingRunner(swaps[s]) for s in swaps}
    ocr = OCRPipeline.from_runners(eval_rec["det"], eval_rec["rec"], eval_rec["cls"])
    ref_lines = [[(l.text, l.box) for l in ocr.predict(b).lines] for b in eval_bytes]
    ref_texts = [[t for t, _ in page] for page in ref_lines]
    workload = {s: r.feeds for s, r in eval_rec.items()}
    ocr = OCRPipeline.from_runners(swaps["det"], swaps["rec"], swaps["cls"])

    def judge() -> dict[str, Any]:
        """Line agreement with the reference pipeline, plus character accuracy when the pages are labelled."""
        lines = [[(l.text, l.box) for l in ocr.predict(b).lines] for b in eval_bytes]
        out = line_agreement(ref_texts, [[t for t, _ in page] for page in lines])
        if eval_set.labels is not None:
            out["char_accuracy"] = _char_accuracy(lines, eval_set.labels)
        return out

    reference_char_accuracy = _char_accuracy(ref_lines, eval_set.labels) if eval_set.labels is not None else None

    todo, skipped = candidate_matrix(precisions, has_calib=True, backends=backends)
    tick = progress("stage candidates", len(todo) * len(refs)) if progress else None
    stages: dict[str, list[Candidate]] = {}
    winners: dict[str, str] = {}
    for stage, model in DEFAULT_MODELS.items():
        cands = [Candidate(c.backend, c.precision) for c in todo]
        if stage == "rec":  # a reduced-precision rec may fail the line gate alone and pass with its FP32 guard
            cands += [Candidate(c.backend, c.precision, guard=True) for c in todo if c.precision in GUARDED_PRECISIONS]
        for c in todo:  # a BF16 det moves boxes; with its encoder in FP32 it keeps them (ppdeploy.graph.regions)
            auto = keep_fp32_for("auto", {stage: c.precision}).get(stage)
            if auto:
                cands.append(Candidate(c.backend, c.precision, keep_fp32=tuple(auto)))
        passing: list[tuple[Candidate, Any]] = []  # kept loaded, timed together below
        for cand in cands:
            start = time.perf_counter()
            try:
                dep = _load_stage(model, cand, threads, stage_calib[stage], max_loss)
            except Exception as exc:
                cand.status, cand.reason = failure(exc)
            else:
                cand.load_s, cand.cache_hit = round(time.perf_counter() - start, 2), dep.cache_hit
                try:
                    swaps[stage].runner = dep.runner
                    agree = judge()
                    cand.accuracy = agree
                    if agree["line_agreement"] is not None and agree["line_agreement"] < 1 - max_line_loss:
                        cand.status = "failed-accuracy"
                        cand.reason = (f"pipeline reads {agree['line_agreement'] * 100:.1f} % of the reference lines "
                                       f"identically (< {(1 - max_line_loss) * 100:.1f} %)")
                    else:
                        cand.status = "passed"
                        passing.append((cand, dep))
                except Exception as exc:
                    cand.status, cand.reason = "failed-build", error_text(exc)
                finally:
                    swaps[stage].runner = refs[stage].runner
                    if not any(d is dep for _, d in passing):
                        dep.close()
                    gc.collect()
            if tick:
                tick()
        try:
            _bench_stage_candidates([(c, d.runner) for c, d in passing], workload[stage], len(eval_bytes), settings)
        finally:
            for _, d in passing:
                d.close()
            gc.collect()
        cands += [Candidate(c.backend, c.precision, "skipped", c.reason) for c in skipped]
        w = pick_winner(cands, "latency")  # per-stage time per page: lower is better for both targets
        stages[stage] = cands
        if w is not None:
            winners[stage] = w.label
    combined = _check_combined(stages, winners, swaps, judge, max_line_loss, threads, max_loss,
                               stage_calib)
    for d in refs.values():
        d.close()
    result = OCROptimizeResult(target, f"{ref_backend} fp32 pipeline", max_line_loss, stages, winners, combined,
                               {"pages": [str(p) for p in calib_pages]},
                               {"pages": [str(p) for p in eval_pages], "source": eval_set.source,
                                "reference_char_accuracy": reference_char_accuracy})
    result.stage_calibration = stage_calib
    _write_ocr_outputs(result, Path(out_dir), threads)
    return result


def _bench_stage_candidates(cands: Sequence[tuple[Candidate, Any]], feeds: Sequence[Mapping[str, np.ndarray]],
                            pages: int, settings: MeasureSettings) -> None:
    """Time each candidate's pass over the stage's recorded inputs of all evaluation pages (ms per page), the
    candidates taking turns pass by pass so the shared machine's background load falls on all of them alike."""
    if not cands:
        return
    for _, runner in cands:
        for _ in range(settings.warmup):
            for f in feeds:
                runner.infer(f)
    samples: list[list[float]] = [[] for _ in cands]
    start = time.perf_counter()
    rnd = 0
    while True:
        k = rnd % len(cands)
        for i in list(range(k, len(cands))) + list(range(k)):
            runner = cands[i][1]
            t0 = time.perf_counter()
            for f in feeds:
                runner.infer(f)
            samples[i].append((time.perf_counter() - t0) * 1e3 / max(1, pages))
        rnd += 1
        enough = all(len(x) >= settings.min_runs and sum(x) * pages >= settings.min_time_s * 1e3 for x in samples)
        if enough or time.perf_counter() - start >= settings.max_time_s * len(cands):
            break
    for (cand, _), per_page in zip(cands, samples):
        cand.latency_ms = summarize(per_page).to_dict()
        cand.throughput = round(1e3 / cand.latency_ms["mean"], 3)  # pages/s of this stage alone
        cand.score = cand.latency_ms["p50"]


def _char_accuracy(lines: Sequence[Sequence[tuple[str, Any]]], labels: Sequence[Any]) -> float:

    gts = [[(line.text, line.box) for line in item.lines] for item in labels]
    return round(score_dataset(list(lines), gts).char_accuracy, 5)


class _GuardedDeployment:
    """A reduced-precision rec deployment and its FP32 guard, as one stage candidate."""

    def __init__(self, fast, guard):

        self.fast, self.guard = fast, guard
        self.runner = GuardedRecRunner(fast.runner, guard.runner)
        self.cache_hit = fast.cache_hit and guard.cache_hit

    def close(self) -> None:
        self.fast.close()
        self.guard.close()


def _load_stage(model: str, cand: Candidate, threads: int | None, calib, max_loss: float | None):

    keep = {"precision_options": {"keep_fp32": list(cand.keep_fp32)}} if cand.keep_fp32 else {}
    dep = load_model(model, backend=cand.backend, precision=cand.precision, threads=threads,
                     calib=calib if cand.precision != "fp32" else None, max_loss=max_loss, **keep)
    if not cand.guard:
        return dep
    try:
        guard = load_model(model, backend=dep.backend, precision="fp32", threads=threads)
    except BaseException:
        dep.close()
        raise
    return _GuardedDeployment(dep, guard)


def _check_combined(stages, winners, swaps, judge, max_line_loss, threads, max_loss, stage_calib):
    """All stage winners together must still pass; if not, fall back to FP32 stage by stage until it does."""

    def choose(stage: str, fp32_only: bool) -> Candidate | None:
        ok = [c for c in stages[stage] if c.passed and c.score is not None and (c.precision == "fp32" or not fp32_only)]
        return min(ok, key=lambda c: c.score) if ok else None

    history = []
    fp32_only: set[str] = set()
    for _ in range(len(DEFAULT_MODELS) + 1):
        picks = {s: choose(s, s in fp32_only) for s in DEFAULT_MODELS}
        if any(p is None for p in picks.values()):
            return {"passed": False, "reason": "a stage has no passing candidate", "history": history}
        deps = {s: _load_stage(DEFAULT_MODELS[s], p, threads, stage_calib[s], max_loss) for s, p in picks.items()}
        old = {s: swaps[s].runner for s in swaps}
        try:
            for s, d in deps.items():
                swaps[s].runner = d.runner
            agree = judge()
        finally:
            for s in swaps:
                swaps[s].runner = old[s]
            for d in deps.values():
                d.close()
        entry = {"stages": {s: p.label for s, p in picks.items()}, **agree}
        history.append(entry)
        if agree["line_agreement"] is None or agree["line_agreement"] >= 1 - max_line_loss:
            for s, p in picks.items():
                for c in stages[s]:
                    if c.status == "winner" and c is not p:
                        c.status = "passed"
                p.status = "winner"
                winners[s] = p.label
            return {"passed": True, **entry, "ms_per_page": round(sum(p.score for p in picks.values()), 2),
                    "history": history}
        lowered = [s for s, p in picks.items() if p.precision != "fp32" and s not in fp32_only]
        if not lowered:
            return {"passed": False, "reason": "FP32 everywhere still disagrees with the reference", "history": history}
        # undo the lowered stage that saves the least time first
        gain = {s: (choose(s, True).score - picks[s].score) if choose(s, True) else 0 for s in lowered}
        fp32_only.add(min(gain, key=gain.get))
    return {"passed": False, "reason": "no combination passed", "history": history}


def _write_ocr_outputs(result: OCROptimizeResult, out_dir: Path, threads: int | None) -> None:

    out_dir.mkdir(parents=True, exist_ok=True)
    if result.combined.get("passed"):
        for stage, model in DEFAULT_MODELS.items():
            w = next(c for c in result.stages[stage] if c.status == "winner")
            path = write_model_config(out_dir, model, stage, w.backend, w.precision, threads,
                                      max_batch_size=8 if stage != "det" else 1, keep_fp32=list(w.keep_fp32))
            result.files[f"config_{stage}"] = str(path)
        pipeline = {s: s for s in DEFAULT_MODELS}
        if result.rec_guarded:
            w = next(c for c in result.stages["rec"] if c.status == "winner")
            path = write_model_config(out_dir, DEFAULT_MODELS["rec"], "rec_guard", w.backend, "fp32", threads)
            result.files["config_rec_guard"] = str(path)
            pipeline["rec_guard"] = "rec_guard"
        result.files["config_ocr"] = str(write_pipeline_config(out_dir, "ocr", "ocr", pipeline))
    pngs = {}
    for stage, cands in result.stages.items():
        png = plot_candidates(cands, out_dir / f"optimize_{stage}.png", "latency", f"OCR {stage}: ms per page",
                              xlabel="stage time per page, p50 (ms) — lower is better")
        if png:
            pngs[stage] = png
            result.files[f"plot_{stage}"] = str(png)
    lines = ["# optimize ocr", "", ocr_optimize_section(result, pngs, out_dir, out_dir, heading="##")]
    md = out_dir / "optimize.md"
    md.write_text("\n".join(lines))
    result.files["markdown"] = str(md)
    result.files["json"] = str(out_dir / "optimize.json")
    report.write_json(out_dir / "optimize.json", {"environment": environment.describe(), **result.to_dict()})
