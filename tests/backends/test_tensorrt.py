"""TensorRT backend tests that run without a GPU, against the real TensorRT-RTX builder.

What they prove: real models parse and build with dynamic optimization profiles; parser errors name the node and
op; builder options, library and GPU identity all reach the cache key; a corrupt cached engine is rebuilt; shape
profile violations are refused before any GPU call. What they cannot prove here: that an engine executes (the
runtime needs a supported GPU; see test_tensorrt_gpu.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed (pip install 'ppdeploy[tensorrt-rtx]')")

from ppdeploy.backends import get_backend  # noqa: E402
from ppdeploy.backends import tensorrt as trtmod  # noqa: E402
from ppdeploy.backends.base import BuildOptions  # noqa: E402
from ppdeploy.core.cache import EngineCache, key_of, sha256_file  # noqa: E402
from ppdeploy.core.errors import BuildError, InputError  # noqa: E402
from ppdeploy.core.shapes import InputRange, ShapeProfile  # noqa: E402
from ppdeploy.core.tensors import TensorSpec

OCR_PROFILES = {
    "ppocrv4-det": {"x": {"min": [1, 3, 32, 32], "opt": [1, 3, 640, 640], "max": [4, 3, 1280, 1280]}},
    "ppocrv4-rec": {"x": {"min": [1, 3, 48, 16], "opt": [8, 3, 48, 320], "max": [32, 3, 48, 1280]}},
    "ppocr-cls": {"x": {"min": [1, 3, 48, 192], "opt": [8, 3, 48, 192], "max": [64, 3, 48, 192]}},
}


def ocr_onnx(name: str) -> Path:
    """The zoo model as ONNX: from PPDEPLOY_TEST_ONNX_DIR (device runs carry them) or converted (cached)."""
    carried = os.environ.get("PPDEPLOY_TEST_ONNX_DIR")
    if carried:
        return Path(carried) / f"{name}.onnx"
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    return to_onnx(detect(name)).onnx_path


@pytest.fixture(scope="module")
def rtx():
    return get_backend("tensorrt-rtx")


@pytest.fixture(scope="module")
def cls_engine(tmp_path_factory, rtx):
    out = tmp_path_factory.mktemp("cls-engine")
    rtx.build(ocr_onnx("ppocr-cls"), out, BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES["ppocr-cls"])))
    return out


def _unsupported_op_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu_0"),
             helper.make_node("Unique", ["r"], ["y"], name="dedupe_values", sorted=1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


# ------------------------------------------------------------------------------------------------ real builds

@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocrv4-det", "ppocrv4-rec"])
def test_ocr_models_build_with_dynamic_profiles(name, rtx, tmp_path):
    onnx_path = ocr_onnx(name)
    rtx.build(onnx_path, tmp_path, BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES[name]),
                                                extra={"workspace_mib": 512}))
    engine = tmp_path / trtmod.ENGINE_FILE
    assert engine.stat().st_size > 1_000_000  # real kernels/weights, not a stub
    meta = trtmod.read_meta(tmp_path)
    assert meta["library"] == "tensorrt-rtx" and meta["version"] == rtx.version()
    assert meta["profiles"] == [OCR_PROFILES[name]]
    (x,) = meta["inputs"]
    assert x["name"] == "x" and x["dtype"] == "float32" and None in x["shape"]  # dynamic dims survived parsing
    assert meta["settings"]["workspace_mib"] == 512 and meta["settings"]["strongly_typed"] is True
    assert meta["build_s"] > 0 and "Building engine" in meta["phases_s"]  # progress monitor saw the phases
    assert meta["timing_cache"] is None  # RTX has no timing cache (it has a runtime cache instead)


def test_cls_engine_metadata_and_io(cls_engine):
    meta = trtmod.read_meta(cls_engine)
    io = trtmod.meta_io(meta)
    assert io.inputs[0].shape == (None, 3, None, None)  # as paddle2onnx exported it
    assert io.outputs[0].dtype == "float32" and io.outputs[0].shape[-1] == 2
    assert trtmod.meta_profiles(meta)[0]["x"].max == (64, 3, 48, 192)


@pytest.mark.slow
def test_exported_paddle3_classifier_builds(rtx, tmp_path):
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.demo import shapes_classifier
    from ppdeploy.source.model import detect

    model_dir = shapes_classifier.export(shapes_classifier.default_dir())
    onnx_path = to_onnx(detect(str(model_dir))).onnx_path
    shapes = ShapeProfile.from_samples([{"x": (1, 3, 64, 64)}, {"x": (16, 3, 64, 64)}, {"x": (16, 3, 64, 64)}])
    rtx.build(onnx_path, tmp_path, BuildOptions(shapes=shapes))
    meta = trtmod.read_meta(tmp_path)
    assert meta["profiles"] == [{"x": {"min": [1, 3, 64, 64], "opt": [16, 3, 64, 64], "max": [16, 3, 64, 64]}}]
    assert meta["outputs"][0]["shape"][-1] == len(shapes_classifier.LABELS)


def test_two_profiles_and_version_compatible_engine(rtx, tmp_path):
    narrow = {"x": {"min": [1, 3, 48, 192], "opt": [1, 3, 48, 192], "max": [4, 3, 48, 192]}}
    wide = {"x": {"min": [5, 3, 48, 192], "opt": [32, 3, 48, 192], "max": [64, 3, 48, 192]}}
    rtx.build(ocr_onnx("ppocr-cls"), tmp_path,
              BuildOptions(shapes=ShapeProfile.from_dict(narrow), extra={"profiles": [wide], "version_compatible": True}))
    meta = trtmod.read_meta(tmp_path)
    assert meta["settings"]["version_compatible"] is True
    profiles = trtmod.meta_profiles(meta)
    assert len(profiles) == 2
    assert trtmod.select_profile(profiles, {"x": (3, 3, 48, 192)}) == 0
    assert trtmod.select_profile(profiles, {"x": (40, 3, 48, 192)}) == 1


# ------------------------------------------------------------------------------------------------ build errors

def test_unsupported_op_reports_node_and_op(rtx, tmp_path):
    model = _unsupported_op_model(tmp_path / "bad.onnx")
    with pytest.raises(BuildError) as err:
        rtx.build(model, tmp_path / "out", BuildOptions())
    text = str(err.value)
    assert "dedupe_values" in text and "Unique" in text and "UNSUPPORTED_NODE" in text
    assert "TensorRT-RTX" in text and err.value.hint


def test_dynamic_input_without_profile_is_refused(rtx, tmp_path):
    with pytest.raises(BuildError, match=r"input x: float32\[\?,3,48,\?\] has dynamic dims"):
        rtx.build(ocr_onnx("ppocrv4-rec"), tmp_path, BuildOptions())


def test_plan_profiles_checks_names_ranks_and_fixed_dims():
    spec = [TensorSpec("x", "float32", (None, 3, 48, None))]
    ok = trtmod.plan_profiles(spec, BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES["ppocrv4-rec"])))
    assert ok[0]["x"].opt == (8, 3, 48, 320)
    bad_channel = {"x": {"min": [1, 1, 48, 16], "opt": [1, 3, 48, 16], "max": [1, 3, 48, 16]}}
    with pytest.raises(BuildError, match="dim 1 of input 'x'.*fixes it to 3"):
        trtmod.plan_profiles(spec, BuildOptions(shapes=ShapeProfile.from_dict(bad_channel)))
    with pytest.raises(BuildError, match="rank 3"):
        trtmod.plan_profiles(spec, BuildOptions(shapes=ShapeProfile.from_dict(
            {"x": {"min": [1, 3, 48], "opt": [1, 3, 48], "max": [1, 3, 48]}})))
    with pytest.raises(BuildError, match=r"unknown input\(s\) \['image'\]"):
        trtmod.plan_profiles(spec, BuildOptions(shapes=ShapeProfile.from_dict(
            {"image": {"min": [1], "opt": [1], "max": [1]}})))
    static = trtmod.plan_profiles([TensorSpec("x", "float32", (1, 3, 8, 8))], BuildOptions())
    assert static == [{"x": InputRange((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))}]


def test_bad_builder_options_are_build_errors():
    with pytest.raises(BuildError, match="optimization_level"):
        trtmod.BuilderSettings.from_options(BuildOptions(extra={"optimization_level": 9}))
    with pytest.raises(BuildError, match="workspace_mib"):
        trtmod.BuilderSettings.from_options(BuildOptions(extra={"workspace_mib": 0}))


# ------------------------------------------------------------------------------------------------ cache keys

def _full_key(backend, model: Path, options: BuildOptions, gpu: dict | None) -> str:
    """The engine key as ppdeploy.deploy.load composes it, with the GPU identity given explicitly."""
    return key_of({"model": {"onnx": sha256_file(model), "precision": {"precision": options.precision}},
                   "backend": backend.key_parts(options), "options": options.key_parts(), "device": {"gpu": gpu}})


def test_cache_key_changes_with_every_input(rtx, tmp_path):
    cls = ocr_onnx("ppocr-cls")
    other = _unsupported_op_model(tmp_path / "other.onnx")
    h100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "580.159.04", "memory_mib": "81559"}
    base = BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES["ppocr-cls"]))
    wider = dict(OCR_PROFILES["ppocr-cls"])
    wider = {"x": {**wider["x"], "max": [128, 3, 48, 192]}}
    variants = {
        "base": _full_key(rtx, cls, base, h100),
        "model": _full_key(rtx, other, base, h100),
        "precision": _full_key(rtx, cls, BuildOptions(precision="fp16", shapes=base.shapes), h100),
        "profile": _full_key(rtx, cls, BuildOptions(shapes=ShapeProfile.from_dict(wider)), h100),
        "gpu": _full_key(rtx, cls, base, {**h100, "name": "NVIDIA RTX 4090", "compute_capability": "8.9"}),
        "driver": _full_key(rtx, cls, base, {**h100, "driver": "590.10"}),
        "library": _full_key(get_backend("tensorrt"), cls, base, h100) if _trt_full_importable() else "n/a-library",
    }
    for opt, value in [("workspace_mib", 1024), ("optimization_level", 5), ("tf32", True),
                       ("version_compatible", True), ("hardware_compatible", True),
                       ("profiles", [{"x": {"min": [65, 3, 48, 192], "opt": [65, 3, 48, 192], "max": [99, 3, 48, 192]}}])]:
        variants[opt] = _full_key(rtx, cls, BuildOptions(shapes=base.shapes, extra={opt: value}), h100)
    assert len(set(variants.values())) == len(variants), variants
    # Library identity is in the backend part itself, so a TensorRT-RTX upgrade changes every key.
    parts = rtx.key_parts(base)
    assert parts["library"] == "tensorrt_rtx_bindings" and parts["version"] == rtx.version()
    assert parts["builder"]["workspace_mib"] == trtmod.BuilderSettings().workspace_mib  # defaults are spelled out


def _trt_full_importable() -> bool:
    return trtmod.import_library(trtmod.TENSORRT)[0] is not None


def test_corrupt_cached_engine_is_rebuilt(rtx, tmp_path):
    cache = EngineCache(tmp_path / "cache")
    options = BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES["ppocr-cls"]))
    model = ocr_onnx("ppocr-cls")
    parts = {"model": sha256_file(model), "backend": rtx.key_parts(options)}
    first = cache.get_or_build("engine", parts, lambda out: rtx.build(model, out, options))
    engine = first.path / trtmod.ENGINE_FILE
    good = engine.read_bytes()
    engine.write_bytes(good[: len(good) // 2] + b"\0" * 64)  # torn write / disk corruption
    second = cache.get_or_build("engine", parts, lambda out: rtx.build(model, out, options))
    assert not second.hit and second.path == first.path
    rebuilt = (second.path / trtmod.ENGINE_FILE).read_bytes()
    assert len(rebuilt) > len(good) // 2 + 64 and cache.check(second.path, parts) is None


# ------------------------------------------------------------------------------------------------ runtime (pure parts)

def test_profile_violations_are_refused_before_any_gpu_work(cls_engine):
    meta = trtmod.read_meta(cls_engine)
    narrow = {"x": InputRange((1, 3, 48, 192), (1, 3, 48, 192), (4, 3, 48, 192))}
    wide = {"x": InputRange((9, 3, 48, 192), (16, 3, 48, 192), (16, 3, 48, 192))}
    meta = {**meta, "profiles": [{n: {"min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for n, r in p.items()}
                                 for p in (narrow, wide)]}
    # engine, library and CUDA are None: any attempt to touch the GPU side would raise AttributeError, not InputError.
    runner = trtmod.TensorRTRunner(None, trtmod.traits_of(trtmod.TENSORRT_RTX, _rtx_module()), None, meta, None)
    with pytest.raises(InputError, match="outside the build profile"):  # base Runner: outside the envelope
        runner.infer(np.zeros((17, 3, 48, 192), np.float32))
    with pytest.raises(InputError, match="fit none of the engine's optimization profiles"):  # gap between profiles
        runner.infer(np.zeros((6, 3, 48, 192), np.float32))
    with pytest.raises(InputError, match="outside the build profile"):
        runner.infer(np.zeros((1, 3, 48, 100), np.float32))
    with pytest.raises(InputError, match="dtype float64"):
        runner.infer(np.zeros((1, 3, 48, 192), np.float64))


def _rtx_module():
    import tensorrt_rtx_bindings

    return tensorrt_rtx_bindings


def test_buffer_sizes_follow_profile_max():
    io = trtmod.meta_io({"inputs": [{"name": "x", "dtype": "float16", "shape": [None, 3, 48, None]}],
                         "outputs": [{"name": "y", "dtype": "float32", "shape": [None, None, 6625]}]})
    profile = {"x": InputRange((1, 3, 48, 16), (8, 3, 48, 320), (32, 3, 48, 1280))}
    sizes = trtmod.profile_buffer_sizes(io, profile, {"y": 32 * 160 * 6625 * 4})
    assert sizes == {"x": 32 * 3 * 48 * 1280 * 2, "y": 32 * 160 * 6625 * 4}


def test_envelope_spans_all_profiles():
    a = {"x": InputRange((1, 3, 48, 16), (1, 3, 48, 320), (4, 3, 48, 320))}
    b = {"x": InputRange((8, 3, 48, 16), (16, 3, 48, 640), (32, 3, 48, 1280))}
    env = trtmod.envelope([a, b]).ranges["x"]
    assert env.min == (1, 3, 48, 16) and env.max == (32, 3, 48, 1280)


# ------------------------------------------------------------------------------------------------ availability

def test_unavailable_reasons_are_precise():
    """Every machine checks something: the reason each backend gives is the one its library and GPU call for."""
    from ppdeploy.core.device import gpu_info

    gpus = gpu_info()
    cc = str(gpus[0].get("compute_capability", "")) if gpus else None
    for name, flavour in (("tensorrt", trtmod.TENSORRT), ("tensorrt-rtx", trtmod.TENSORRT_RTX)):
        reason = get_backend(name).unavailable_reason()
        label = "TensorRT-RTX" if flavour is trtmod.TENSORRT_RTX else "TensorRT"
        if trtmod.import_library(flavour)[0] is None:
            assert reason is not None and reason.startswith(("library missing: ", "library broken:")), (name, reason)
        elif not gpus:
            assert reason is not None and reason.startswith(f"no GPU: {label} "), (name, reason)
            assert "is installed but no NVIDIA GPU is visible" in reason
        elif flavour is trtmod.TENSORRT_RTX and cc == "9.0":
            assert reason is not None and reason.startswith("unsupported GPU:") and "9.0" in reason, reason
        else:  # a GPU it supports: it runs, unless the CUDA runtime binding is missing (and then it says so)
            assert reason is None or reason.startswith("library missing: cuda-python"), (name, reason)


def test_rtx_traits_know_hopper_is_unsupported():
    traits = trtmod.traits_of(trtmod.TENSORRT_RTX, _rtx_module())
    assert "8.9" in traits.supported_cc and "9.0" not in traits.supported_cc
    assert "does not support compute capability 9.0" in traits.cc_problem("9.0")
    assert traits.cc_problem("8.6") is None
    assert traits.runtime_cache and not traits.timing_cache and not traits.hardware_compat_level


def test_load_without_gpu_is_a_clear_error(cls_engine, rtx):
    from ppdeploy.core.device import gpu_info

    if gpu_info():
        pytest.skip("a GPU is present; the device tests cover loading")
    with pytest.raises(BuildError, match=r"cuda-python is not installed|cudaSetDevice failed: cudaError\w+"):
        rtx.load(cls_engine, BuildOptions())


def test_aux_caches_live_beside_the_entry(tmp_path):
    traits = trtmod.traits_of(trtmod.TENSORRT_RTX, _rtx_module())
    entry = tmp_path / "engine" / "abc123"
    path = trtmod.aux_cache_path(entry, "runtime", traits)
    assert path.parent == entry.parent and traits.version in path.name and path.name.startswith("_runtime-tensorrt-rtx")


def test_gpu_identity_follows_cuda_visible_devices():
    from ppdeploy.core.device import visible_rows

    rows = [["0", "GPU-5779c555", "NVIDIA H100 80GB HBM3", "9.0", "580.159.04", "81559"],
            ["1", "GPU-0b1e2f00", "NVIDIA L4", "8.9", "580.159.04", "23034"]]
    assert visible_rows(rows, None) == rows
    assert visible_rows(rows, "1") == [rows[1]]  # CUDA device 0 is then the L4: engines must be keyed on it
    assert visible_rows(rows, "GPU-0b1e,0") == [rows[1], rows[0]]
    assert visible_rows(rows, "") == [] and visible_rows(rows, "7,0") == []  # CUDA stops at the first bad entry


def test_progress_bar_draws_build_phases(rtx, tmp_path, capsys):
    options = BuildOptions(shapes=ShapeProfile.from_dict(OCR_PROFILES["ppocr-cls"]), extra={"progress": True})
    rtx.build(ocr_onnx("ppocr-cls"), tmp_path, options)
    err = capsys.readouterr().err
    assert "Building engine ..." in err and "Building engine from subgraph ..." in err
    assert re.search(r"Building engine: \d+\.\d\d s", err)  # top phase reports its time when done
