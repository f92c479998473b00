"""Output heads appended to a converted graph, so the runtime hands back what the task needs, not everything.

`ctc_greedy`: a CTC recognizer's N x T x C output (PP-OCRv4 rec: 80 steps x 6625 classes of float32, 2.1 MB per
line) becomes two N x T tensors, the best class per step (`ctc_index`, int64) and its probability (`ctc_prob`,
float32): 960 bytes per line. Greedy CTC decoding needs nothing more, so the argmax runs inside the engine (on the
GPU, when there is one) and the device-to-host copy and a server's answer shrink ~2200x. That copy is what bounds
batched rec on the H100 (bench/gpu/README.md: above batch 32 it outweighs the compute).

Not for the rec guard (ppdeploy.tasks.ocr.guard), which needs the runner-up classes of every step.
"""
from __future__ import annotations

from pathlib import Path

from ppdeploy.core.errors import ConversionError
from ppdeploy.core.lazy import lazy_import

onnx = lazy_import("onnx", install="onnx")
helper = lazy_import("onnx.helper", install="onnx")

CTC_GREEDY = "ctc_greedy"
NMS_HOST = "nms_host"
HEADS = (CTC_GREEDY, NMS_HOST)
CTC_INDEX, CTC_PROB = "ctc_index", "ctc_prob"
NMS_BOXES, NMS_SCORES = "nms_boxes", "nms_scores"
VERSION = 1  # part of the cache key: bump when a head's graph changes


def check_head(head: str | None) -> None:
    if head is not None and head not in HEADS:
        raise ConversionError(f"unknown output head '{head}'", hint=f"choose from {', '.join(HEADS)}")


def add_head(src: Path, dst: Path, head: str) -> None:
    """Write `src` with `head` appended to `dst` (checked with onnx.checker)."""
    check_head(head)
    model = onnx.load(str(src))
    if head == NMS_HOST:
        model = _cut_before_nms(model, src.name)
    else:
        _add_ctc_greedy(model, src.name)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"the {head} head made {src.name} invalid: {str(exc).splitlines()[0]}") from exc
    onnx.save(model, str(dst))


def _add_ctc_greedy(model, what: str) -> None:
    graph = model.graph
    outputs = list(graph.output)
    if len(outputs) != 1:
        raise ConversionError(f"the {CTC_GREEDY} head needs a model with one output (N x T x classes); "
                              f"{what} has {len(outputs)}: {', '.join(o.name for o in outputs)}")
    out = type(outputs[0])()
    out.CopyFrom(outputs[0])  # the graph's outputs are replaced below
    dims = out.type.tensor_type.shape.dim
    if out.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) or len(dims) != 3:
        raise ConversionError(f"the {CTC_GREEDY} head needs a float N x T x classes output; {what}'s "
                              f"'{out.name}' has rank {len(dims)} and element type "
                              f"{onnx.TensorProto.DataType.Name(out.type.tensor_type.elem_type)}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    producer = next((n for n in graph.node if out.name in n.output), None)
    probs = out.name
    nodes = []
    if producer is None or producer.op_type != "Softmax":  # logits: the probability of the best class needs them
        probs = f"{out.name}__softmax"
        nodes.append(helper.make_node("Softmax", [out.name], [probs], axis=-1, name="ctc_greedy_softmax"))
    nodes.append(helper.make_node("ArgMax", [probs], [CTC_INDEX], axis=2, keepdims=0, name="ctc_greedy_argmax"))
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        axes = "ctc_greedy_axes"
        graph.initializer.append(helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [2]))
        nodes.append(helper.make_node("ReduceMax", [probs, axes], [CTC_PROB], keepdims=0, name="ctc_greedy_max"))
    else:
        nodes.append(helper.make_node("ReduceMax", [probs], [CTC_PROB], axes=[2], keepdims=0, name="ctc_greedy_max"))
    graph.node.extend(nodes)
    del graph.output[:]
    for name, elem in ((CTC_INDEX, onnx.TensorProto.INT64), (CTC_PROB, out.type.tensor_type.elem_type)):
        value = helper.make_tensor_value_info(name, elem, None)
        for dim in dims[:2]:  # N and T as the model declares them
            value.type.tensor_type.shape.dim.add().CopyFrom(dim)
        graph.output.append(value)


def _cut_before_nms(model, what: str):
    """`nms_host`: a detector with ONNX NonMaxSuppression in its graph ends at that node's inputs instead, decoded
    boxes B x N x 4 (`nms_boxes`) and scores B x C x N (`nms_scores`), for NMS on the host (the detection task
    does it). For engines without NonMaxSuppression (TensorRT-RTX has no implementation of it, nor the
    EfficientNMS_TRT plugin) or where the host is faster; the rest of the graph after NMS is dropped."""
    nms = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    if len(nms) != 1:
        raise ConversionError(f"the {NMS_HOST} head needs a graph with one NonMaxSuppression node; {what} has "
                              f"{len(nms)}")
    boxes, scores = nms[0].input[0], nms[0].input[1]
    model = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    graph = model.graph
    graph.node.extend([helper.make_node("Identity", [boxes], [NMS_BOXES], name="nms_host_boxes"),
                       helper.make_node("Identity", [scores], [NMS_SCORES], name="nms_host_scores")])
    del graph.output[:]
    for name, source, dims in ((NMS_BOXES, boxes, ("batch", "anchors", 4)),
                               (NMS_SCORES, scores, ("batch", "classes", "anchors"))):
        value = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        inferred = known.get(source)
        inferred_dims = list(inferred.type.tensor_type.shape.dim) if inferred is not None else []
        for i, fallback in enumerate(dims):  # rank 3 always; a dim inference left unknown gets a symbolic name
            dim = value.type.tensor_type.shape.dim.add()
            if len(inferred_dims) == 3 and (inferred_dims[i].dim_value or inferred_dims[i].dim_param):
                dim.CopyFrom(inferred_dims[i])
            elif isinstance(fallback, int):
                dim.dim_value = fallback
            else:
                dim.dim_param = fallback
        graph.output.append(value)
    # keep only what the new outputs need
    needed, kept = {NMS_BOXES, NMS_SCORES}, []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = needed
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.value_info[:]
    return model
