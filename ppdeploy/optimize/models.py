"""`ppdeploy optimize MODEL`: every backend x precision that runs here, gated on accuracy, timed, the winner
written as a model-repository entry plus the comparison (optimize.json/.md/.png).

The gate is two-fold: non-FP32 precisions pass the precision layer's own gate at build time
(`load_model(..., max_loss=...)`, an AccuracyError otherwise), and every candidate's outputs are compared with
the FP32 reference (the model format's own runtime when one is tried, e.g. Paddle Inference for a Paddle model)
on the same inputs — FP32 candidates must match to `verify`'s tolerances, lower precisions are reported with
their agreement numbers.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ppdeploy.bench import environment, report
from ppdeploy.bench.offline import MeasureSettings, PeakRSS, measure
from ppdeploy.bench.stats import summarize
from ppdeploy.core.errors import PPDeployError
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.verify import Tolerance, compare_outputs, generate_inputs
from ppdeploy.optimize.candidates import (
    Candidate,
    candidate_matrix,
    check_target,
    error_text,
    failure,
    pick_winner,
    reference_backend,
)
from ppdeploy.optimize.plots import plot_candidates
from ppdeploy.optimize.report import model_markdown
from ppdeploy.optimize.repository import write_model_config
from ppdeploy.optimize.results import ModelOptimizeResult
from ppdeploy.precision.build import as_calibration
from ppdeploy.source import zoo


def optimize_model(model: str, out_dir: Path, *, target: str = "latency", calib: str | Path | None = None,
                   max_loss: float | None = None, precisions: Sequence[str] | None = None,
                   backends: Sequence[str] | None = None, threads: int | None = None,
                   batch_sizes: Sequence[int] = (1, 4, 8), settings: MeasureSettings = MeasureSettings(min_time_s=1.0),
                   name: str | None = None, progress: Callable[[str, int], Callable[[], None]] | None = None
                   ) -> ModelOptimizeResult:
    check_target(target)
    todo, skipped = candidate_matrix(precisions, has_calib=calib is not None, backends=backends)
    if not todo:
        raise PPDeployError("no backend/precision can run here", hint="`ppdeploy doctor` shows what each backend needs")
    tick = progress("candidates", len(todo)) if progress else None

    # Reference: the model format's own runtime in FP32 when tried (the numerical reference), else the first FP32 one.
    ref_backend = (reference_backend(list(dict.fromkeys(c.backend for c in todo)))
                   or next(c.backend for c in todo if c.precision == "fp32"))
    ref = load_model(model, backend=ref_backend, precision="fp32", threads=threads)
    feeds = _model_feeds(model, ref.runner, calib)
    ref_outputs = [ref.runner.infer(f) for f in feeds]
    ref.close()
    batch_dynamic = all(t.shape and t.shape[0] is None for t in ref.runner.io.inputs)

    for cand in todo:
        start = time.perf_counter()
        try:
            dep = load_model(model, backend=cand.backend, precision=cand.precision, threads=threads,
                             calib=calib, max_loss=max_loss)
        except Exception as exc:  # a library failure is a result for this candidate, not the end of the search
            cand.status, cand.reason = failure(exc)
        else:
            cand.load_s = round(time.perf_counter() - start, 2)
            cand.cache_hit = dep.cache_hit
            try:
                _judge_model(cand, dep, feeds, ref_outputs, Tolerance())
                if cand.status == "passed":
                    _bench_model(cand, dep.runner, feeds[0], target, batch_sizes if batch_dynamic else (1,), settings)
            except Exception as exc:
                cand.status, cand.reason = "failed-build", error_text(exc)
            finally:
                dep.close()
                gc.collect()
        if tick:
            tick()
    cands = todo + skipped
    winner = pick_winner(cands, target)
    result = ModelOptimizeResult(str(model), target, f"{ref_backend} fp32", cands, winner,
                                 {k: list(v.shape) for k, v in feeds[0].items()})
    _write_model_outputs(result, Path(out_dir), name, threads, max(batch_sizes) if batch_dynamic else 1)
    return result


def _model_feeds(model: str, runner, calib) -> list[dict[str, np.ndarray]]:
    if calib is not None:
        cs = as_calibration(calib, runner.input_names)
        feeds = [dict(f) for f in cs][:8]
        if feeds:
            return feeds
    shapes = {runner.io.inputs[0].name: zoo.MODELS[model].example_shape} if model in zoo.MODELS else None
    return [generate_inputs(runner.io, seed=s, shapes=shapes) for s in range(3)]


def _judge_model(cand: Candidate, dep, feeds, ref_outputs, tol: Tolerance) -> None:
    worst_cos, worst_abs, passed = 1.0, 0.0, True
    for f, ref_out in zip(feeds, ref_outputs):
        cmp = compare_outputs(ref_out, dep.runner.infer(f), tol, cand.label)
        if cmp.error:
            raise PPDeployError(cmp.error)
        for o in cmp.outputs:
            worst_cos, worst_abs = min(worst_cos, o.cosine), max(worst_abs, o.max_abs)
        passed = passed and cmp.passed
    cand.accuracy = {"max_abs": worst_abs, "min_cosine": worst_cos, "within_fp32_tolerance": passed}
    gate = (dep.precision_report or {}).get("gate") if getattr(dep, "precision_report", None) else None
    if gate:
        cand.accuracy["precision_gate"] = gate
    if cand.precision == "fp32" and not passed:
        cand.status = "failed-accuracy"
        cand.reason = f"outputs differ from the reference beyond tolerance (max abs {worst_abs:.3g}, cosine {worst_cos:.6f})"
    else:
        cand.status = "passed"  # non-FP32: the precision layer's gate already held at build time


def _bench_model(cand: Candidate, runner, feed: Mapping[str, np.ndarray], target: str, batch_sizes, settings) -> None:
    best = None
    sizes = (1,) if target == "latency" else tuple(batch_sizes)
    for b in sizes:
        batch = {k: np.repeat(v[:1], b, axis=0) for k, v in feed.items()}

        def call() -> Mapping[str, float]:
            runner.infer(batch)
            return runner.last_timings

        with PeakRSS() as rss:
            m = measure(call, settings)
        s = summarize(m.samples_ms)
        thr = b * len(m.samples_ms) / (sum(m.samples_ms) / 1e3)
        if b == 1:
            cand.latency_ms = s.to_dict()
        if best is None or thr > best[0]:
            best = (thr, b)
        cand.peak_rss_mib = max(cand.peak_rss_mib or 0, rss.peak_mib or 0)
    cand.throughput, cand.best_batch = round(best[0], 2), best[1]
    cand.score = cand.latency_ms["p50"] if target == "latency" else cand.throughput


def _write_model_outputs(result: ModelOptimizeResult, out_dir: Path, name: str | None, threads: int | None,
                         max_batch: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    w = result.winner
    if w is not None:
        cfg = write_model_config(out_dir, result.model, name, w.backend, w.precision, threads,
                                 max_batch_size=max(1, w.best_batch or 1) if result.target == "throughput" else max_batch)
        result.files["config"] = str(cfg)
    md = out_dir / "optimize.md"
    png = plot_candidates(result.candidates, out_dir / "optimize.png", result.target,
                          f"{result.model}: candidates ({result.target})")
    md.write_text(model_markdown(result, png, out_dir))
    result.files.update({"markdown": str(md), **({"plot": str(png)} if png else {})})
    result.files["json"] = str(out_dir / "optimize.json")
    report.write_json(out_dir / "optimize.json", {"environment": environment.describe(), **result.to_dict()})
