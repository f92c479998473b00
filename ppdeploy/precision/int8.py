"""INT8 graphs: ONNX Runtime's static quantization in QDQ form (explicit QuantizeLinear/DequantizeLinear, so
TensorRT, OpenVINO and ONNX Runtime all run it as INT8), per-channel weights, calibration cached by data hash,
and an accuracy-driven exclusion search.

Steps:
1. `prepare`: ORT's `quant_pre_process` (shape inference + graph optimization: folds BatchNorm into Conv,
   constant folding) so quantization sees the graph a backend runs; nodes get stable names.
2. `calibrate`: activation ranges of every tensor the quantizer may need, by min-max, entropy or
   percentile, over the calibration part of the data, in chunks (bounded memory) with a progress bar.
   Cached in the engine cache under (prepared graph, data hash, method): a second build reads the ranges.
3. `quantize`: ORT's QDQ quantizer with the cached ranges, per-channel INT8 weights, UINT8 activations.
4. `search`: when the gate fails, rank node groups by how much quantizing each group *alone* costs
   (on the cheap output gate over held-out samples), then exclude the costliest groups — the smallest
   number that makes the real gate (which may be a whole-pipeline task metric) pass, by binary search.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.core.cache import EngineCache, sha256_file
from ppdeploy.core.errors import ConversionError, InputError
from ppdeploy.graph import model as graph
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import Gate, GateReport

log = logging.getLogger("ppdeploy.precision.build")

METHODS = ("minmax", "entropy", "percentile")
LIBRARIES = ("onnxruntime",)  # distributions whose version enters the precision cache key
# The compute-heavy ops: where INT8 pays. Element-wise ops stay FP32 between them, which costs a little
# speed on ORT but keeps activations like HardSwish and residual sums exact.
QUANT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CALIBRATION_CHUNK = 8  # samples per collect_data call: bounds the intermediate tensors held in memory
# ORT's histogram calibrators stack one call's tensors into one array, so samples of different shapes
# (text lines of different widths, pages of different sizes) must go one per call.
HISTOGRAM_CHUNK = 1
SENSITIVITY_GROUPS = 12

# Incremented each time ranges are actually computed (not read from the cache): tests and logs use it.
CALIBRATION_RUNS = 0


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise InputError(f"unknown calibration method '{method}'", hint=f"choose from {', '.join(METHODS)}")
    return table[method]


def prepare(onnx_path: Path, out_path: Path) -> Path:
    """Optimized, shape-inferred FP32 graph with unique node names, written to `out_path`."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = out_path.with_suffix(".pre.onnx")
    # When ORT's symbolic shape inference gives up it dumps sym_shape_infer_temp.onnx (+ external data) into the
    # current directory; run it from the build folder so nothing lands in the user's working directory.
    with contextlib.chdir(out_path.parent):
        try:
            quant_pre_process(str(onnx_path), str(tmp), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference gives up on some exported graphs: skip only that part
            log.info("int8: symbolic shape inference failed (%s); preprocessing without it", str(exc)[:200])
            try:
                quant_pre_process(str(onnx_path), str(tmp), skip_symbolic_shape=True)
            except Exception as exc2:
                raise ConversionError(f"INT8 preprocessing (ONNX Runtime quant_pre_process) failed: {exc2}") from exc2
    model = onnx.load(str(tmp))
    graph.name_nodes(model)
    onnx.save(model, str(out_path))
    tmp.unlink(missing_ok=True)
    return out_path


class _Reader:
    """ORT CalibrationDataReader over a slice of samples, advancing a progress bar."""

    def __init__(self, samples: Sequence[dict], advance: Callable[[], None]):
        self._it = iter(samples)
        self._advance = advance

    def get_next(self):
        item = next(self._it, None)
        if item is not None:
            self._advance()
        return item


def _progress(total: int, description: str):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal, transient=False)


