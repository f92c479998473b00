"""BF16 on OpenVINO with a region kept in FP32 (keep_fp32=["encoder"], see regions.py).

OpenVINO's CPU plugin runs an op in its original precision under a bf16 inference-precision hint when the op carries
the "precise" runtime attribute (DisablePrecisionConversion). Python cannot set that attribute (a string value
fails the plugin's type check), but an IR can carry it: so the model is serialized, the attribute is written into
the IR's XML for the ops of the region, and the IR is read back.

The marks go on the graph *after* OpenVINO's common transformations (MOC), because those fuse ops into new ones
that would not inherit an attribute set on the originals (measured: with marks on the ONNX-imported graph, 28
convolutions of PP-OCRv4 det still ran in BF16). The CPU plugin's own fusions later keep the marks.

Whether the plugin honoured the marks is checked on the compiled model (`check_marks`): an OpenVINO that ignored
them would otherwise give a plain BF16 model under a name that promises an FP32 encoder.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

from ppdeploy.errors import BuildError
from ppdeploy.precision import regions

VERSION = 1  # of the marking; part of the OpenVINO engine key
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


def marked_model(core: Any, source: Path, keep: Iterable[str], work_dir: Path) -> tuple[Any, int]:
    """`source` (ONNX or IR) read, transformed and with the ops of the `keep` regions marked FP32 -> (ov.Model, number
    of ops marked). The IR written on the way lives in `work_dir`."""
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations

    region_names, node_names = regions.split_keep(keep)
    if node_names:
        raise BuildError(f"keep_fp32 under BF16 takes a region ({', '.join(regions.REGIONS)}), not node names "
                         f"({', '.join(node_names[:5])})",
                         hint="node names are for FP16 graphs; for BF16 use keep_fp32=['encoder']")
    model = core.read_model(str(source))
    apply_moc_transformations(model, cf=False)
    names: set[str] = set()
    for region in region_names:
        ops = [op for op in encoder_ops(model) if op.get_type_name() not in _NOT_MARKED]
        if not ops:
            raise regions.no_region_error(region, str(source))
        names.update(op.get_friendly_name() for op in ops)
    xml_path = work_dir / "keep-fp32.xml"
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    marked = _mark_xml(xml_path, names)
    return core.read_model(str(xml_path)), marked


def _mark_xml(xml_path: Path, names: set[str]) -> int:
    tree = ET.parse(xml_path)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") not in names or layer.get("type") in ("Parameter", "Result", "Const"):
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(0, rt_info)
        ET.SubElement(rt_info, "attribute", {"name": "precise", "version": "0"})
        marked += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked


def conv_precisions(compiled: Any) -> dict[str, int]:
    """Runtime precision -> number of convolutions of a compiled model that run in it."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and str(info["layerType"].astype(str)) in _CONV_TYPES and "runtimePrecision" in info:
            precision = str(info["runtimePrecision"].astype(str))
            counts[precision] = counts.get(precision, 0) + 1
    return counts


def check_marks(compiled: Any, source: Path) -> dict[str, int]:
    """Raise BuildError unless the compiled model runs some convolutions in FP32 and some in BF16."""
    counts = conv_precisions(compiled)
    if not counts.get("f32") or not counts.get("bf16"):
        import openvino

        raise BuildError(f"OpenVINO {openvino.__version__} did not keep the marked region of {source} in FP32 "
                         f"(convolutions by runtime precision: {counts})",
                         hint="use precision bf16 without keep_fp32, or fp32")
    return counts
