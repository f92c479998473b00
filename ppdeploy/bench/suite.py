"""Benchmark runs as files: a model matrix or an OCR comparison written to an output folder (JSON, PNG plots,
a markdown report embedding them), and the full suite behind `ppdeploy bench --all` that also regenerates
the generated blocks of BENCHMARKS.md."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.bench import environment, examples, report
from ppdeploy.bench.detection import (
    PCB_DETECTOR,
    DetConfig,
    bench_detection,
    default_peers,
    detection_data,
    detection_markdown,
    write_detection_run,
)
from ppdeploy.bench.load import (
    LoadSettings,
    fetch_v2_inputs,
    image_request,
    run_load,
    v2_request,
)
from ppdeploy.bench.ocr import OCRConfig, bench_ocr, ocr_markdown
from ppdeploy.bench.offline import (
    CaseResult,
    MeasureSettings,
    ModelCase,
    expand_cases,
    run_cases,
)
from ppdeploy.bench.pages import load_pages, synthetic_pages
from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import PPDeployError

log = logging.getLogger("ppdeploy.bench")

CPU_BACKENDS = ("onnxruntime", "openvino", "paddle")
OCR_MODELS = ("ppocrv4-det", "ppocrv4-rec", "ppocr-cls")
OCR_V6_MODELS = ("ppocrv6-det", "ppocrv6-rec", "ppocrv6-cls")


@dataclass
class ModelRun:
    env: dict[str, Any]
    settings: MeasureSettings
    results: list[CaseResult]
    files: dict[str, str] = field(default_factory=dict)
    interleaved: bool = False

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        return {"environment": self.env, "settings": asdict(self.settings), "interleaved": self.interleaved,
                "results": [r.to_dict(with_samples) for r in self.results]}


def write_model_run(run: ModelRun, out_dir: Path, *, prefix: str = "models", with_samples: bool = True,
                    title: str = "Model benchmark") -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict(True) for r in run.results]
    files: dict[str, Path] = {"json": report.write_json(out_dir / f"{prefix}.json", run.to_dict(with_samples))}
    plots = {
        "latency_vs_batch": report.plot_latency_vs_batch(rows, out_dir / f"{prefix}_latency_vs_batch.png"),
        "throughput": report.plot_throughput(rows, out_dir / f"{prefix}_throughput.png"),
        "cdf": report.plot_cdf(report.model_cdf_series(rows), out_dir / f"{prefix}_latency_cdf.png",
                               "latency CDF at batch 1 (per call)"),
    }
    files.update({k: v for k, v in plots.items() if v is not None})
    md = [f"# {title}", "", environment.markdown(run.env), "", _settings_line(run.settings, run.interleaved), "",
          models_section(rows, out_dir, plots, out_dir)]
    files["markdown"] = out_dir / f"{prefix}.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    return files


def models_section(rows: list[dict[str, Any]], out_dir: Path, plots: dict[str, Path | None], relative_to: Path) -> str:
    parts = [report.models_markdown(rows), ""]
    if any(r["ok"] and r["backend"] == report.BASELINE_BACKEND and r["batch"] == 1 for r in rows):
        parts += ["Speed-up at batch 1 relative to Paddle Inference FP32 measured in the same run:", "",
                  report.ratio_markdown(rows), ""]
    for key, alt in (("latency_vs_batch", "latency vs batch size"), ("throughput", "throughput per backend/precision"),
                     ("cdf", "latency CDF")):
        link = report.image_link(plots.get(key), relative_to, alt)
        if link:
            parts += [link, ""]
    return "\n".join(parts)


def _settings_line(s: MeasureSettings, interleaved: bool = False) -> str:
    how = ("All engines are loaded first and the cases take turns in short slices (interleaved), so background "
           "load on the shared machine falls on all of them alike; RSS is what each engine added when it loaded (the "
           "first engine of a library also pays for importing that library). "
           if interleaved else "Cases run one after the other; RSS is the peak during the case. ")
    return (f"Each case: {s.warmup} warm-up calls, then timed calls until at least {s.min_runs} calls and "
            f"{s.min_time_s:g} s (at most {s.max_time_s:g} s); random inputs of the shape shown; engines loaded "
            f"from the cache, so build time is not included. {how}Throughput = batch × calls / summed latency; "
            "CPU ms = process CPU time per call, all threads.")


def write_ocr_run(result: dict[str, Any], env: dict[str, Any], out_dir: Path, *, prefix: str = "ocr",
                  with_samples: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(result, environment=env)
    if not with_samples:
        data["entries"] = [{k: v for k, v in e.items() if k not in ("samples_ms", "texts", "boxes")}
                           for e in result["entries"]]
    files: dict[str, Path] = {"json": report.write_json(out_dir / f"{prefix}.json", data)}
    series = {e["name"]: [x / 1e3 for x in e["samples_ms"]] for e in result["entries"] if e["ok"]}
    cdf = report.plot_cdf(series, out_dir / f"{prefix}_latency_cdf.png", "OCR: seconds per page, CDF", "s/page")
    bars = plot_ocr_bars(result["entries"], out_dir / f"{prefix}_pages_per_s.png")
    files.update({k: v for k, v in {"cdf": cdf, "bars": bars}.items() if v is not None})
    md = ["# OCR pipeline benchmark", "", environment.markdown(env), "", ocr_section(result, out_dir, cdf, bars, out_dir)]
    files["markdown"] = out_dir / f"{prefix}.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    return files


def ocr_section(result: dict[str, Any], out_dir: Path, cdf: Path | None, bars: Path | None, relative_to: Path) -> str:
    s = result["ocr_settings"]
    settings_txt = ", ".join(f"{k}={v}" for k, v in s.items())
    for gen, other in (result.get("ocr_settings_by_models") or {}).items():  # what another generation's models need
        changed = {k: v for k, v in other.items() if s.get(k) != v}
        if changed:
            settings_txt += f" (for {gen}, pipelines and peers: " + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")"
    lines = [
        f"{result.get('pages_source') or str(len(result['images'])) + ' page image(s)'}, "
        f"{result['threads'] or 'default'} threads. Every pipeline (ppdeploy and "
        f"peers) starts from the encoded bytes in memory and runs the same settings: {settings_txt}. Peers are "
        "configured to them through their config (RapidOCR's own defaults differ: det limit 736 'min', "
        "mean/std 0.5, box_thresh 0.5, unclip 1.6, dilation on), and RapidOCR's adaptive det resize in 'max' mode "
        "is pinned to the same limit, so all detect at the same resolution. Peers run as subprocesses in their own "
        "virtual environments (rapidocr-openvino needs openvino 2024.0). `lines = ref` is the share of the "
        "reference's lines read identically (multiset per page); `char acc.` is 1 - normalized edit distance "
        "against the labels (ppdeploy.tasks.ocr.metrics), when the pages are labelled.",
        "",
        ocr_markdown(result),
        "",
    ]
    for png, alt in ((bars, "pages per second"), (cdf, "seconds per page CDF")):
        link = report.image_link(png, relative_to, alt)
        if link:
            lines += [link, ""]
    return "\n".join(lines)


def plot_ocr_bars(entries: Sequence[dict[str, Any]], path: Path) -> Path | None:
    ok = [e for e in entries if e["ok"]]
    if not ok:
        return None
    import textwrap

    plt = report._plt()
    ok.sort(key=lambda e: e["pages_per_s"])
    fig, ax = plt.subplots(figsize=(8.5, 0.55 * len(ok) + 1.2))
    colors = ["tab:orange" if e["kind"] == "peer" else "tab:blue" for e in ok]
    labels = [textwrap.fill(e["name"], 30) for e in ok]
    bars = ax.barh(labels, [e["pages_per_s"] for e in ok], color=colors)
    for bar, e in zip(bars, ok):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {e['latency_ms']['mean'] / 1e3:.2f} s/page",
                va="center", fontsize=7)
    ax.set_xlabel("pages/s (blue: ppdeploy, orange: reference tools)")
    ax.tick_params(axis="y", labelsize=7)
    ax.margins(x=0.3)
    fig.tight_layout()
    fig.subplots_adjust(left=max(fig.subplotpars.left, 0.3))
    return report._save(fig, path)


# ---------------------------------------------------------------- the whole suite (`ppdeploy bench --all`)

@dataclass(frozen=True)
class OCRSearch:
    """The OCR precision search that fills the Precision part (`ppdeploy.optimize`, a layer above bench: the caller
    passes it in, as `ppdeploy bench --all` does)."""

    run: Callable[..., Any]  # optimize_ocr(out_dir, *, precisions, backends, threads, pages, settings) -> result
    section: Callable[..., str]  # ocr_optimize_section(result, pngs, out_dir, relative_to, heading=) -> markdown


@dataclass
class SuitePlan:
    """What `--all` measures. Defaults: the three OCR models on every CPU backend at batch 1 plus a rec batch
    sweep, BF16/INT8 variants where the precision layer offers them, and the OCR pipeline against the peers."""

    backends: tuple[str, ...] = CPU_BACKENDS
    # BF16 needs no calibration, so it is measured per model here (through its accuracy gate on synthetic data);
    # INT8 needs calibration from the task's own inputs and is judged on the pipeline in the Precision block.
    precision_cases: tuple[tuple[str, str, str], ...] = (
        ("ppocrv4-det", "openvino", "bf16"), ("ppocrv4-rec", "openvino", "bf16"), ("ppocr-cls", "openvino", "bf16"),
    )
    rec_batches: tuple[int, ...] = (1, 2, 4, 8)
    threads: int | None = None
    model_settings: MeasureSettings = MeasureSettings(warmup=3, min_runs=10, min_time_s=2.0, max_time_s=20.0)
    ocr_settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=6, min_time_s=5.0, max_time_s=60.0)
    ocr_configs: tuple[tuple[Any, Any], ...] = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("paddle", "fp32"),
                                                ("auto", "fp32"))
    # Per-stage pipelines (OCRConfig.parse): BF16 everywhere (det with its FP32 encoder, rec with its FP32 guard),
    # then FP32 det, and BF16 rec without its guard.
    ocr_pipelines: tuple[str, ...] = ("det=openvino:bf16,cls=openvino:bf16,rec=openvino:bf16",
                                      "det=openvino,cls=openvino:bf16,rec=openvino:bf16",
                                      "det=openvino,cls=openvino:bf16,rec=openvino:bf16,guard=off",
                                      # PP-OCRv6 (ONNX from rapidocr 3.10; no Paddle Inference) against its peers
                                      "det=onnxruntime,cls=onnxruntime,rec=onnxruntime,models=ppocrv6",
                                      "det=openvino,cls=openvino,rec=openvino,models=ppocrv6",
                                      "det=openvino:bf16,cls=openvino:bf16,rec=openvino:bf16,models=ppocrv6")
    peers: tuple[str, ...] = ("rapidocr-paddle", "rapidocr-onnxruntime", "rapidocr-openvino",
                              "rapidocr-3.10-onnxruntime", "rapidocr-3.10-openvino")
    pages: int = 4
    models: bool = True
    ocr: bool = True
    # OCR precision search (ppdeploy optimize ocr): per-stage BF16/INT8 judged on the whole pipeline
    precision: bool = True
    precision_backends: tuple[str, ...] = ("onnxruntime", "openvino")
    precision_precisions: tuple[str, ...] = ("fp32", "bf16", "int8")
    precision_pages: int = 3
    precision_settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=3, min_time_s=1.0, max_time_s=30.0)
    # Detection (ppdeploy.bench.detection): each detector end to end on labelled images, mAP next to every row,
    # against its peers (rapid_layout for layout-cdla, Paddle Inference for Paddle models); the PCB detector's FP32
    # against its BF16 and INT8 on the same backends. PP-YOLOE+-s is not here: it needs paddledet (see README).
    detection: bool = True
    detection_models: tuple[str, ...] = ("layout-cdla", str(PCB_DETECTOR))
    detection_configs: tuple[tuple[str, str], ...] = (
        ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "int8"),
        ("openvino", "int8"))
    detection_images: int = 20
    detection_settings: MeasureSettings = MeasureSettings(warmup=2, min_runs=40, min_time_s=5.0, max_time_s=60.0)
    # The brief's first example (ppdeploy.bench.examples.resnet50: paddle.vision resnet50, random init, jit.save)
    example_models: bool = True
    # Serving: `ppdeploy serve` in a child process, open-loop load per offered rate
    serving: bool = True
    serving_duration_s: float = 10.0
    serving_warmup_s: float = 3.0  # unrecorded load at the lowest rate before the sweep
    serving_rec_rates: tuple[float, ...] = (10.0, 20.0, 40.0, 80.0)
    serving_ocr_rates: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

    def model_cases(self) -> list[ModelCase]:
        t = [self.threads]
        cases = expand_cases(OCR_MODELS, self.backends, ["fp32"], [1], t)
        cases += [c for c in expand_cases(["ppocrv4-rec"], self.backends, ["fp32"], self.rec_batches, t) if c.batch != 1]
        cases += [ModelCase(m, b, p, 1, self.threads) for m, b, p in self.precision_cases]
        if self.example_models:
            cases += expand_cases([str(examples.resnet50())], self.backends, ["fp32"], [1], t)
        cases += expand_cases(OCR_V6_MODELS, self.precision_backends, ["fp32"], [1], t)  # ONNX: no Paddle Inference
        return cases


def run_suite(out_dir: Path, markdown_path: Path, plan: SuitePlan, *, data_dir: Path | None = None,
              progress: Callable[[str, int], Callable[[], None]] | None = None,
              ocr_search: OCRSearch | None = None) -> dict[str, Path]:
    """Run the plan, write results under out_dir, and refresh the generated blocks of markdown_path. The Precision
    part needs `ocr_search`; without it that block says it was not measured."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.describe()
    files: dict[str, Path] = {}
    blocks: dict[str, str] = {"environment": environment.markdown(env)}
    md_dir = Path(markdown_path).resolve().parent
    if plan.models:
        cases = plan.model_cases()
        tick = progress("models", len(cases)) if progress else None
        results = run_cases(cases, plan.model_settings, on_case=(lambda c, r: tick()) if tick else None,
                            interleave=True)
        run = ModelRun(env, plan.model_settings, results, interleaved=True)
        mfiles = write_model_run(run, out_dir, with_samples=False, title="Models")
        files.update({f"models_{k}": v for k, v in mfiles.items()})
        rows = [r.to_dict(True) for r in results]
        plots = {"latency_vs_batch": mfiles.get("latency_vs_batch"), "throughput": mfiles.get("throughput"),
                 "cdf": mfiles.get("cdf")}
        blocks["models"] = (_settings_line(plan.model_settings, interleaved=True) + "\n\n"
                            + models_section(rows, out_dir, plots, md_dir))
    md_path = Path(markdown_path)
    update_benchmarks_md(md_path, blocks, env)  # each part is saved as soon as it is measured
    if plan.detection:
        blocks["detection"] = run_detection(plan, out_dir, md_dir, env, files, progress)
        update_benchmarks_md(md_path, blocks, env)
    optimized = None
    if plan.precision:
        try:
            optimized = _run_precision(plan, out_dir, md_dir, blocks, files, progress, ocr_search)
        except PPDeployError as exc:  # one part failing must not cost the others
            log.error("OCR precision search failed: %s", exc)
            blocks["precision"] = f"Not measured in this run: {exc}"
        update_benchmarks_md(md_path, blocks, env)
    if plan.ocr:
        pages = load_pages(data_dir) if data_dir is not None else synthetic_pages(_pages_dir(), plan.pages)
        configs = [OCRConfig(b, p) for b, p in plan.ocr_configs] + [OCRConfig.parse(s) for s in plan.ocr_pipelines]
        if optimized is not None and optimized.chosen():
            chosen = optimized.chosen()
            configs.append(OCRConfig({s: b for s, (b, _) in chosen.items()}, {s: p for s, (_, p) in chosen.items()},
                                     calib=optimized.stage_calibration,
                                     rec_guard="fp32" if optimized.rec_guarded else None,
                                     keep_fp32=optimized.chosen_keep_fp32() or None,
                                     name="ppdeploy optimized (" + ", ".join(f"{s} {label}" for s, label in
                                                                              optimized.winners.items()) + ")"))
        tick = progress("OCR pipelines", len(configs) + len(plan.peers)) if progress else None
        result = bench_ocr(pages.images, configs, labels=pages.labels, peers=plan.peers, threads=plan.threads,
                           settings=plan.ocr_settings, on_entry=(lambda e: tick()) if tick else None)
        result["pages_source"] = pages.source
        ofiles = write_ocr_run(result, env, out_dir, with_samples=False)
        files.update({f"ocr_{k}": v for k, v in ofiles.items()})
        blocks["ocr"] = ocr_section(result, out_dir, ofiles.get("cdf"), ofiles.get("bars"), md_dir)
        update_benchmarks_md(md_path, blocks, env)
    if plan.serving:
        tick = progress("serving load tests", 2) if progress else None
        blocks["serving"] = run_serving(plan, out_dir, md_dir, env, files, tick)
    update_benchmarks_md(md_path, blocks, env)
    files["benchmarks_md"] = Path(markdown_path)
    return files


