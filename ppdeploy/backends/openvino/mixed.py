"""BF16 on OpenVINO with a region kept in FP32 (keep_fp32=["encoder"], see regions.py).

OpenVINO's CPU plugin runs an op in its original precision under a bf16 inference-precision hint when the op carries
the "precise" runtime attribute (DisablePrecisionConversion). Python cannot set that attribute (a string value
fails the plugin's type check), but an IR can carry it: so the model is serialized, the attribute is written into
the IR's XML for the ops of the region, and the IR is read back.

The marks go on the graph *after* OpenVINO's common transformations (MOC), because those fuse ops into new ones
that would not inherit an attribute set on the originals (measured: with every op of the ONNX-imported PP-OCRv4 det
marked, 28 still ran in BF16, mostly convolutions that MOC had fused with a following Multiply; marked after MOC,
only its Resizes did). The CPU plugin's own fusions later keep the marks.

Whether the plugin honoured the marks is checked on the compiled model (`check_marks`): an OpenVINO that ignored
them would otherwise give a plain BF16 model under a name that promises an FP32 encoder.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ppdeploy.core.errors import BuildError
from ppdeploy.core.lazy import lazy_import
from ppdeploy.graph import regions

ov = lazy_import("openvino", install="openvino")
offline = lazy_import("openvino._offline_transformations", install="openvino")

VERSION = 2  # of the marking and its check; part of the OpenVINO engine key
OV_UPSAMPLING = frozenset({"Interpolate", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "DepthToSpace"})
_NOT_MARKED = frozenset({"Parameter", "Result", "Constant"})
_CONV_TYPES = ("Convolution", "GroupConvolution")


def encoder_ops(model: Any) -> list[Any]:
    """The ops of an ov.Model in the encoder (see regions.encoder_of)."""
    return regions.encoder_of(
        list(model.get_ordered_ops()),
        lambda op: [op.input_value(i).get_node() for i in range(op.get_input_size())],
        lambda op: op.get_type_name() in OV_UPSAMPLING,
        lambda op: op.get_instance_id())


@dataclass(frozen=True)
class Marks:
    """What marked_model marked: op names, and those of them that are convolutions (what check_marks checks)."""

    ops: frozenset[str]
    convolutions: frozenset[str]


def marked_model(core: Any, source: Path, keep: Iterable[str], work_dir: Path) -> tuple[Any, Marks]:
    """`source` (ONNX or IR) read, transformed and with the ops of the `keep` regions marked FP32 -> (ov.Model, what was
    marked). The IR written on the way lives in `work_dir`."""
    region_names, node_names = regions.split_keep(keep)
    if node_names:
        raise BuildError(f"keep_fp32 under BF16 takes a region ({', '.join(regions.REGIONS)}), not node names "
                         f"({', '.join(node_names[:5])})",
                         hint="node names are for FP16 graphs; for BF16 use keep_fp32=['encoder']")
    model = core.read_model(str(source))
    offline.apply_moc_transformations(model, cf=False)
    ops: list[Any] = []
    for region in region_names:
        found = [op for op in encoder_ops(model) if op.get_type_name() not in _NOT_MARKED]
        if not found:
            raise regions.no_region_error(region, str(source))
        ops += found
    marks = Marks(frozenset(op.get_friendly_name() for op in ops),
                  frozenset(op.get_friendly_name() for op in ops if op.get_type_name() in _CONV_TYPES))
    xml_path = work_dir / "keep-fp32.xml"
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    _mark_xml(xml_path, marks.ops)
    return core.read_model(str(xml_path)), marks


def _mark_xml(xml_path: Path, names: frozenset[str]) -> None:
    tree = ET.parse(xml_path)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") not in names or layer.get("type") in ("Parameter", "Result", "Const"):
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(0, rt_info)
        ET.SubElement(rt_info, "attribute", {"name": "precise", "version": "0"})
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)


def conv_precisions(compiled: Any, names: frozenset[str] | None = None) -> dict[str, int]:
    """Runtime precision -> number of the compiled model's convolutions that run in it; with `names`, only those
    made from (fused with) an op of that name."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or str(info["layerType"].astype(str)) not in _CONV_TYPES:
            continue
        if names is not None:
            original = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
            if not names.intersection(original.split(",")):
                continue
        precision = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"
        counts[precision] = counts.get(precision, 0) + 1
    return counts


def check_marks(compiled: Any, source: Path, marks: Marks) -> dict[str, int]:
    """Raise BuildError unless every convolution the marks cover runs in FP32 in the compiled model."""
    counts = conv_precisions(compiled, marks.convolutions)
    if marks.convolutions and (not counts.get("f32") or set(counts) != {"f32"}):
        raise BuildError(f"OpenVINO {ov.__version__} did not keep the marked region of {source} in FP32 "
                         f"(its convolutions by runtime precision: {counts})",
                         hint="use precision bf16 without keep_fp32, or fp32")
    return counts