def calibrate(prepared: Path, calib: CalibrationSet, method: str, cache: EngineCache,
              op_types: Sequence[str] = QUANT_OPS) -> tuple[Path, bool]:
    """(path of the ranges JSON, cache hit). Ranges depend on the graph, the data and the method only,
    so every exclusion list tried later reuses them."""
    import onnxruntime as ort

    ort_method = _ort_method(method)
    parts = {"graph": sha256_file(prepared), "calib": calib.hash, "method": method, "ops": sorted(op_types),
             "onnxruntime": ort.__version__}

    def build(out: Path) -> None:
        global CALIBRATION_RUNS
        from onnxruntime.quantization.calibrate import (
            create_calibrator,
            save_tensors_data,
        )

        CALIBRATION_RUNS += 1
        work = out / "work"
        work.mkdir()
        calibrator = create_calibrator(prepared, list(op_types), augmented_model_path=str(work / "augmented.onnx"),
                                       calibrate_method=ort_method,
                                       extra_options={"symmetric": False} if method == "minmax" else {})
        samples = calib.samples
        # ORT's histogram calibrators print() per call; the progress bar (on stderr) says the same, once.
        with _progress(len(samples), "calibrating") as bar, contextlib.redirect_stdout(io.StringIO()):
            task = bar.add_task(f"INT8 calibration ({method}, {len(samples)} samples)", total=len(samples))
            step = CALIBRATION_CHUNK if method == "minmax" else HISTOGRAM_CHUNK
            for start in range(0, len(samples), step):
                chunk = samples[start:start + step]
                calibrator.collect_data(_Reader(chunk, lambda: bar.advance(task)))
            ranges = calibrator.compute_data()
        save_tensors_data(ranges, out / "ranges.json")
        del calibrator
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()

    entry = cache.get_or_build("calibration", parts, build, label=f"int8 ranges {method} {calib.source}")
    if entry.hit:
        log.info("int8: calibration ranges from cache (%s)", entry.key)
    return entry.path / "ranges.json", entry.hit