def run_detection(plan: SuitePlan, out_dir: Path, md_dir: Path, env: dict[str, Any], files: dict[str, Path],
                  progress=None) -> str:
    """One ppdeploy.bench.detection run per detector of the plan; the markdown of the detection block."""
    tick = progress("detectors", len(plan.detection_models)) if progress else None
    configs = [DetConfig(b, p) for b, p in plan.detection_configs]
    parts = []
    for model in plan.detection_models:
        name = Path(model).name
        try:
            data = detection_data(model, count=plan.detection_images)
            result = bench_detection(model, data, configs, peers=default_peers(model), threads=plan.threads,
                                     settings=plan.detection_settings)
            dfiles = write_detection_run(result, env, out_dir, prefix=f"detection_{name}", with_samples=False)
            files.update({f"detection_{name}_{k}": v for k, v in dfiles.items()})
            parts += [f"#### {name}", "", f"{result['images']} labelled images ({_rel(data, md_dir)}); "
                      f"{result['timing_note']}.", "", detection_markdown(result), ""]
            link = report.image_link(dfiles.get("cdf"), md_dir, f"{name}: ms per image")
            if link:
                parts += [link, ""]
        except PPDeployError as exc:
            parts += [f"#### {name}", "", f"Not measured: {exc}", ""]
        if tick:
            tick()
    return "\n".join(parts)


