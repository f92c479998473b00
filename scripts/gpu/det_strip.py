"""Weight stripping for graphs that must travel to the device in a 64 MiB call (see make_det_models.py).

`strip` empties the weight initializers (the float inputs past the first of Conv, ConvTranspose, Gemm and MatMul,
1024+ elements) and records dtype, dims, mean and std per tensor (per kernel tap for spatial kernels) beside the graph (`<file>.weights.json`); every
other initializer (anchors, shapes, scales, small tensors) travels as it is. `refill` writes seeded normal values
with each tensor's (tap's) own mean and std back, so activations keep about their scale (NMS candidate counts: see
`boxes_to_nms`). Needs only numpy and onnx (the device has both)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
MIN_ELEMENTS = 1024
SCORE_THRESHOLD = 0.01  # PP-YOLOE+'s MultiClassNMS score_threshold (infer_cfg.yml)


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".weights.json")


def strip(src: Path, dst: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    weights = {name for node in model.graph.node if node.op_type in WEIGHT_OPS for name in node.input[1:]}
    described = []
    for t in model.graph.initializer:
        if t.name not in weights or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        arr = numpy_helper.to_array(t)
        if arr.size < MIN_ELEMENTS:
            continue
        a64 = arr.astype(np.float64)
        entry = {"name": t.name, "dtype": str(arr.dtype), "dims": list(arr.shape), "mean": float(a64.mean()),
                 "std": float(a64.std())}
        if arr.ndim == 4 and arr.shape[2] * arr.shape[3] > 1:  # per kernel tap: RepVGG folding weights the centre
            entry["tap_mean"] = a64.mean(axis=(0, 1)).tolist()
            entry["tap_std"] = a64.std(axis=(0, 1)).tolist()
        described.append(entry)
        for field in ("raw_data", "float_data", "int32_data"):
            t.ClearField(field)
    onnx.save(model, str(dst))
    _sidecar(dst).write_text(json.dumps(described))
    return {"stripped_tensors": len(described), "stripped_elements": int(sum(np.prod(d["dims"]) for d in described))}


def refill(stripped: Path, dst: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(stripped))
    described = {d["name"]: d for d in json.loads(_sidecar(stripped).read_text())}
    rng = np.random.default_rng(seed)
    for i, t in enumerate(model.graph.initializer):
        d = described.get(t.name)
        if d is None:
            continue
        if "tap_mean" in d:
            values = rng.normal(np.asarray(d["tap_mean"]), np.asarray(d["tap_std"]), d["dims"]).astype(d["dtype"])
        else:
            values = rng.normal(d["mean"], d["std"], d["dims"]).astype(d["dtype"])
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, t.name))
    onnx.save(model, str(dst))
    return dst


def boxes_to_nms(name: str, outputs: list[np.ndarray]) -> dict:
    """What reaches NMS / leaves it, per image. No-NMS graph: (boxes BxNx4, scores BxCxN): the (class, anchor) pairs
    above the score threshold (multiclass NMS then keeps at most 1000 per class). NMS graph: (rows Kx6, counts B)."""
    if name.endswith("nonms"):
        scores = outputs[1]
        above = (scores > SCORE_THRESHOLD).reshape(scores.shape[0], -1).sum(axis=1)
        return {"pairs_above_threshold": above.tolist(), "anchors": int(scores.shape[-1]),
                "classes": int(scores.shape[1]), "max_score": float(scores.max())}
    counts = outputs[1]
    return {"boxes_after_nms": np.asarray(counts).reshape(-1).tolist()}
