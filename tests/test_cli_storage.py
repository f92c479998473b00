"""A cache the machine will not let us write is the user's to fix: `ppdeploy` says which folder and what to do,
with exit code 2, instead of a traceback (issue 18: the read-only cache fault under load)."""
from __future__ import annotations

from ppdeploy.cli import main


def test_an_unwritable_cache_is_a_clear_error_not_a_traceback(monkeypatch, capsys):
    # /sys refuses new folders even to root (which ignores file modes), so this holds in CI as root too.
    monkeypatch.setenv("PPDEPLOY_CACHE", "/sys/ppdeploy-cache")
    code = main(["build", "ppocr-cls", "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "ppdeploy build: error:" in err and "/sys/ppdeploy-cache" in err and "Traceback" not in err
    assert "PPDEPLOY_CACHE" in err.split("hint:")[1]