def _run_precision(plan: SuitePlan, out_dir: Path, md_dir: Path, blocks: dict[str, str], files: dict[str, Path],
                   progress, search: OCRSearch | None) -> Any:
    """`optimize ocr` over the plan's backends x precisions; fills the precision block, returns the result."""
    if search is None:
        raise PPDeployError("no OCR precision search was given (run_suite's ocr_search)")
    tick = progress("OCR precision search", 1) if progress else None
    opt_dir = out_dir / "optimize-ocr"
    res = search.run(opt_dir, precisions=plan.precision_precisions, backends=plan.precision_backends,
                     threads=plan.threads, pages=plan.precision_pages, settings=plan.precision_settings)
    pngs = {s: Path(res.files[f"plot_{s}"]) for s in res.stages if f"plot_{s}" in res.files}
    blocks["precision"] = (
        "`ppdeploy optimize ocr` over " + ", ".join(plan.precision_backends) + " × "
        + ", ".join(plan.precision_precisions) + f" (the model repository it wrote is in `{_rel(opt_dir, md_dir)}`; "
        "the chosen combination is also timed against the reference tools in the OCR pipeline table).\n\n"
        + search.section(res, pngs, opt_dir, md_dir, heading="####"))
    files["optimize_ocr"] = opt_dir / "optimize.md"
    if tick:
        tick()
    return res


