"""The server process's environment switches (ppdeploy.serve.server): event loop and GIL switch interval."""
import pytest

from ppdeploy.core.errors import ConfigError
from ppdeploy.serve import runtime as server


def test_event_loop_choice(monkeypatch):
    monkeypatch.setenv("PPDEPLOY_EVENT_LOOP", "asyncio")
    assert server._event_loop() == "asyncio"
    monkeypatch.setenv("PPDEPLOY_EVENT_LOOP", "uvloop")
    assert server._event_loop() == "uvloop"  # installed with ppdeploy (a dependency)
    monkeypatch.setenv("PPDEPLOY_EVENT_LOOP", "trio")
    with pytest.raises(ConfigError, match="auto, uvloop or asyncio"):
        server._event_loop()


def test_gil_switch_interval(monkeypatch):
    monkeypatch.delenv("PPDEPLOY_GIL_SWITCH_MS", raising=False)
    assert server.gil_switch_interval_s() is None  # Python's own default stays
    monkeypatch.setenv("PPDEPLOY_GIL_SWITCH_MS", "0.5")
    assert server.gil_switch_interval_s() == pytest.approx(0.0005)
    for bad in ("fast", "0", "1000"):
        monkeypatch.setenv("PPDEPLOY_GIL_SWITCH_MS", bad)
        with pytest.raises(ConfigError, match="PPDEPLOY_GIL_SWITCH_MS"):
            server.gil_switch_interval_s()
