"""ppdeploy.bench.soak's smoke mode against a real `ppdeploy serve ocr`: the harness runs end to end, the server
answers no 5xx and every accepted valid request correctly, and the report carries its figures."""
from __future__ import annotations

import json

import pytest

from ppdeploy.bench import soak


@pytest.mark.slow
def test_the_soak_smoke_mode_runs_and_finds_no_5xx_and_no_wrong_answer(tmp_path, capsys):
    out = tmp_path / "soak.json"
    code = soak.main(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["by_status"].get("200", 0) > 0
    assert report["by_status"].get("400", 0) > 0  # the malformed share was sent and refused as the client's error
    assert report["count_5xx"] == 0 and report["wrong_answers"] == 0, report
    assert report["rss_start_mb"] > 0 and report["rss_end_mb"] > 0 and report["per_minute"]
    assert code == 0 and "| minute | requests | p50 ms | p99 ms |" in capsys.readouterr().out


def test_the_process_tree_is_found_and_measured():
    import os

    assert os.getpid() in soak.tree_pids(os.getpid()) and soak.tree_rss_mb(os.getpid()) > 10