def run_serving(plan: SuitePlan, out_dir: Path, md_dir: Path, env: dict[str, Any], files: dict[str, Path],
                tick: Callable[[], None] | None = None) -> str:
    """Two open-loop sweeps against `ppdeploy serve`: the rec model over KServe v2 (dynamic batching) and the
    whole OCR pipeline over /v1/ocr. Each server runs as a child process on a free loopback port."""
    settings = LoadSettings(timeout_s=60, drain_s=60)
    parts: list[str] = []
    runs = [
        ("serving_rec", ["ppocrv4-rec", "--max-batch-size", "8", "--max-queue-delay-ms", "2"] + _threads(plan),
         "v2", plan.serving_rec_rates, "PP-OCRv4 rec over KServe v2 (binary tensors, one 3x48x320 line per request; "
         "dynamic batching up to 8, 2 ms queue delay)"),
        ("serving_ocr", ["ocr"] + _threads(plan), "ocr", plan.serving_ocr_rates,
         "whole OCR pipeline over /v1/ocr (one synthetic document page per request)"),
    ]
    for prefix, serve_args, kind, rates, what in runs:
        try:
            with ServerProcess(serve_args, log_path=out_dir / f"{prefix}_server.log") as srv:
                if kind == "v2":
                    inputs = fetch_v2_inputs(srv.url, "ppocrv4-rec", 1, shape_overrides={"x": (3, 48, 320)})
                    template = v2_request("ppocrv4-rec", inputs)
                else:
                    page = synthetic_pages(_pages_dir(), 1).images[0]
                    template = image_request("ocr", page.read_bytes(), page.name)
                # Warm-up, not recorded: first connections, first batch shapes, lazy allocations in the engines.
                run_load(srv.url, template, [min(rates)], plan.serving_warmup_s, "constant", settings)
                results = run_load(srv.url, template, rates, plan.serving_duration_s, "poisson", settings)
            meta = {"target": f"ppdeploy serve {' '.join(serve_args)}", "request": template.describe,
                    "distribution": "poisson", "duration_s": plan.serving_duration_s, "rates": list(rates),
                    "warmup_note": f" after {plan.serving_warmup_s:g} s of unrecorded warm-up at {min(rates):g}/s"}
            lf = write_load_run(results, meta, env, out_dir, prefix=prefix, with_samples=False)
            files.update({f"{prefix}_{k}": v for k, v in lf.items()})
            parts += [f"#### {what}", "", load_section([r.to_dict(False) for r in results], meta,
                                                       lf.get("latency_vs_load"), md_dir)]
        except PPDeployError as exc:
            parts += [f"#### {what}", "", f"Not measured: {exc}", ""]
        if tick:
            tick()
    return "\n".join(parts)