def quantize(prepared: Path, ranges: Path, out_path: Path, method: str, *, exclude: Sequence[str] = (),
             only: Sequence[str] | None = None, op_types: Sequence[str] = QUANT_OPS) -> Path:
    """QDQ INT8 graph from cached ranges; `only` restricts quantization to those nodes (sensitivity runs)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # ORT logs "consider pre-processing" warnings through the root logger
    try:
        quantize_static(
            str(prepared), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=list(only) if only else None, nodes_to_exclude=list(exclude),
            calibrate_method=_ort_method(method), calibration_cache_path=str(ranges),
        )
    except Exception as exc:
        raise ConversionError(f"INT8 quantization (ONNX Runtime quantize_static) failed: {exc}") from exc
    finally:
        root.setLevel(level)
    if only:
        # Sensitivity runs charge a node for quantizing its own inputs only, the same thing excluding it
        # undoes; without this a node would also be charged for the round trip of its output.
        import onnx

        keep = set(only)
        release_inputs(out_path, [n.name for n in onnx.load(str(out_path), load_external_data=False).graph.node
                                  if n.name not in keep])
    elif exclude:
        release_inputs(out_path, exclude)
    return out_path


def release_inputs(path: Path, nodes: Sequence[str]) -> int:
    """Give excluded nodes their FP32 inputs back; returns how many inputs were rewired.

    ORT's quantizer quantizes the *output* of every quantized node, whoever consumes it, so excluding a node
    leaves it reading a Quantize/Dequantize round trip of its input: excluded, yet still fed 8-bit values.
    Here each excluded node reads the tensor from before that round trip, and Q/DQ pairs left without
    consumers are removed.
    """
    import onnx

    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    wanted = set(nodes)
    rewired = 0
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a weight's DequantizeLinear reads an initializer: not an activation round trip
            node.input[i] = q.input[0]
            rewired += 1
    if rewired:
        outputs = {o.name for o in model.graph.output}
        while True:  # drop Q/DQ nodes nobody reads any more (a DQ first, then the Q that fed it)
            used = {i for n in model.graph.node for i in n.input} | outputs
            dead = [n for n in model.graph.node
                    if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
            if not dead:
                break
            for n in dead:
                model.graph.node.remove(n)
        onnx.save(model, str(path))
    return rewired


@dataclass
class SearchResult:
    path: Path
    excluded: list[str]
    report: GateReport
    sensitivity: list[dict] = field(default_factory=list)
    evaluations: int = 0


def search(candidate: Callable[[list[str], Sequence[str] | None], Path], quantizable: Sequence[str], gate: Gate,
           proxy: Gate, *, exclude: Sequence[str] = (), groups: int = SENSITIVITY_GROUPS, auto_exclude: bool = True,
           backend_hint: str | None = None, backend_extra: dict | None = None) -> SearchResult:
    """Quantize; if `gate` fails, exclude the costliest node groups (ranked on `proxy`) until it passes.

    `candidate(excluded, only)` writes an INT8 graph (quantizing only `only` when given) and returns its path;
    `backend_hint` says what runs candidates in the gates (precision.runners.candidate_runner: None is ONNX Runtime,
    a quantizer name the backend that builds its format); `backend_extra`: that backend's switches (keep_fp32).
    """
    base = list(exclude)
    first_path = candidate(base, None)
    first = gate.evaluate(first_path, backend_hint, backend_extra)
    if first.passed:
        return SearchResult(first_path, base, first, [], gate.evaluations)
    if not auto_exclude:
        raise first.error("INT8 build fails its accuracy gate",
                          hint="allow automatic exclusion, raise --max-loss, or try --calib-method entropy/percentile")

    pool = [n for n in quantizable if n not in set(base)]
    node_groups = graph.chunk(pool, groups)
    sensitivity = []
    for i, group in enumerate(node_groups):
        rep = proxy.evaluate(candidate(base, group), backend_hint, backend_extra)
        sensitivity.append({"group": i, "nodes": group, "loss": round(rep.loss, 6)})
        log.info("int8: group %d/%d (%d nodes, %s..) alone costs %.4f", i + 1, len(node_groups), len(group),
                 group[0], rep.loss)
    ranked = sorted(sensitivity, key=lambda s: -s["loss"])

    def excluded_top(k: int) -> list[str]:
        return base + [n for s in ranked[:k] for n in s["nodes"]]

    tried: dict[int, tuple[Path, GateReport]] = {0: (first_path, first)}

    def judge(k: int) -> GateReport:
        if k not in tried:
            path = candidate(excluded_top(k), None)
            tried[k] = (path, gate.evaluate(path, backend_hint, backend_extra))
        return tried[k][1]

    # Smallest k whose exclusion passes, assuming more exclusion never hurts (true up to gate noise, and
    # the final graph is always one that was judged to pass).
    lo, hi = 0, len(ranked)
    if not judge(hi).passed:
        raise tried[hi][1].error(
            f"INT8 build fails its gate even with all {len(pool)} quantizable nodes excluded",
            hint="the FP32 graph itself disagrees with the gate's reference; check the data")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if judge(mid).passed:
            hi = mid
        else:
            lo = mid
    path, report = tried[hi]
    excluded = excluded_top(hi)
    log.info("int8: excluded %d node(s) in %d group(s) to pass: %s", len(excluded) - len(base), hi, report.summary())
    evaluations = gate.evaluations + (proxy.evaluations if proxy is not gate else 0)
    return SearchResult(path, excluded, report, sensitivity, evaluations)


def onnx_region_nodes(prepared: Path, keep_regions: Sequence[str]) -> list[str]:
    """The nodes of the `keep_regions` (graph/regions.py) in a prepared graph (its node names, as quantized)."""
    import onnx

    from ppdeploy.graph import regions

    return regions.expand_onnx(onnx.load(str(prepared), load_external_data=False), keep_regions, str(prepared))


def ort_candidates(prepared: Path, ranges: Path, method: str, work: Path,
                   op_types: Sequence[str] = QUANT_OPS) -> tuple[Callable, list[str]]:
    """(candidate writer, quantizable node names) for ONNX Runtime's quantizer with cached ranges."""
    import onnx

    counter = [0]

    def candidate(excluded: Sequence[str], only: Sequence[str] | None) -> Path:
        counter[0] += 1
        return quantize(prepared, ranges, work / f"int8-candidate-{counter[0]}.onnx", method,
                        exclude=excluded, only=only, op_types=op_types)

    return candidate, graph.nodes_of_types(onnx.load(str(prepared), load_external_data=False), op_types)


def quantized_fraction(path: Path, op_types: Sequence[str] = QUANT_OPS) -> dict[str, Any]:
    """How many of the compute ops run in INT8 in a QDQ graph (their weight input comes from a DequantizeLinear)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    total = quantized = 0
    for n in model.graph.node:
        if n.op_type in op_types:
            total += 1
            if len(n.input) > 1 and producers.get(n.input[1]) == "DequantizeLinear":
                quantized += 1
    return {"compute_nodes": total, "int8_nodes": quantized}

