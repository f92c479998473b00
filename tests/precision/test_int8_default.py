"""INT8 as users call it (issue 21): the default INT8 on OpenVINO is NNCF's, a missing NNCF is a refusal with the
`pip install` (never a silent QDQ graph that OpenVINO runs slower than FP32), the quantizer's variant follows the
CPU's capabilities, and every reduced-precision engine records its measured speed against FP32 in its cache entry."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from ppdeploy.backends.openvino.backend import OpenVINOBackend
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.deploy.prepared import fastest_variant, quantizer_for

HAS_NNCF = __import__("importlib").util.find_spec("nncf") is not None

BLOCKED = r"""
import sys
sys.modules["nncf"] = None  # as if nncf were not installed
import numpy as np
from ppdeploy.backends.openvino import quantize
from ppdeploy.backends.registry import BACKENDS
from ppdeploy.core.errors import BackendUnavailable
from ppdeploy.deploy import quantizer_for
from ppdeploy.deploy.load import load_model

assert quantize.available() is not None
for call in (lambda: quantizer_for(BACKENDS.get("openvino"), {"quantizer": "auto"}),
             lambda: load_model("ppocr-cls", backend="openvino", precision="int8", cache_dir=sys.argv[1],
                                calib=[{"x": np.zeros((1, 3, 48, 192), np.float32)}] * 8)):
    try:
        call()
    except BackendUnavailable as exc:
        print("REFUSED:", exc, "|", exc.hint)
    else:
        print("NOT REFUSED")
