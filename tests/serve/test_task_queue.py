"""Task requests (/v1/<route>) under overload: refused at once when the wait for a pipeline thread would be too
long, and dropped, not run, when their client left while they waited (ppdeploy.serve.http.task_queue). The soak's
first runs showed why: /v1/ocr answered nothing for eight minutes while the pool read pages nobody waited for."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest

from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.serve.batcher import ClientGone, QueueFull
from ppdeploy.serve.http.task_queue import TaskQueue


def test_a_request_whose_client_left_is_dropped_when_a_thread_takes_it():
    q = TaskQueue(threads=1, max_queue=8, max_wait_s=0)
    ran = []
    gone = threading.Event()
    gone.set()
    with pytest.raises(ClientGone):
        q.run(lambda: ran.append(1), gone)
    assert ran == [] and q.dropped == 1
    assert q.run(lambda: "read", threading.Event()) == "read" and q.service_s > 0
    late = TaskQueue(threads=1, max_queue=8, max_wait_s=1.0)
    with pytest.raises(QueueFull, match="waited 3 s"):  # the admission estimate lagged: refused, not run late
        late.run(lambda: ran.append(1), threading.Event(), admitted=time.monotonic() - 3.0)
    assert ran == [] and late.run(lambda: "on time", threading.Event(), admitted=time.monotonic()) == "on time"


def test_admission_refuses_by_expected_wait_and_by_count():
    q = TaskQueue(threads=2, max_queue=3, max_wait_s=100.0)
    q.service_s = 2.0  # two seconds a request
    for _ in range(5):  # two on the threads, three waiting: the count limit
        q.admit()
    assert q.expected_wait_s() == pytest.approx(4.0)  # four ahead of the next, two threads, 2 s each
    with pytest.raises(QueueFull, match="already in progress") as err:
        q.admit()
    assert err.value.status == 429 and err.value.retry_after_s == 2
    q.release()
    q.admit()  # room again
    cold = TaskQueue(threads=2, max_queue=64, max_wait_s=30.0)
    for _ in range(4):  # one running and one waiting per thread
        cold.admit()
    with pytest.raises(QueueFull, match="none has finished yet"):
        cold.admit()
    cold.run(lambda: None, threading.Event())  # the first answer: now the expected wait decides
    cold.admit()
    slow = TaskQueue(threads=1, max_queue=100, max_wait_s=5.0)
    slow.service_s = 3.0
    slow.admit()
    slow.admit()  # one ahead: 3 s
    with pytest.raises(QueueFull, match="would wait about 6 s"):
        slow.admit()
    assert slow.in_flight == 2


@pytest.mark.slow
def test_a_served_ocr_under_overload_answers_429_with_retry_after_instead_of_queueing(tmp_path):
    pages = sorted((p for p in __import__("ppdeploy.bench.pages", fromlist=["x"]).synthetic_pages(tmp_path / "p", 1).images))
    page = pages[0].read_bytes()
    args = ["ocr", "--backend", "onnxruntime", "--task-threads", "1", "--max-task-wait", "0.05"]
    with ServerProcess(args) as server:
        first = server.post("/v1/ocr", content=page, headers={"Content-Type": "image/png"})
        assert first.status_code == 200 and first.json()["lines"]  # a page read: the time per request is known
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: httpx.post(server.url + "/v1/ocr", content=page, timeout=120,
                                                         headers={"Content-Type": "image/png"}), range(6)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1 and "pipeline thread" in refused.json()["error"]
        time.sleep(0.5)
        again = server.post("/v1/ocr", content=page, headers={"Content-Type": "image/png"})
        assert again.status_code == 200 and again.json()["lines"] == first.json()["lines"]
