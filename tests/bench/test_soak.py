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
    assert report["rss_samples"] and report["rss_warm_mb"] == report["rss_start_mb"]  # too short for a warm-up
    minute = report["per_minute"][0]
    assert minute["ocr"]["requests"] > 0 and minute["v2"]["requests"] > 0 and minute["rss_mb"] > 0
    assert code == 0 and "| minute | /v1/ocr n | p50 ms | p99 ms | v2 n |" in capsys.readouterr().out


def test_the_process_tree_is_found_and_measured():
    import os

    assert os.getpid() in soak.tree_pids(os.getpid()) and soak.tree_rss_mb(os.getpid()) > 10


def test_a_refused_connection_is_never_accepted_so_neither_owed_an_answer_nor_a_5xx():
    """After SIGTERM the port closes and clients are refused: those are not unanswered requests (the first fault
    run counted 28,627 of them as 5xx). Outside a fault window a refusal still fails the run."""
    import socket
    import threading
    import time

    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    load = soak._Load(url, [b"page"], [(b"{}", None)], [], malformed=0.0, seed=0)
    t0 = time.monotonic()
    client = threading.Thread(target=load.client)
    client.start()
    time.sleep(0.3)
    load.stop.set()
    client.join(10)
    assert load.records and {r[2] for r in load.records} == {soak.REFUSED}
    report = soak.SoakReport(clients=1, seconds=0.3, workers=1, faults=[])
    soak._summarize(report, load, [], t0)
    assert report.count_5xx == 0 and report.refused_outside_faults == len(load.records) and not report.ok
    report = soak.SoakReport(clients=1, seconds=0.3, workers=1, faults=["sigterm"])
    soak._summarize(report, load, [(t0, t0 + 60)], t0)
    assert report.refused_outside_faults == 0 and report.ok
