"""`ppdeploy optimize`: try every backend x precision that can run here, keep those that pass the accuracy gate,
benchmark them, and write the winner as a ready model-repository folder plus the full comparison.

For one model the gate is two-fold: non-FP32 precisions pass the precision layer's own gate at build time
(`load_model(..., max_loss=...)`, an AccuracyError otherwise), and every candidate's outputs are compared with
the FP32 reference (Paddle Inference when the model is a Paddle model) on the same inputs — FP32 candidates
must match to `verify`'s tolerances, lower precisions are reported with their agreement numbers.

For the OCR task the stage inputs are the task's own: OCR runs once over calibration pages with recording
runners, so det/cls/rec see exactly the tensors the pipeline produces. Each stage's candidates are then
judged where it matters: the whole pipeline with that stage swapped in must read the evaluation pages
(disjoint from the calibration pages) the same as the FP32 reference pipeline on at least `1 - max_loss` of
the lines. Speed is measured per stage on those recorded tensors (time per page), the passing candidates of a
stage taking turns so a drifting background load on a shared machine does not pick the winner.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ppdeploy.bench import environment, report
from ppdeploy.bench.offline import MeasureSettings, PeakRSS, measure
from ppdeploy.bench.stats import summarize
from ppdeploy.core.errors import AccuracyError, InputError, PPDeployError

log = logging.getLogger("ppdeploy.optimize")

TARGETS = ("latency", "throughput")
ALL_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class Candidate:
    backend: str
    precision: str
    status: str = "pending"  # winner | passed | failed-accuracy | failed-build | skipped
    reason: str | None = None
    accuracy: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    throughput: float | None = None
    best_batch: int | None = None
    score: float | None = None  # what the target ranks by (ms: lower is better; items/s: higher is better)
    load_s: float | None = None
    cache_hit: bool | None = None
    peak_rss_mib: float | None = None
    guard: bool = False  # OCR rec only: an FP32 copy re-reads the lines this one is unsure of (tasks/ocr/guard.py)
    keep_fp32: tuple[str, ...] = ()  # regions kept in FP32 (ppdeploy.graph.regions), e.g. a BF16 det's encoder

    @property
    def label(self) -> str:
        return (f"{self.backend} {self.precision}" + "".join(f" + fp32 {r}" for r in self.keep_fp32)
                + (" + fp32 guard" if self.guard else ""))

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "winner")


def candidate_matrix(precisions: Sequence[str] | None, *, has_calib: bool,
                     backends: Sequence[str] | None = None) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates to try, candidates skipped with the reason) for the backends available on this machine."""
    from ppdeploy.core import device
    from ppdeploy.backends import REGISTRY, get_backend

    precisions = list(precisions or ALL_PRECISIONS)
    bad = [p for p in precisions if p not in ALL_PRECISIONS]
    if bad:
        raise InputError(f"unknown precision(s) {bad}", hint=f"choose from {', '.join(ALL_PRECISIONS)}")
    todo, skipped = [], []
    for name in backends or list(REGISTRY):
        try:
            be = get_backend(name)
            reason = be.unavailable_reason()
        except PPDeployError as exc:
            reason = str(exc).splitlines()[0]
            be = None
        for p in precisions:
            cand = Candidate(name, p)
            why = reason
            if why is None:
                if p == "fp16" and be.device != "gpu":
                    why = "FP16 pays off on GPUs only; CPU kernels emulate it"
                elif p == "bf16" and (name != "openvino" or not device.cpu_supports_bf16()):
                    why = "BF16 runs through OpenVINO on CPUs with avx512_bf16/AMX" if name != "openvino" else \
                        "this CPU has no avx512_bf16/AMX"
                elif p == "int8" and not has_calib:
                    why = "INT8 needs calibration data (--calib DIR)"
                elif p != "fp32" and be.consumes == "paddle":
                    why = "Paddle Inference runs the original FP32 program"
            if why:
                cand.status, cand.reason = "skipped", why
                skipped.append(cand)
            else:
                todo.append(cand)
    return todo, skipped


def _failure(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for a candidate whose load failed; load_model wraps a failed precision gate in BuildError."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(x, AccuracyError) for x in chain) or "accuracy gate" in str(exc):
        return "failed-accuracy", _err(exc)
    return "failed-build", _err(exc)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"


def pick_winner(cands: Sequence[Candidate], target: str) -> Candidate | None:
    ok = [c for c in cands if c.passed and c.score is not None]
    if not ok:
        return None
    best = min(ok, key=lambda c: c.score) if target == "latency" else max(ok, key=lambda c: c.score)
    for c in cands:
        if c.status == "winner":
            c.status = "passed"
    best.status = "winner"
    return best


# ------------------------------------------------------------------------------------------ one model

@dataclass
class ModelOptimizeResult:
    model: str
    target: str
    reference: str
    candidates: list[Candidate]
    winner: Candidate | None
    inputs: dict[str, list[int]]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "reference": self.reference, "inputs": self.inputs,
                "winner": self.winner.label if self.winner else None,
                "candidates": [asdict(c) for c in self.candidates], "files": self.files}


