"""Ray is an optional extra: without it, `ppdeploy serve --ray` fails with an install hint, and nothing else
imports it (the serve CLI only registers the flags)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ppdeploy.errors import PPDeployError


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
