"""Ray is an optional extra: without it, `ppdeploy serve --ray` fails with an install hint, and nothing else
imports it (the serve CLI only registers the flags)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.tensors import IOSpec, TensorSpec


def test_missing_ray_is_a_clear_error(monkeypatch):
    from ppdeploy.serve import ray as ppray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the extra is not installed
    with pytest.raises(PPDeployError, match="Ray Serve is not installed") as info:
        ppray.require_ray()
    assert "ppdeploy[ray]" in info.value.hint
    with pytest.raises(PPDeployError, match="not installed"):
        ppray.build_app([])


def test_cli_registers_ray_flags_without_importing_ray():
    code = ("import sys; from ppdeploy.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['serve', 'ocr', '--ray', '--replicas', '2', '--num-gpus-per-replica', '0.5']); "
            "assert (a.ray, a.replicas, a.num_gpus_per_replica) == (True, 2, 0.5), a; "
            "assert 'ray' not in sys.modules, 'ray imported at CLI start'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class AddOneRunner(Runner):
    """y = x + 1 in numpy; refuses inputs holding negative values, as a backend failing on one request would."""

    backend = "numpy"

    def __init__(self):
        super().__init__(IOSpec((TensorSpec("x", "float32", (None, 4)),), (TensorSpec("y", "float32", (None, 4)),)))
        self.calls: list[int] = []

    def _infer(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise RuntimeError("negative input")
        return {"y": x + 1}


def test_run_grouped_batches_same_shapes_and_isolates_a_failing_request():
    from ppdeploy.serve.ray import run_grouped

    runner = AddOneRunner()
    requests = [{"x": np.full((n, 4), n, np.float32)} for n in (1, 2, 3)]
    results = run_grouped(runner, requests, batchable=True)
    assert runner.calls == [6]  # one execution for the three requests
    for n, result in zip((1, 2, 3), results):
        np.testing.assert_array_equal(result["outputs"]["y"], np.full((n, 4), n + 1))

    runner.calls.clear()
    requests.insert(1, {"x": -np.ones((1, 4), np.float32)})
    results = run_grouped(runner, requests, batchable=True)
    assert runner.calls == [7, 1, 1, 2, 3]  # the batch fails, then each request alone
    assert results[1] == {"error": "RuntimeError: negative input", "status": 500}
    assert [r["outputs"]["y"][0, 0] for i, r in enumerate(results) if i != 1] == [2, 3, 4]

    runner.calls.clear()
    wrong_dtype = run_grouped(runner, [{"x": np.zeros((1, 4), np.float64)}], batchable=True)
    assert wrong_dtype[0]["status"] == 400 and "float64" in wrong_dtype[0]["error"]