def optimize_model(model: str, out_dir: Path, *, target: str = "latency", calib: str | Path | None = None,
                   max_loss: float | None = None, precisions: Sequence[str] | None = None,
                   backends: Sequence[str] | None = None, threads: int | None = None,
                   batch_sizes: Sequence[int] = (1, 4, 8), settings: MeasureSettings = MeasureSettings(min_time_s=1.0),
                   name: str | None = None, progress: Callable[[str, int], Callable[[], None]] | None = None
                   ) -> ModelOptimizeResult:
    from ppdeploy.deploy.load import load_model
    from ppdeploy.deploy.verify import Tolerance, compare_outputs

    if target not in TARGETS:
        raise InputError(f"unknown target '{target}'", hint="latency or throughput")
    todo, skipped = candidate_matrix(precisions, has_calib=calib is not None, backends=backends)
    if not todo:
        raise PPDeployError("no backend/precision can run here", hint="`ppdeploy doctor` shows what each backend needs")
    tick = progress("candidates", len(todo)) if progress else None

    # Reference: Paddle Inference FP32 for Paddle models (the numerical reference), else the first FP32 runner.
    ref_backend = "paddle" if any(c.backend == "paddle" for c in todo) else next(c.backend for c in todo if c.precision == "fp32")
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
            cand.status, cand.reason = _failure(exc)
        else:
            cand.load_s = round(time.perf_counter() - start, 2)
            cand.cache_hit = dep.cache_hit
            try:
                _judge_model(cand, dep, feeds, ref_outputs, Tolerance(), compare_outputs)
                if cand.status == "passed":
                    _bench_model(cand, dep.runner, feeds[0], target, batch_sizes if batch_dynamic else (1,), settings)
            except Exception as exc:
                cand.status, cand.reason = "failed-build", _err(exc)
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
    from ppdeploy.source import zoo
    from ppdeploy.deploy.verify import generate_inputs

    if calib is not None:
        from ppdeploy.precision.build import as_calibration

        cs = as_calibration(calib, runner.input_names)
        feeds = [dict(f) for f in cs][:8]
        if feeds:
            return feeds
    shapes = {runner.io.inputs[0].name: zoo.MODELS[model].example_shape} if model in zoo.MODELS else None
    return [generate_inputs(runner.io, seed=s, shapes=shapes) for s in range(3)]


def _judge_model(cand: Candidate, dep, feeds, ref_outputs, tol, compare_outputs) -> None:
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


def write_model_config(repo: Path, source: str, name: str | None, backend: str, precision: str, threads: int | None,
                       max_batch_size: int = 8, **extra: Any) -> Path:
    """<repo>/<name>/config.yaml in the serving schema (ppdeploy.repository.config), source made absolute when a path."""
    from ppdeploy.source import zoo
    from ppdeploy.repository.config import ModelConfig

    src = source if source in zoo.MODELS else str(Path(source).resolve())
    cfg = ModelConfig.for_source(src, name=name, backends=[backend], precision=precision, threads=threads,
                                 max_batch_size=max_batch_size, **extra)
    return cfg.write(repo)


def model_markdown(result: ModelOptimizeResult, png: Path | None, out_dir: Path) -> str:
    rows = []
    tried = [c for c in result.candidates if c.status != "skipped"]
    for c in sorted(tried, key=_rank_key(result.target)):
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


def _rank_key(target: str):
    order = {"winner": 0, "passed": 1, "failed-accuracy": 2, "failed-build": 3, "skipped": 4, "pending": 5}

    def key(c: Candidate):
        s = c.score if c.score is not None else float("inf")
        return (order.get(c.status, 9), s if target == "latency" else -s if c.score is not None else float("inf"))

    return key


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


# ------------------------------------------------------------------------------------------ OCR task

class RecordingRunner:
    """Runner wrapper that keeps every feed it is given (the task's own preprocessed stage inputs)."""

    def __init__(self, runner, limit: int = 400):
        self.runner = runner
        self.feeds: list[dict[str, np.ndarray]] = []
        self.limit = limit
        self.backend = getattr(runner, "backend", "?")

    @property
    def io(self):
        return self.runner.io

    @property
    def last_timings(self):
        return self.runner.last_timings

    def infer(self, feeds):
        if len(self.feeds) < self.limit:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.runner.infer(feeds)


class SwappableRunner:
    """Delegates to whichever runner is set; lets one OCR pipeline try each stage candidate in place."""

    def __init__(self, runner):
        self.runner = runner

    @property
    def io(self):
        return self.runner.io

    @property
    def backend(self):
        return getattr(self.runner, "backend", "?")

    @property
    def last_timings(self):
        return self.runner.last_timings

    def infer(self, feeds):
        return self.runner.infer(feeds)


