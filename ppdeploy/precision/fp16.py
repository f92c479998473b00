"""FP16 graphs: onnxconverter-common's converter with FP32 inputs/outputs and a keep-list of sensitive ops,
then an automatic repair that keeps in FP32 the nodes a failing gate blames.

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

from ppdeploy.errors import AccuracyError, ConversionError
from ppdeploy.precision.gate import Gate, GateReport

log = logging.getLogger("ppdeploy.precision")

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
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS))


def convert(model, keep_nodes: Sequence[str] = (), keep_ops: Sequence[str] | None = None):
    """FP16 copy of `model` with FP32 inputs/outputs; `keep_nodes`/`keep_ops` stay FP32."""
    from onnxconverter_common.float16 import convert_float_to_float16

    try:
        return convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True,
            op_block_list=list(default_keep_ops() if keep_ops is None else keep_ops),
            node_block_list=list(keep_nodes),
        )
    except Exception as exc:  # the converter raises ValueError/KeyError on graphs it cannot handle
        raise ConversionError(f"FP16 conversion failed: {exc}",
                              hint="try --precision bf16 (a backend setting) or keep FP32") from exc


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
        path = save(candidate, work / f"fp16-candidate-{counter[0]}.onnx")
        report = gate.evaluate(path)
        tried.append({"kept": len(kept), "loss": round(report.loss, 6), "passed": report.passed})
        return report, candidate

    report, candidate = judge(fixed)
    if report.passed or not repair:
        if not report.passed:
            raise AccuracyError(f"FP16 build fails its accuracy gate: {report.summary()}",
                                hint="enable repair, raise --max-loss, or use --precision bf16/fp32")
        return RepairResult(candidate, fixed, report, tried)

    pool = [n for n in candidates(model, keep_ops) if n not in set(fixed)]
    everything, _ = judge(fixed + pool)
    if not everything.passed:
        raise AccuracyError(
            "FP16 build fails its accuracy gate even with every computing node kept in FP32 "
            f"(the FP16 casts at its edges already cost too much): {everything.summary()}",
            hint="use --precision fp32 or bf16, or raise --max-loss")

    cache: dict[frozenset, bool] = {}

    def passes(kept: list[str]) -> bool:
        key = frozenset(kept)
        if key not in cache:
            if counter[0] >= max_evaluations:
                raise AccuracyError(
                    f"FP16 repair gave up after {counter[0]} gate evaluations without isolating the culprits "
                    f"(first result: {report.summary()})", hint="use --precision fp32 or bf16")
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
        raise AccuracyError(f"FP16 repair found {culprits} but the result still fails: {final.summary()}")
    log.info("fp16: kept %d node(s) in FP32 after %d evaluations: %s", len(culprits), counter[0], culprits)
    return RepairResult(candidate, kept, final, tried)
