"""`ppdeploy quickstart`: the whole foundation on the bundled real models, offline, in about a minute.

For PP-OCRv4 det/rec, the direction classifier and the demo classifier (trained and exported with Paddle 3 on
first use): convert to ONNX, build an engine on every CPU backend, verify each against Paddle Inference, and time
it. A second run is served from the engine cache (the "cache" column says so).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

from ppdeploy.backends import get_backend
from ppdeploy.demo import shapes_classifier
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.verify import Tolerance, compare_outputs, generate_inputs
from ppdeploy.source import zoo
from ppdeploy.tasks.ocr.builder import OCR
from ppdeploy.tasks.ocr.evaluate import evaluate_ocr
from ppdeploy.tasks.ocr.synth import SynthOptions, generate

CPU_BACKENDS = ("openvino", "onnxruntime", "paddle")
# Paddle Inference runs the original program: the numerical reference every engine is verified against.
REFERENCE_BACKEND = "paddle"


@dataclass
class Row:
    model: str
    backend: str
    cache: str
    prepare_s: float
    max_abs: float
    p50_ms: float
    verdict: str


def _latency_ms(runner, feeds, runs: int) -> float:
    runner.infer(feeds)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def models() -> list[tuple[str, str, tuple[int, ...]]]:
    items = [(name, name, m.example_shape) for name, m in zoo.MODELS.items()]
    demo_dir = shapes_classifier.export(shapes_classifier.default_dir())
    items.append(("shapes-cls (PIR)", str(demo_dir), (1, 3, shapes_classifier.SIZE, shapes_classifier.SIZE)))
    return items


def run(*, backends=CPU_BACKENDS, runs: int = 10, threads: int | None = None, progress=None) -> list[Row]:
    rows: list[Row] = []
    usable = [b for b in backends if get_backend(b).unavailable_reason() is None]
    tol = Tolerance()
    for label, model, shape in models():
        if progress:
            progress(f"{label}: reference (Paddle Inference)")
        reference = load_model(model, backend=REFERENCE_BACKEND, threads=threads)
        feeds = generate_inputs(reference.runner.io, seed=0, shapes={reference.runner.io.inputs[0].name: shape})
        ref_out = reference.runner.infer(feeds)
        for backend in usable:
            if progress:
                progress(f"{label}: {backend}")
            start = time.perf_counter()
            dep = reference if backend == REFERENCE_BACKEND else load_model(model, backend=backend, threads=threads)
            prepare_s = time.perf_counter() - start if backend != REFERENCE_BACKEND else sum(reference.timings.values())
            out = dep.runner.infer(feeds)
            cmp = compare_outputs(ref_out, out, tol, backend)
            max_abs = max((o.max_abs for o in cmp.outputs), default=float("nan"))
            rows.append(Row(label, backend, "hit" if dep.cache_hit else "built", prepare_s, max_abs,
                            _latency_ms(dep.runner, feeds, runs), "PASS" if cmp.passed else "FAIL"))
            if dep is not reference:
                dep.close()
        reference.close()
    return rows


@dataclass
class OCRDemo:
    pages: int
    lines: int
    char_accuracy: float
    det_recall: float
    pages_per_s: float
    backends: dict[str, str]


def ocr_demo(pages: int = 2, threads: int | None = None) -> OCRDemo:
    """The whole PP-OCR pipeline on freshly rendered labelled pages (fixed seed), scored against their labels."""
    with tempfile.TemporaryDirectory(prefix="ppdeploy-quickstart-") as tmp:
        labelled = generate(tmp, SynthOptions(pages=pages, seed=2026))
        ocr = OCR(backend="auto", threads=threads)
        ev = evaluate_ocr(ocr, tmp)
        return OCRDemo(pages, sum(len(item.lines) for item in labelled), ev.metrics.char_accuracy,
                       ev.metrics.det_recall, ev.run.pages_per_s, ocr.backends)
