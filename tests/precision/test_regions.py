"""keep_fp32=["encoder"]: the region rule on ONNX and OpenVINO graphs, and BF16 builds that keep it in FP32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.core.errors import BuildError, ConfigError, InputError
from ppdeploy.graph import regions

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no avx512_bf16/AMX")


def conv(name: str, x: str, out: str, cin: int, cout: int, rng, stride: int = 1) -> tuple:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32),
                                f"{name}_w")
    node = helper.make_node("Conv", [x, w.name], [out], name=name, pads=[1, 1, 1, 1], strides=[stride, stride])
    return node, w


def fpn_model(seed: int = 0) -> onnx.ModelProto:
    """stem -> down1 -> down2 (the encoder, through the deepest map), then an FPN: up(down2) + lateral(down1),
    up(that) + stem, a head conv. `lateral` only feeds the second level, so it is not the encoder's."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    for name, x, out, cin, cout, stride in (("stem", "x", "s", 3, 8, 1), ("down1", "s", "d1", 8, 8, 2),
                                            ("down2", "d1", "d2", 8, 8, 2), ("lateral", "d1", "l1", 8, 8, 1),
                                            ("head", "u2", "y", 8, 1, 1)):
        node, w = conv(name, x, out, cin, cout, rng, stride)
        nodes.append(node)
        inits.append(w)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    inits.append(scales)
    nodes += [
        helper.make_node("Relu", ["d2"], ["e"], name="encoder_out"),
        helper.make_node("Resize", ["e", "", "scales"], ["u1"], name="up1", mode="nearest"),
        helper.make_node("Add", ["u1", "l1"], ["f1"], name="fuse1"),
        helper.make_node("Resize", ["f1", "", "scales"], ["u1b"], name="up2", mode="nearest"),
        helper.make_node("Add", ["u1b", "s"], ["u2"], name="fuse2"),
    ]
    order = ["stem", "down1", "down2", "encoder_out", "lateral", "up1", "fuse1", "up2", "fuse2", "head"]
    nodes.sort(key=lambda n: order.index(n.name))
    graph = helper.make_graph(nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32]),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def test_encoder_is_everything_before_the_first_upsampling():
    assert regions.onnx_encoder_nodes(fpn_model()) == ["stem", "down1", "down2", "encoder_out"]


def test_keep_lists_expand_the_region_and_keep_node_names():
    model = fpn_model()
    assert regions.expand_onnx(model, ["head", "encoder"]) == ["head", "stem", "down1", "down2", "encoder_out"]
    assert regions.expand_onnx(model, ["head"]) == ["head"]


def test_a_model_that_never_upsamples_has_no_encoder():
    model = fpn_model()
    del model.graph.node[5:]
    model.graph.output.pop(0)
    with pytest.raises(InputError, match="has no encoder"):
        regions.expand_onnx(model, ["encoder"], "the classifier")


def test_transposed_convolution_counts_as_upsampling():
    rng = np.random.default_rng(1)
    a, wa = conv("a", "x", "h", 3, 4, rng)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 2, 2)).astype(np.float32), "up_w")
    up = helper.make_node("ConvTranspose", ["h", "up_w"], ["u"], name="up", strides=[2, 2])
    b, wb = conv("b", "u", "y", 1, 1, rng)
    graph = helper.make_graph([a, up, b], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])], [wa, w, wb])
    assert regions.onnx_encoder_nodes(helper.make_model(graph)) == ["a"]


# --- OpenVINO: the marks, as built by the backend -------------------------------------------------------------------

@pytest.fixture(scope="module")
def fpn_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fpn") / "fpn.onnx"
    onnx.save(fpn_model(), str(path))
    return path


def build_and_run(path: Path, out: Path, precision: str, keep: list[str] | None = None) -> dict[str, np.ndarray]:
    from ppdeploy.backends.openvino.backend import OpenVINOBackend

    options = BuildOptions(precision=precision, threads=1, extra={"keep_fp32": keep} if keep else {})
    out.mkdir()
    backend = OpenVINOBackend()
    backend.build(path, out, options)
    with backend.load(out, options) as runner:
        x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32) * 3
        return {k: v.copy() for k, v in runner.infer({"x": x}).items()}


@needs_bf16
def test_bf16_with_the_encoder_kept_runs_the_encoder_in_fp32(fpn_onnx, tmp_path):
    fp32 = build_and_run(fpn_onnx, tmp_path / "fp32", "fp32")
    bf16 = build_and_run(fpn_onnx, tmp_path / "bf16", "bf16")
    mixed = build_and_run(fpn_onnx, tmp_path / "mixed", "bf16", ["encoder"])
    # The encoder's own output: FP32 up to float reordering when kept, BF16 rounding (~1e-2 relative) when not.
    scale = np.abs(fp32["e"]).max()
    assert np.abs(bf16["e"] - fp32["e"]).max() > 1e-3 * scale
    assert np.abs(mixed["e"] - fp32["e"]).max() < 1e-5 * scale
    # ... while the decoder still runs in BF16: the final output is not FP32's.
    assert np.abs(mixed["y"] - fp32["y"]).max() > 1e-5 * np.abs(fp32["y"]).max()