assert quantizer_for(BACKENDS.get("onnxruntime"), None) == "onnxruntime"  # ORT's own INT8 needs no nncf
"""


@pytest.mark.skipif(not HAS_NNCF, reason="nncf not installed (pip install nncf)")
def test_default_int8_on_openvino_is_nncf():
    assert quantizer_for(OpenVINOBackend, None) in ("openvino", "openvino-bf16")
    assert quantizer_for(OpenVINOBackend(), {"quantizer": "auto"}) == ("openvino-bf16" if cpu_supports_bf16()
                                                                       else "openvino")
    assert quantizer_for(OpenVINOBackend, {"quantizer": "onnxruntime"}) == "onnxruntime"  # asked for by name


def test_int8_on_openvino_without_nncf_is_refused_with_the_pip_install(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKED, str(tmp_path / "cache")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    refusals = [ln for ln in out.stdout.splitlines() if ln.startswith(("REFUSED", "NOT REFUSED"))]
    assert len(refusals) == 2 and all(ln.startswith("REFUSED") for ln in refusals), out.stdout
    for line in refusals:
        assert "nncf is not installed" in line and "pip install nncf" in line and "slower than FP32" in line


class _BF16CPUOpenVINO(OpenVINOBackend):
    """OpenVINO on a CPU with avx512_bf16/AMX (this class only answers the capability question differently)."""

    def precision_unavailable(self, precision):
        return None if precision == "bf16" else super().precision_unavailable(precision)


@pytest.mark.skipif(not HAS_NNCF, reason="nncf not installed (pip install nncf)")
def test_int8_variant_follows_the_cpu_capability():
    assert fastest_variant(_BF16CPUOpenVINO(), "openvino") == "openvino-bf16"  # INT8 + BF16 for the rest
    assert fastest_variant(OpenVINOBackend(), "openvino") == ("openvino-bf16" if cpu_supports_bf16() else "openvino")
    assert fastest_variant(OpenVINOBackend(), "onnxruntime") == "onnxruntime"  # no variant of that format


def test_reduced_precision_build_records_its_speed_against_fp32(classifier_onnx, classifier_data, tmp_path, caplog):
    from ppdeploy.core.cache import SIDECAR, EngineCache
    from ppdeploy.deploy import speed
    from ppdeploy.deploy.load import load_model

    data, _ = classifier_data
    kwargs = dict(backend="onnxruntime", precision="int8", calib=data, cache_dir=tmp_path)
    first = load_model(classifier_onnx, **kwargs)
    first.close()
    meta = json.loads((first.engine_dir / SIDECAR).read_text())
    record = meta["notes"][speed.SPEED_NOTE]
    assert record == first.speed_vs_fp32 and record["ratio"] > 0 and record["fp32_ms"] > 0
    assert list(record["input"]) == ["x"] and record["calls"] == speed.CALLS
    assert first.summary()["speed_vs_fp32"] == record
    # An FP32 engine was built (in the same cache) to time against; the FP32 load itself records nothing.
    fp32 = load_model(classifier_onnx, backend="onnxruntime", cache_dir=tmp_path)
    assert fp32.cache_hit and fp32.speed_vs_fp32 is None
    fp32.close()
    # A later load reads the figure from the entry (not measured again) and warns when it says "not faster".
    EngineCache(tmp_path).annotate(first.engine_dir, speed.SPEED_NOTE, {**record, "ratio": 0.72})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ppdeploy.deploy.load"):
        again = load_model(classifier_onnx, **kwargs)
    again.close()
    assert again.speed_vs_fp32["ratio"] == 0.72 and again.speed_vs_fp32["ms"] == record["ms"]
    warned = [r.getMessage() for r in caplog.records if "not faster than FP32" in r.getMessage()]
    assert len(warned) == 1 and "0.72x" in warned[0] and "likely cause" in warned[0]
    assert np.isfinite(record["ms"])
    # OCR leaves a stage that got INT8 as the shared precision at FP32 when its engine does not pay here.
    from ppdeploy.tasks.ocr.builder import pays_off

    assert not pays_off(again) and pays_off(fp32)
    assert pays_off(first) == (record["ratio"] >= speed.NOT_FASTER)


def test_ocr_int8_leaves_a_stage_where_int8_does_not_pay():
    from ppdeploy.tasks.ocr.builder import AUTO_STAGE_PRECISION, stage_precisions

    on_openvino = {s: "openvino" for s in ("det", "cls", "rec")}
    cls_alt = "bf16" if cpu_supports_bf16() else "fp32"
    assert AUTO_STAGE_PRECISION["cls"]["int8"] == ("bf16", "fp32")
    assert stage_precisions("int8", on_openvino) == {"det": "int8", "cls": cls_alt, "rec": "int8"}
    assert stage_precisions({"default": "int8"}, on_openvino)["cls"] == cls_alt
    assert stage_precisions({"default": "int8", "cls": "int8"}, on_openvino)["cls"] == "int8"  # named: as asked
    assert stage_precisions("bf16" if cpu_supports_bf16() else "fp32", on_openvino)["cls"] != "int8"


@pytest.mark.skipif(not HAS_NNCF, reason="nncf not installed (pip install nncf)")
def test_int8_keeps_a_region_unquantized(precision_cache, tmp_path):
    """keep_fp32=["encoder"] under INT8 (what OCR's det gets by default): the encoder's compute ops stay float in
    NNCF's IR, the rest is quantized, and the region is part of the record and the cache key."""
    from ppdeploy.backends.openvino.quantize import region_nodes
    from ppdeploy.core.errors import InputError
    from ppdeploy.precision.build import CalibrationSet, apply

    from .conftest import _onnx_of

    det = _onnx_of("ppocrv4-det")
    rng = np.random.default_rng(0)
    calib = CalibrationSet.from_arrays([{"x": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)}
                                        for _ in range(8)], "noise (det)")
    kwargs = dict(cache=precision_cache, calib=calib, quantizer="openvino", max_loss=0.99, repair=False)
    import openvino as ov

    kept = apply(det, "int8", keep_fp32=["encoder"], **kwargs)
    encoder = set(region_nodes(det, ["encoder"]))
    assert kept.kept_fp32 == ["encoder"] and kept.report["kept_nodes"] == len(encoder) > 0
    assert 0 < kept.report["int8"]["int8_nodes"] < kept.report["int8"]["compute_nodes"]  # the rest is INT8
    assert kept.key_parts()["kept_fp32"] == ["encoder"]
    fed = {t.get_node().get_friendly_name() for op in ov.Core().read_model(str(kept.onnx_path)).get_ordered_ops()
           if op.get_type_name() == "FakeQuantize" for out in op.outputs() for t in out.get_target_inputs()}
    assert fed and not fed & encoder  # no op of the encoder reads an INT8 value, not even its Adds and Multiplies
    with pytest.raises(InputError, match="takes a region"):
        apply(det, "int8", keep_fp32=["some_conv"], **kwargs)
