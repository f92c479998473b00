"""Ahead-of-time TensorRT-RTX builds for a named GPU target on this CPU-only machine (issue 20).

What they prove: `ppdeploy build --backend tensorrt-rtx --target CC` builds a real model with the real RTX
builder and no GPU; the engine's metadata records the target; the target is part of the cache key (another
target is another engine, the same target a cache hit); targets the library cannot build for, and backends
that have no targets, are refused with what is accepted; `doctor` tells building from running; an engine built
for one GPU refuses to load on another before TensorRT is asked.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX builder not installed (pip install 'ppdeploy[tensorrt-rtx]')")

from ppdeploy.backends import get_backend  # noqa: E402
from ppdeploy.backends.tensorrt import TENSORRT, TENSORRT_RTX, traits_of  # noqa: E402
from ppdeploy.backends.tensorrt.backend import _check_target  # noqa: E402
from ppdeploy.core.device import gpu_info  # noqa: E402
from ppdeploy.core.errors import BuildError  # noqa: E402

CLS_SHAPES = "x=1x3x48x192:8x3x48x192:64x3x48x192"


def ppdeploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppdeploy", *args], capture_output=True, text=True, timeout=900)


def build(target: str) -> dict:
    proc = ppdeploy("build", "ppocr-cls", "--backend", "tensorrt-rtx", "--target", target, "--shapes", CLS_SHAPES,
                    "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(bool(gpu_info()), reason="the point is a build without a GPU")
def test_build_for_a_target_without_a_gpu():
    rtx = get_backend("tensorrt-rtx")
    assert rtx.unavailable_reason().startswith("no GPU")  # it cannot run here ...
    assert rtx.build_unavailable_reason("8.9") is None  # ... and builds anyway
    ada = build("8.9")
    assert ada["target"] == "8.9" and ada["backend"] == "tensorrt-rtx"
    meta = json.loads((Path(ada["engine"]) / "engine.json").read_text())
    assert meta["target"] == "8.9" and meta["settings"]["target"] == "8.9"
    assert meta["engine_bytes"] > 10_000 and meta["library"] == "tensorrt-rtx"
    blackwell = build("12.0")
    assert blackwell["engine"] != ada["engine"]  # the target is in the cache key
    assert json.loads((Path(blackwell["engine"]) / "engine.json").read_text())["target"] == "12.0"
    again = build("8.9")
    assert again["cache_hit"] and again["engine"] == ada["engine"]


def test_unbuildable_targets_and_backends_are_refused():
    hopper = ppdeploy("build", "ppocr-cls", "--backend", "tensorrt-rtx", "--target", "9.0", "--shapes", CLS_SHAPES)
    assert hopper.returncode == 2 and "Traceback" not in hopper.stderr
    assert "cannot build for target '9.0'" in hopper.stderr and "8.9" in hopper.stderr, hopper.stderr
    cpu = ppdeploy("build", "ppocr-cls", "--backend", "onnxruntime", "--target", "8.9")
    assert cpu.returncode == 2 and "--target is for backends" in cpu.stderr, cpu.stderr


def test_doctor_tells_building_from_running():
    proc = ppdeploy("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["backends"]
    rtx = rows["tensorrt-rtx"]
    assert rtx["build"] is True and "8.9" in rtx["build_targets"] and "9.0" not in rtx["build_targets"]
    if not gpu_info():
        assert rtx["available"] is False and rtx["reason"].startswith("no GPU")
    assert rows["onnxruntime"]["build"] is rows["onnxruntime"]["available"] is True
    text = ppdeploy("doctor").stdout
    assert "build: yes (--target 7.5, 8.0, 8.6, 8.9" in text and "run:   no: no GPU" in text, text


def test_targets_match_gpus():
    import tensorrt_rtx_bindings as trt

    rtx = traits_of(TENSORRT_RTX, trt)
    assert rtx.target_problem("8.9") is None and "accepts" in rtx.target_problem("9.0")
    assert rtx.target_runs_on("8.9", "8.9") and not rtx.target_runs_on("8.9", "12.0")
    full = traits_of(TENSORRT, type("trt10", (), {"__version__": "10.13.0", "HardwareCompatibilityLevel": object}))
    assert full.targets() == ("ampere+",)
    assert full.target_runs_on("ampere+", "8.6") and not full.target_runs_on("ampere+", "7.5")


def test_an_engine_for_another_gpu_is_refused_at_load(monkeypatch):
    import tensorrt_rtx_bindings as trt

    from ppdeploy.backends.tensorrt import backend as trt_backend

    traits = traits_of(TENSORRT_RTX, trt)
    monkeypatch.setattr(trt_backend, "gpu_info", lambda: [{"name": "NVIDIA GeForce RTX 5090",
                                                           "compute_capability": "12.0"}])
    with pytest.raises(BuildError, match="built for target 8.9.*compute capability 12.0"):
        _check_target(traits, {"target": "8.9"})
    _check_target(traits, {"target": "12.0"})
    _check_target(traits, {"target": None})  # built for this machine's GPU (or portable): nothing to check