def _threads(plan: SuitePlan) -> list[str]:
    return ["--threads", str(plan.threads)] if plan.threads else []


def _rel(path: Path, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
    except ValueError:
        return str(path)


def _pages_dir() -> Path:
    return default_root() / "bench-pages"


def update_benchmarks_md(path: Path, blocks: dict[str, str], env: dict[str, Any] | None = None) -> None:
    """Replace (or create) the generated blocks; hand-written sections around them stay as they are.

    With `env`, each measured block starts with its own date and load, since blocks may come from different runs.
    """
    doc = path.read_text() if path.is_file() else SKELETON
    for name, body in blocks.items():
        if env is not None and name != "environment":
            body = (f"_Measured {env.get('date')} on {env.get('cpu_model')} ({env.get('usable_cores')} cores), "
                    f"load average at start {env.get('load_average_at_start')}._\n\n" + body)
        doc = report.replace_block(doc, name, body)
    path.write_text(doc)


def _block(name: str) -> str:
    return report.BEGIN.format(name=name) + "\n(not measured yet)\n" + report.END.format(name=name)


SKELETON = f"""# ppdeploy benchmarks

All numbers come from one command, `ppdeploy bench --all --out bench/`, which rewrites only the blocks between
`ppdeploy-bench:*` markers (JSON and plots go to `bench/`). Hand-written sections and numbers pasted from
other machines (GPU, serving, Ray) live outside the markers and survive a regeneration.

## How to read these numbers

- The CPU numbers come from a 2-core cloud VM shared with other jobs: absolute times move by 2x or more from
  one minute to the next (the load average at the start of the run is recorded below). Compare only ratios
  measured side by side in the same table; each table was measured in one run, one case after another.
- Model rows: random inputs of the shape shown, engines loaded from the cache (build time excluded), warm-up
  calls first, then timed calls until both a minimum count and a minimum time are reached.
- OCR rows: ppdeploy and the reference tools (RapidOCR on Paddle Inference, ONNX Runtime and OpenVINO) read
  the same page images with the same det/cls/rec settings, from the encoded bytes, decode included.
- Accuracy sits next to speed everywhere: the agreement with the reference pipeline's lines, and character
  accuracy against the page labels. A faster configuration that reads different text is not a win.
- JSON with every number (and the machine description) is in `bench/`; plots are embedded below.

## Machine

{_block("environment")}

## Models

{_block("models")}

## OCR pipeline

{_block("ocr")}

## Precision

{_block("precision")}

## Detection

{_block("detection")}

## Serving

{_block("serving")}

(Further serving measurements — e.g. with the load generator on another machine — go below this line.)

## GPU

(GPU numbers are measured on the lent H100 machine, not by `--all`: the full results and raw files are in
[`bench/gpu/README.md`](bench/gpu/README.md); a summary is pasted here.)

## Ray

(Ray Serve replica scaling numbers are pasted here; they are not regenerated by `--all`.)
"""


# ---------------------------------------------------------------- load tests

def write_load_run(results: Sequence[Any], meta: dict[str, Any], env: dict[str, Any], out_dir: Path, *,
                   prefix: str = "loadtest", with_samples: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict(with_samples) for r in results]
    files: dict[str, Path] = {"json": report.write_json(out_dir / f"{prefix}.json",
                                                       {"environment": env, "run": meta, "rates": rows})}
    plot = report.plot_latency_vs_load(rows, out_dir / f"{prefix}_latency_vs_load.png",
                                       f"{meta.get('target', '')}: latency vs offered load ({meta.get('distribution')})")
    cdf = report.plot_cdf({f"{r.offered_rate:g}/s": r.latencies_ms for r in results},
                          out_dir / f"{prefix}_latency_cdf.png", "latency CDF per offered rate")
    files.update({k: v for k, v in {"latency_vs_load": plot, "cdf": cdf}.items() if v is not None})
    files["markdown"] = out_dir / f"{prefix}.md"
    files["markdown"].write_text("\n".join(["# Load test", "", environment.markdown(env), "",
                                            load_section(rows, meta, plot, out_dir)]) + "\n")
    return files


def load_section(rows: list[dict[str, Any]], meta: dict[str, Any], plot: Path | None, relative_to: Path) -> str:
    lines = [
        f"Target {meta.get('target')} ({meta.get('request')}); open-loop {meta.get('distribution')} arrivals, "
        f"{meta.get('duration_s')} s per offered rate{meta.get('warmup_note', '')}. Latency is measured from each request's scheduled send "
        "time (so a backlog in the client counts too); `send lag` shows how far the generator fell behind. "
        "The generator shares the CPU with the server when both run on this machine.",
        "",
        report.load_markdown(rows),
        "",
    ]
    link = report.image_link(plot, relative_to, "latency vs offered load")
    if link:
        lines += [link, ""]
    return "\n".join(lines)