@needs_bf16
def test_the_compiled_model_is_checked_for_the_marks(fpn_onnx, tmp_path):
    import openvino as ov

    from ppdeploy.backends.openvino import mixed as openvino_mixed

    core = ov.Core()
    bf16 = {"INFERENCE_PRECISION_HINT": "bf16"}
    model, marks = openvino_mixed.marked_model(core, fpn_onnx, ["encoder"], tmp_path)
    assert marks.convolutions == {"stem", "down1", "down2"}
    assert openvino_mixed.check_marks(core.compile_model(model, "CPU", bf16), fpn_onnx, marks) == {"f32": 3}
    plain = core.compile_model(str(fpn_onnx), "CPU", bf16)  # what an OpenVINO that ignored the marks would build
    with pytest.raises(BuildError, match="did not keep"):
        openvino_mixed.check_marks(plain, fpn_onnx, marks)


@needs_bf16
def test_a_model_that_is_all_encoder_builds(tmp_path):
    model = fpn_model()
    del model.graph.node[6:]  # stem, down1, down2, encoder_out, lateral, up1: nothing after the upsampling
    model.graph.output.pop(0)
    model.graph.output.insert(0, helper.make_tensor_value_info("u1", TensorProto.FLOAT, None))
    path = tmp_path / "enc.onnx"
    onnx.save(model, str(path))
    out = build_and_run(path, tmp_path / "b", "bf16", ["encoder"])
    assert set(out) == {"u1", "e"}


def test_keep_fp32_is_refused_where_it_cannot_apply(fpn_onnx, tmp_path):
    with pytest.raises(ConfigError, match="applies to precision bf16"):
        build_and_run(fpn_onnx, tmp_path / "a", "fp32", ["encoder"])
    if cpu_supports_bf16():
        with pytest.raises(BuildError, match="region"):
            build_and_run(fpn_onnx, tmp_path / "b", "bf16", ["stem"])


def test_the_kept_region_is_part_of_the_engine_key():
    from ppdeploy.backends.openvino.backend import OpenVINOBackend

    plain, kept = BuildOptions(precision="bf16"), BuildOptions(precision="bf16", extra={"keep_fp32": ["encoder"]})
    backend = OpenVINOBackend()
    assert "keep_fp32_marks" in backend.key_parts(kept) and "keep_fp32_marks" not in backend.key_parts(plain)
    assert plain.key_parts() != kept.key_parts()


# --- through load_model: the precision step gates the variant that runs ----------------------------------------------

@needs_bf16
def test_load_model_gates_and_builds_bf16_with_its_encoder_in_fp32(fpn_onnx, tmp_path):
    from ppdeploy.deploy.load import load_model

    kept = load_model(str(fpn_onnx), backend="openvino", precision="bf16", cache_dir=tmp_path, max_loss=0.5,
                      precision_options={"keep_fp32": ["encoder"]})
    plain = load_model(str(fpn_onnx), backend="openvino", precision="bf16", cache_dir=tmp_path, max_loss=0.5)
    try:
        assert kept.precision_report["kept_fp32"] == ["encoder"]
        assert plain.precision_report.get("kept_fp32") == []
        assert kept.engine_dir != plain.engine_dir
    finally:
        kept.runner.close()
        plain.runner.close()


def test_precision_step_refuses_node_names_for_bf16_and_takes_regions_for_int8(fpn_onnx, tmp_path):
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.precision import build as precision

    with pytest.raises(InputError, match="region"):
        precision.apply(fpn_onnx, "bf16", cache=EngineCache(tmp_path), keep_fp32=["stem"])
    # INT8 takes keep_fp32 regions since issue 21 (det's encoder stays float): what stops this call is the missing
    # calibration data, not the region
    with pytest.raises(InputError, match="INT8 needs calibration data"):
        precision.apply(fpn_onnx, "int8", cache=EngineCache(tmp_path), keep_fp32=["encoder"])


def test_fp16_keeps_the_encoder_nodes_in_fp32(fpn_onnx, tmp_path):
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.precision import build as precision

    result = precision.apply(fpn_onnx, "fp16", cache=EngineCache(tmp_path), keep_fp32=["encoder"], max_loss=0.5)
    graph = onnx.load(str(result.onnx_path)).graph
    weights = {i.name: i.data_type for i in graph.initializer}
    assert weights["stem_w"] == weights["down2_w"] == TensorProto.FLOAT  # the encoder's convolutions stay FP32
    assert weights["head_w"] == TensorProto.FLOAT16  # the decoder's are converted
