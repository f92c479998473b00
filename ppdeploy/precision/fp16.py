"""FP16 graphs: ONNX Runtime's float16 converter (`onnxruntime.transformers.float16`, the maintained successor of
onnxconverter-common's, whose cast clean-up pass fails on PP-OCRv4 rec) with FP32 inputs/outputs and a
keep-list of sensitive ops, then an automatic repair that keeps in FP32 the nodes a failing gate blames.

Judging on a CPU: ONNX Runtime's CPU provider has few FP16 kernels, so it computes converted nodes in FP32
and drops the casts between them — an FP16 graph that overflows on a GPU can look fine there. The gate
therefore judges an *emulation*: the FP32 graph with every value a converted node produces rounded to FP16
by an explicit Cast pair (overflow to inf, underflow to 0, 11-bit mantissa) and the weights of converted
nodes rounded by the converter's own `convert_np_to_float16`. That is FP16 storage with FP32 arithmetic
inside each op, as GPU FP16 kernels with FP32 accumulation do. The graph that ships is the converter's.

The repair is a bisection over the converted nodes in graph order (delta debugging): keeping *every*
candidate in FP32 passes by construction, so halve the set and keep the half that still passes; when
neither half alone does, the culprits sit in both and each half is minimised with the other held. For
k culprits among n nodes this costs about 2·k·log2(n) gate evaluations, each a conversion plus a run
of the held-out samples.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ppdeploy.core.errors import AccuracyError, ConversionError
from ppdeploy.precision.gate import Gate, GateReport
from ppdeploy.precision.runners import ort_runner

log = logging.getLogger("ppdeploy.precision.build")

LIBRARIES = ("onnxruntime",)  # distributions whose version enters the precision cache key

# Ops whose FP16 results go wrong first: normalizations (variance of large activations overflows),
# softmax/exp/log/pow (range), reductions (long sums lose bits), plus the converter's own defaults
# (ops with no FP16 kernel or no FP16 type in the ONNX spec).
SENSITIVE_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "LpNormalization",
    "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization",
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "CumSum", "Range", "TopK", "NonMaxSuppression", "RoiAlign",
)

# Nodes that only move, reshape or select values: keeping one in FP32 never fixes accuracy, so the
# repair does not spend evaluations on them.
PASSIVE_OPS = frozenset({
    "Constant", "ConstantOfShape", "Shape", "Size", "Cast", "CastLike", "Identity", "Reshape", "Flatten",
    "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements",
    "GatherND", "Expand", "Tile", "Pad", "Where", "Equal", "Less", "Greater", "Not", "And", "Or",
})

MAX_EVALUATIONS = 48


def default_keep_ops() -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS))


def convert(model, keep_nodes: Sequence[str] = (), keep_ops: Sequence[str] | None = None):
    """FP16 copy of `model` with FP32 inputs/outputs; `keep_nodes`/`keep_ops` stay FP32."""
    import warnings

    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = copy.deepcopy(model)
    omit_empty_resize_inputs(model)
    try:
        with warnings.catch_warnings():  # one warning per clamped weight; the count goes nowhere useful
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(
                model, keep_io_types=True,
                op_block_list=list(default_keep_ops() if keep_ops is None else keep_ops),
                node_block_list=list(keep_nodes),
            )
            drop_fp16_round_trips(converted)
            return converted
    except Exception as exc:  # the converter raises ValueError/KeyError on graphs it cannot handle
        raise ConversionError(f"FP16 conversion failed: {exc}",
                              hint="try --precision bf16 (a backend setting) or keep FP32") from exc


def omit_empty_resize_inputs(model) -> int:
    """Give Resize's optional `roi`/`scales` as omitted (empty name) where they are empty tensors, in place; returns
    how many inputs were dropped.

    paddle2onnx feeds `Resize` an empty FP32 initializer for the `roi` and `scales` it does not use (PP-YOLOE+'s
    upsampling gives `sizes`). The FP16 converter turns such an empty tensor into FP16 plus a Cast back, which ONNX
    Runtime then reads as a `scales` given next to `sizes` and refuses ("Either `sizes` or `scales` must be
    provided, but not both"). An omitted input means the same as the empty one and survives the conversion."""
    from onnx import numpy_helper

    empty = {t.name for t in model.graph.initializer if numpy_helper.to_array(t).size == 0}
    dropped = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for i in (1, 2):  # roi, scales
            if i < len(node.input) and node.input[i] in empty:
                node.input[i] = ""
                dropped += 1
    return dropped


def drop_fp16_round_trips(model) -> int:
    """Remove Cast(to FP16) -> Cast(to FP32) pairs, in place; returns how many FP16 casts went away.

    The converter casts the output of every node it keeps in FP32 to FP16 and back before the next FP32
    node, so a value that two kept nodes pass between them still overflows (a kept x*x of 300 feeding a
    kept ReduceMean turns inf). onnxconverter-common removes these pairs in a pass that fails on PP-OCRv4
    rec; this is that clean-up, restricted to the unambiguous case: a Cast to FP16 whose every reader is a
    Cast back to FP32 that is not a graph output.
    """
    from onnx import TensorProto

    graph_outputs = {o.name for o in model.graph.output}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def cast_to(node, dtype: int) -> bool:
        return node.op_type == "Cast" and any(a.name == "to" and a.i == dtype for a in node.attribute)

    removed, drop = 0, set()
    for node in model.graph.node:
        if not cast_to(node, TensorProto.FLOAT16) or node.output[0] in graph_outputs:
            continue
        back = readers.get(node.output[0], [])
        if not back or not all(cast_to(r, TensorProto.FLOAT) and r.output[0] not in graph_outputs for r in back):
            continue
        source = node.input[0]
        for r in back:
            for consumer in readers.get(r.output[0], []):
                for i, name in enumerate(consumer.input):
                    if name == r.output[0]:
                        consumer.input[i] = source
            drop.add(id(r))
        drop.add(id(node))
        removed += 1
    if removed:
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return removed


def converted_nodes(model, keep_nodes: Sequence[str], keep_ops: Sequence[str]) -> set[str]:
    blocked_ops, blocked_nodes = set(keep_ops), set(keep_nodes)
    return {n.name for n in model.graph.node if n.op_type not in blocked_ops and n.name not in blocked_nodes}


def emulate(model, keep_nodes: Sequence[str] = (), keep_ops: Sequence[str] | None = None):
    """FP32 graph that rounds like the FP16 conversion (see module doc); runs faithfully in ORT on a CPU."""
    import warnings

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.transformers.float16 import convert_np_to_float16

    keep_ops = default_keep_ops() if keep_ops is None else list(keep_ops)
    m = copy.deepcopy(model)
    try:
        typed = onnx.shape_inference.infer_shapes(m)
    except Exception:  # shape inference is best effort; without it only initializer types are known
        typed = m
    float_values = {vi.name for vi in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]
                    if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    float_values |= {i.name for i in m.graph.initializer if i.data_type == TensorProto.FLOAT}
    converted = converted_nodes(m, keep_nodes, keep_ops)
    inits = {i.name: i for i in m.graph.initializer}
    graph_inputs = {i.name for i in m.graph.input}

    def round_trip(src: str, dst: str, tag: str) -> list:
        return [helper.make_node("Cast", [src], [f"{dst}__fp16"], name=f"{tag}__to_fp16", to=TensorProto.FLOAT16),
                helper.make_node("Cast", [f"{dst}__fp16"], [dst], name=f"{tag}__to_fp32", to=TensorProto.FLOAT)]

    rounded_inputs: dict[str, str] = {}
    rounded_inits: set[str] = set()
    nodes = []
    for node in m.graph.node:
        if node.name in converted:
            for i, name in enumerate(node.input):
                if name in inits and inits[name].data_type == TensorProto.FLOAT and name not in rounded_inits:
                    arr = numpy_helper.to_array(inits[name])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        rounded = convert_np_to_float16(np.atleast_1d(arr))
                    inits[name].CopyFrom(numpy_helper.from_array(
                        np.asarray(rounded).astype(np.float32).reshape(arr.shape), name))
                    rounded_inits.add(name)
                elif name in graph_inputs and name in float_values:
                    if name not in rounded_inputs:
                        rounded_inputs[name] = f"{name}__rounded"
                        nodes.extend(round_trip(name, rounded_inputs[name], f"{name}__in"))
                    node.input[i] = rounded_inputs[name]
            raw_outputs = []
            for i, name in enumerate(node.output):
                if name and name in float_values:
                    node.output[i] = f"{name}__fp32"
                    raw_outputs.append((node.output[i], name))
            nodes.append(node)
            for raw, name in raw_outputs:
                nodes.extend(round_trip(raw, name, f"{node.name}__{name}"))
        else:
            nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def candidates(model, keep_ops: Sequence[str]) -> list[str]:
    """Nodes the converter turns to FP16 and that compute something: what the repair may keep in FP32."""
    blocked = set(keep_ops)
    return [n.name for n in model.graph.node if n.op_type not in blocked and n.op_type not in PASSIVE_OPS]


@dataclass
class RepairResult:
    model: object  # onnx.ModelProto of the accepted graph
    kept_fp32: list[str]
    report: GateReport
    tried: list[dict] = field(default_factory=list)  # one entry per gate evaluation


def build(model, gate: Gate, save: Callable[[object, Path], Path], work: Path, *,
          keep_nodes: Sequence[str] = (), keep_ops: Sequence[str] | None = None,
          repair: bool = True, max_evaluations: int = MAX_EVALUATIONS) -> RepairResult:
    """Convert, judge with `gate`, and repair by bisection when it fails.

    `save(model, path)` writes a candidate where the gate can load it (external data for big graphs).
    """
    keep_ops = default_keep_ops() if keep_ops is None else list(keep_ops)
    fixed = list(keep_nodes)
    tried: list[dict] = []
    counter = [0]

    def judge(kept: Sequence[str]) -> tuple[GateReport, object]:
        counter[0] += 1
        candidate = convert(model, kept, keep_ops)
        path = save(emulate(model, kept, keep_ops), work / f"fp16-emulated-{counter[0]}.onnx")
        report = gate.evaluate(path)
        tried.append({"kept": len(kept), "loss": round(report.loss, 6), "passed": report.passed})
        return report, candidate

    report, candidate = judge(fixed)
    if report.passed or not repair:
        if not report.passed:
            raise report.error("FP16 build fails its accuracy gate",
                               hint="enable repair, raise --max-loss, or use --precision bf16/fp32")
        return RepairResult(candidate, fixed, report, tried)

    pool = [n for n in candidates(model, keep_ops) if n not in set(fixed)]
    everything, _ = judge(fixed + pool)
    if not everything.passed:
        raise everything.error(
            "FP16 build fails its accuracy gate even with every computing node kept in FP32 "
            "(the FP16 casts at its edges already cost too much)", hint="use --precision fp32 or bf16, or raise --max-loss")

    cache: dict[frozenset, bool] = {}

    def passes(kept: list[str]) -> bool:
        key = frozenset(kept)
        if key not in cache:
            if counter[0] >= max_evaluations:
                raise report.error(
                    f"FP16 repair gave up after {counter[0]} gate evaluations without isolating the culprits "
                    "(first result)", hint="use --precision fp32 or bf16")
            cache[key] = judge(fixed + kept)[0].passed
        return cache[key]

    def minimise(cands: list[str], held: list[str]) -> list[str]:
        # Invariant: keeping cands + held in FP32 passes.
        if len(cands) <= 1:
            return cands
        half = len(cands) // 2
        a, b = cands[:half], cands[half:]
        if passes(held + a):
            return minimise(a, held)
        if passes(held + b):
            return minimise(b, held)
        kept_a = minimise(a, held + b)
        return kept_a + minimise(b, held + kept_a)

    culprits = minimise(pool, [])
    kept = fixed + culprits
    final, candidate = judge(kept)
    if not final.passed:  # gates on few samples can be noisy at the margin; never ship a failing graph
        raise final.error(f"FP16 repair found {culprits} but the result still fails")
    log.info("fp16: kept %d node(s) in FP32 after %d evaluations: %s", len(culprits), counter[0], culprits)
    return RepairResult(candidate, kept, final, tried)


def smoke_run(path: Path, feeds: dict) -> None:
    """Load and run the real FP16 graph once in ONNX Runtime: the converter's output must be a valid graph
    (the gate judged its emulation)."""
    runner = ort_runner(path)
    try:
        outputs = runner.infer(feeds)
    except Exception as exc:
        raise ConversionError(f"the FP16 graph does not run in ONNX Runtime: {str(exc)[:500]}") from exc
    finally:
        runner.close()
    bad = [name for name, value in outputs.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if bad:
        raise AccuracyError(f"the FP16 graph produces inf/NaN in {bad} although its emulation passed the gate")
