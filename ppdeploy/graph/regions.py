"""Named regions of a graph that a reduced-precision build keeps in FP32 (`keep_fp32=["encoder"]`).

"encoder": everything an encoder-decoder network computes before its first upsampling, that is, the ops that feed
an upsampling op through a path with no other upsampling op on it. For a feature-pyramid detector (PP-OCR's DB:
backbone, then an FPN that upsamples and fuses, then a head) this is the backbone up to its deepest feature map.

Why it exists: in BF16, PP-OCRv4 det changed the text of 77 of 2645 synthetic lines, 2.9 % (its boxes moved by a
pixel or two, and rec reads the crops differently); with only the encoder kept FP32, 9 (0.34 %). Splitting the model
by hand showed why: BF16 errors in the backbone move the boxes, BF16 errors after it do not. The encoder
is about half of the det's FP32 time, so the pipeline keeps most of BF16's saving: 27.5 -> 20.5 ms per page, against
16.2 in pure BF16 (OpenVINO, 2 cores, numbers in BENCHMARKS.md).

The rule is structural, so it is the same for the ONNX graph (FP16: node names handed to the converter's block list)
and for OpenVINO's own graph after its transformations (BF16: ops marked in the IR, see openvino_mixed.py).
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Sequence, TypeVar

from ppdeploy.core.errors import InputError

VERSION = 1  # of the region rules; part of the precision cache key when a region is kept
ENCODER = "encoder"
REGIONS = (ENCODER,)
ONNX_UPSAMPLING = frozenset({"Resize", "Upsample", "ConvTranspose", "DepthToSpace"})

N = TypeVar("N")


def encoder_of(ordered: Sequence[N], inputs: Callable[[N], Iterable[N]], is_upsampling: Callable[[N], bool],
               key: Callable[[N], Hashable]) -> list[N]:
    """The encoder of a graph given as `ordered` nodes (topological order) and their producers (`inputs`): the
    ancestors of every upsampling node that has no upsampling node upstream. Empty when nothing upsamples."""
    upsampled: dict[Hashable, bool] = {}  # key -> an upsampling node is upstream of it (or it is one)
    first: list[N] = []
    for node in ordered:
        upstream = any(upsampled.get(key(p), False) for p in inputs(node))
        if is_upsampling(node) and not upstream:
            first.append(node)
        upsampled[key(node)] = upstream or is_upsampling(node)
    seen: dict[Hashable, N] = {}
    stack = [p for node in first for p in inputs(node)]
    while stack:
        node = stack.pop()
        if key(node) in seen:
            continue
        seen[key(node)] = node
        stack.extend(inputs(node))
    return [node for node in ordered if key(node) in seen]


def onnx_encoder_nodes(model) -> list[str]:
    """Names of the ONNX nodes in the encoder (nodes must be named: ppdeploy.graph.model.name_nodes)."""
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output if out}
    return [n.name for n in encoder_of(nodes, lambda n: [producer[i] for i in n.input if i in producer],
                                        lambda n: n.op_type in ONNX_UPSAMPLING, lambda n: n.name)]


def split_keep(keep: Iterable[str]) -> tuple[list[str], list[str]]:
    """keep_fp32 entries -> (region names, each once, so no region is computed twice; node names)."""
    keep = list(keep)
    return list(dict.fromkeys(k for k in keep if k in REGIONS)), [k for k in keep if k not in REGIONS]


def expand_onnx(model, keep: Iterable[str], what: str = "the model") -> list[str]:
    """keep_fp32 entries with the regions replaced by their ONNX node names."""
    regions, names = split_keep(keep)
    for region in regions:
        found = onnx_encoder_nodes(model)
        if not found:
            raise no_region_error(region, what)
        names += [n for n in found if n not in names]
    return names


def no_region_error(region: str, what: str) -> InputError:
    return InputError(f"keep_fp32={region!r}: {what} has no {region}, since nothing in it upsamples "
                      f"({', '.join(sorted(ONNX_UPSAMPLING))})",
                      hint="keep_fp32='encoder' is for encoder-decoder models such as the PP-OCR detector")
