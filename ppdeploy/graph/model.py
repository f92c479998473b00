"""Small ONNX graph facts the precision passes need: stable node names, hashes, node groups."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

from ppdeploy.core.errors import SourceError
from ppdeploy.core.lazy import lazy_import

onnx = lazy_import("onnx", install="onnx")
helper = lazy_import("onnx.helper", install="onnx")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: Path):
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError
        raise SourceError(f"{path} is not a readable ONNX model: {exc}") from exc


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (`<op>_ppd<i>`), in place; returns how many were named.

    Keep/exclude lists are node names, and exporters (paddle2onnx among them) leave some nodes unnamed or
    share names, which would make those nodes impossible to keep in FP32 or to exclude from INT8.
    """
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_ppd{i}"
            renamed += 1
        seen.add(node.name)
    return renamed


def input_specs(model) -> list[tuple[str, str, tuple[int | None, ...]]]:
    """(name, numpy dtype, shape with None for dynamic dims) of the real inputs (not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
        out.append((vi.name, dtype, shape))
    return out


def nodes_of_types(model, op_types: Iterable[str]) -> list[str]:
    wanted = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in wanted]


def chunk(names: Sequence[str], groups: int) -> list[list[str]]:
    """Split names (in graph order) into at most `groups` contiguous groups of near-equal size."""
    groups = max(1, min(groups, len(names)))
    size, extra = divmod(len(names), groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(list(names[start:end]))
        start = end
    return [g for g in out if g]