@dataclass
class OCROptimizeResult:
    target: str
    reference: str
    max_line_loss: float
    stages: dict[str, list[Candidate]]
    winners: dict[str, str]
    combined: dict[str, Any]
    calibration: dict[str, Any]
    evaluation: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    stage_calibration: dict[str, Any] = field(default_factory=dict, repr=False)  # CalibrationSet per stage

    @property
    def rec_guarded(self) -> bool:
        """Whether the chosen rec runs with its FP32 guard."""
        return any(c.status == "winner" and c.guard for c in self.stages.get("rec", []))

    def chosen(self) -> dict[str, tuple[str, str]] | None:
        """Stage -> (backend, precision) of the combination that passed, or None."""
        if not self.combined.get("passed"):
            return None
        out = {}
        for stage, cands in self.stages.items():
            w = next(c for c in cands if c.status == "winner")
            out[stage] = (w.backend, w.precision)
        return out

    def chosen_keep_fp32(self) -> dict[str, list[str]]:
        """Stage -> regions the chosen candidate keeps in FP32 (OCR's keep_fp32), for the stages that keep any."""
        out = {}
        for stage, cands in self.stages.items():
            w = next((c for c in cands if c.status == "winner"), None)
            if w is not None and w.keep_fp32:
                out[stage] = list(w.keep_fp32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"task": "ocr", "target": self.target, "reference": self.reference, "max_line_loss": self.max_line_loss,
                "winners": self.winners, "combined": self.combined, "calibration": self.calibration,
                "evaluation": self.evaluation,
                "stages": {s: [asdict(c) for c in cs] for s, cs in self.stages.items()}, "files": self.files}


def optimize_ocr(out_dir: Path, *, calib: str | Path | None = None, data: str | Path | None = None,
                 max_loss: float | None = None, target: str = "latency", precisions: Sequence[str] | None = None,
                 backends: Sequence[str] | None = None, threads: int | None = None, pages: int = 3,
                 settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=3, min_time_s=0.5, max_time_s=20.0),
                 progress: Callable[[str, int], Callable[[], None]] | None = None) -> OCROptimizeResult:
    """Per-stage search for the OCR pipeline; see the module docstring."""
    from ppdeploy.bench.ocr import line_agreement
    from ppdeploy.bench.pages import load_pages, synthetic_pages
    from ppdeploy.core.cache import default_root
    from ppdeploy.deploy.load import load_model
    from ppdeploy.precision.calibration import CalibrationSet
    from ppdeploy.tasks.ocr.pipeline import DEFAULT_MODELS, GUARDED_PRECISIONS, OCR, keep_fp32_for

    if target not in TARGETS:
        raise InputError(f"unknown target '{target}'", hint="latency or throughput")
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

    ref_backend = "paddle"
    refs = {s: load_model(m, backend=ref_backend, precision="fp32", threads=threads) for s, m in DEFAULT_MODELS.items()}
    recorders = {s: RecordingRunner(d.runner) for s, d in refs.items()}
    rec_ocr = OCR.from_runners(recorders["det"], recorders["rec"], recorders["cls"])
    for p in calib_pages:
        rec_ocr.predict(p.read_bytes())
    stage_calib = {s: CalibrationSet.from_arrays(r.feeds, source=f"{len(calib_pages)} calibration pages ({s} inputs)")
                   for s, r in recorders.items()}
    # The evaluation pass with the reference: its texts are the target, its stage feeds are the speed workload.
    swaps = {s: SwappableRunner(refs[s].runner) for s in refs}
    eval_rec = {s: RecordingRunner(swaps[s]) for s in swaps}
    ocr = OCR.from_runners(eval_rec["det"], eval_rec["rec"], eval_rec["cls"])
    ref_lines = [[(l.text, l.box) for l in ocr.predict(b).lines] for b in eval_bytes]
    ref_texts = [[t for t, _ in page] for page in ref_lines]
    workload = {s: r.feeds for s, r in eval_rec.items()}
    ocr = OCR.from_runners(swaps["det"], swaps["rec"], swaps["cls"])

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
                cand.status, cand.reason = _failure(exc)
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
                    cand.status, cand.reason = "failed-build", _err(exc)
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
    from ppdeploy.tasks.ocr.metrics import score_dataset

    gts = [[(line.text, line.box) for line in item.lines] for item in labels]
    return round(score_dataset(list(lines), gts).char_accuracy, 5)


class _GuardedDeployment:
    """A reduced-precision rec deployment and its FP32 guard, as one stage candidate."""

    def __init__(self, fast, guard):
        from ppdeploy.tasks.ocr.guard import GuardedRecRunner

        self.fast, self.guard = fast, guard
        self.runner = GuardedRecRunner(fast.runner, guard.runner)
        self.cache_hit = fast.cache_hit and guard.cache_hit

    def close(self) -> None:
        self.fast.close()
        self.guard.close()


def _load_stage(model: str, cand: Candidate, threads: int | None, calib, max_loss: float | None):
    from ppdeploy.deploy.load import load_model

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
    from ppdeploy.tasks.ocr.pipeline import DEFAULT_MODELS

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
    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.tasks.ocr.pipeline import DEFAULT_MODELS

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
        ocr_cfg = ModelConfig(name="ocr", task="ocr", pipeline=pipeline)
        result.files["config_ocr"] = str(ocr_cfg.write(out_dir))
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
                 c.reason or ""] for c in sorted(cands, key=_rank_key("latency")) if c.status != "skipped"]
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
