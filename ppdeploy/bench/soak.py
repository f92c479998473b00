"""Soak and faults under load against a real `ppdeploy serve ocr` (`python -m ppdeploy.bench.soak`).

N client threads for D seconds send a mix of valid /v1/ocr pages, valid v2 tensor requests (the cls model) and
`malformed` share of bad requests. Recorded: RSS of the server's process tree at start and end, p50/p99 per
minute, the count of 5xx, and whether every accepted valid request's answer equals its reference (the answer to
the same request on the idle server before the load; v2 outputs within 1e-4). Faults (`--faults`), each while
the load runs: `kill-worker` (kill -9 of one --workers child), `kill-engine` (kill -9 of an engine process),
`readonly-cache` (the cache dir made read-only), `corrupt-cache` (every cached engine file truncated before
the start: it must be rebuilt) and `sigterm` (SIGTERM mid-load: every accepted request answered). Only the
requests in flight at a kill may fail, with 503. Writes JSON and a markdown block. `--smoke`: seconds, few
clients (what the test runs).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from ppdeploy.bench.pages import synthetic_pages
from ppdeploy.bench.server_process import ServerProcess
from ppdeploy.bench.stats import percentile
from ppdeploy.core.cache import default_root as default_cache_root

V2_PATH = "/v2/models/ppocr-cls/infer"
FAULTS = ("kill-worker", "kill-engine", "readonly-cache", "corrupt-cache", "sigterm")
REFUSED, LOST = 0, 599  # statuses recorded for a refused connection and one lost after the request was sent
WARMUP_S = 120.0
RSS_EVERY_S = 5.0
_MALFORMED = [
    (b'{"inputs": [' * 3000, {}),  # deeply nested
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 48, -1], "data": []}]}', {}),
    (b"not json at all", {}),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 99}}]}',
     {"Inference-Header-Content-Length": "90"}),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, {"Content-Type": "image/png", "_route": "ocr"}),
]


@dataclass
class SoakReport:
    clients: int
    seconds: float
    workers: int
    faults: list[str]
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    count_5xx: int = 0
    count_5xx_outside_faults: int = 0
    wrong_answers: int = 0
    refused_outside_faults: int = 0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0  # at the end of the warm-up (WARMUP_S), or at the start of a shorter run
    rss_end_mb: float = 0.0
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since load start, MB)
    per_minute: list[dict] = field(default_factory=list)
    fault_notes: list[str] = field(default_factory=list)
    sigterm_unanswered: int = 0

    @property
    def rss_growth_pct(self) -> float:
        return 100.0 * (self.rss_end_mb - self.rss_warm_mb) / self.rss_warm_mb if self.rss_warm_mb else 0.0

    @property
    def ok(self) -> bool:
        return (self.count_5xx_outside_faults == 0 and self.wrong_answers == 0 and self.sigterm_unanswered == 0
                and self.refused_outside_faults == 0)

    def markdown(self) -> str:
        lines = [f"Soak: {self.clients} clients, {self.seconds:g} s, --workers {self.workers}, faults: "
                 f"{', '.join(self.faults) or 'none'}", "",
                 "| minute | /v1/ocr n | p50 ms | p99 ms | v2 n | p50 ms | p99 ms | RSS MB |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for m in self.per_minute:
            cells = [str(m["minute"])]
            for kind in ("ocr", "v2"):
                k = m.get(kind) or {}
                cells += [str(k.get("requests", 0)), f"{k['p50_ms']:.1f}" if k else "-", f"{k['p99_ms']:.1f}" if k else "-"]
            cells.append(f"{m['rss_mb']:.0f}" if m.get("rss_mb") else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"- requests: {self.requests}; by status: {self.by_status} (0: connection refused, never "
                      "accepted; 599: connection lost after the request was sent)",
                  f"- 5xx: {self.count_5xx} ({self.count_5xx_outside_faults} outside fault windows); refused "
                  f"connections outside fault windows: {self.refused_outside_faults}",
                  f"- wrong answers to accepted valid requests: {self.wrong_answers}",
                  f"- RSS of the server's process tree: {self.rss_start_mb:.0f} MB at start, {self.rss_warm_mb:.0f} MB "
                  f"after warm-up, {self.rss_end_mb:.0f} MB at the end: {self.rss_growth_pct:+.1f} % after warm-up",
                  *[f"- {n}" for n in self.fault_notes]]
        return "\n".join(lines)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class _Load:
    def __init__(self, url: str, pages: list[bytes], v2: list[tuple[bytes, np.ndarray]], refs: list[dict],
                 malformed: float, seed: int):
        self.url, self.pages, self.v2, self.refs = url, pages, v2, refs
        self.malformed = malformed
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int, str]] = []  # (end time, ms, status, kind: ocr | v2 | bad)
        self.wrong = 0
        self.stop = threading.Event()
        self.in_flight = 0

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set():
                with self.lock:
                    roll, pick = self.rng.random(), self.rng.randrange(1 << 30)
                    self.in_flight += 1
                start = time.perf_counter()
                kind, check = "bad", None
                try:
                    if roll < self.malformed:
                        body, headers = _MALFORMED[pick % len(_MALFORMED)]
                        headers = dict(headers)
                        path = "/v1/ocr" if headers.pop("_route", None) else V2_PATH
                        r = http.post(path, content=body, headers=headers)
                    elif roll < self.malformed + (1 - self.malformed) / 2:
                        i = pick % len(self.pages)
                        r = http.post("/v1/ocr", content=self.pages[i], headers={"Content-Type": "image/png"})
                        kind, check = "ocr", ("ocr", i)
                    else:
                        i = pick % len(self.v2)
                        r = http.post(V2_PATH, content=self.v2[i][0])
                        kind, check = "v2", ("v2", i)
                    status = r.status_code
                except httpx.ConnectError:
                    status = REFUSED  # never accepted: nothing listens (after SIGTERM, say)
                except httpx.HTTPError:
                    status = LOST  # accepted, then the connection broke (a killed worker): counted with the 5xx
                ms = (time.perf_counter() - start) * 1e3
                wrong = False
                if status == 200 and check is not None:
                    wrong = not self._correct(check, r)
                with self.lock:
                    self.in_flight -= 1
                    self.records.append((time.monotonic(), ms, status, kind))
                    self.wrong += wrong
                if status == REFUSED:
                    time.sleep(0.05)  # a closed port refuses at once: do not spin

    def _correct(self, check: tuple, r: httpx.Response) -> bool:
        kind, i = check
        if kind == "ocr":
            return _texts(r.json()) == self.refs[i]["texts"]
        got = np.array(r.json()["outputs"][0]["data"], np.float32)
        return bool(np.allclose(got, self.v2[i][1].ravel(), atol=1e-4, rtol=0))


def _texts(answer: dict) -> list[str]:
    return [line.get("text") for line in answer.get("lines", answer.get("results", []))]


def _prepare(url: str, work: Path, n_pages: int) -> tuple[list[bytes], list[tuple[bytes, np.ndarray]], list[dict]]:
    pages = [p.read_bytes() for p in synthetic_pages(work / "pages", n_pages).images]
    rng = np.random.default_rng(0)
    v2, refs = [], []
    with httpx.Client(base_url=url, timeout=300) as http:
        global V2_PATH
        names = [m["name"] for m in http.post("/v2/repository/index").json()]
        V2_PATH = f"/v2/models/{next(n for n in names if 'cls' in n)}/infer"  # the served cls model
        for page in pages:
            r = http.post("/v1/ocr", content=page, headers={"Content-Type": "image/png"})
            r.raise_for_status()
            refs.append({"texts": _texts(r.json())})
        for _ in range(4):
            x = rng.standard_normal((1, 3, 48, 192), dtype=np.float32)
            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                           "data": x.ravel().tolist()}]}).encode()
            r = http.post(V2_PATH, content=body)
            r.raise_for_status()
            v2.append((body, np.array(r.json()["outputs"][0]["data"], np.float32)))
    return pages, v2, refs


def _corrupt_cache(cache: Path) -> int:
    n = 0
    for p in cache.rglob("*"):
        if p.is_file() and p.suffix in (".onnx", ".xml", ".bin", ".engine", ".plan") and p.stat().st_size > 64:
            with open(p, "r+b") as f:
                f.truncate(p.stat().st_size // 2)
            n += 1
    return n


def run_soak(clients: int, seconds: float, *, workers: int = 1, faults: tuple[str, ...] = (),
             malformed: float = 0.1, work: Path, pages: int = 2, extra_args: tuple[str, ...] = ()) -> SoakReport:
    work.mkdir(parents=True, exist_ok=True)
    # the cache faults get a cache of their own (built at the first start); otherwise the user's cache
    own_cache = any(f in faults for f in ("readonly-cache", "corrupt-cache"))
    cache = work / "cache" if own_cache else default_cache_root()
    env = {"PPDEPLOY_CACHE": str(cache)} if own_cache else {}
    report = SoakReport(clients, seconds, workers, list(faults))
    if "corrupt-cache" in faults:
        if not cache.is_dir():  # fill it first, so there are entries to corrupt
            ServerProcess(["ocr"], env=env).start().stop()
        report.fault_notes.append(f"corrupt-cache: truncated {_corrupt_cache(cache)} cached engine files before "
                                  "the start")
    args = ["ocr", *(["--workers", str(workers)] if workers > 1 else []),
            *(["--engine-process"] if "kill-engine" in faults else []), *extra_args]
    server = ServerProcess(args, log_path=work / "server.log", env=env or None).start()
    fault_windows: list[tuple[float, float]] = []
    sigterm_at: float | None = None
    try:
        assert server.proc is not None and server.url is not None
        page_bytes, v2, refs = _prepare(server.url, work, pages)
        if "corrupt-cache" in faults:
            report.fault_notes.append("corrupt-cache: the server started and answered every reference correctly")
        load = _Load(server.url, page_bytes, v2, refs, malformed, seed=1)
        report.rss_start_mb = tree_rss_mb(server.proc.pid)
        threads = [threading.Thread(target=load.client, daemon=True) for _ in range(clients)]
        t0 = time.monotonic()
        sampler = threading.Thread(target=_sample_rss, args=(server.proc, t0, report.rss_samples, load.stop),
                                   daemon=True)
        for t in [*threads, sampler]:
            t.start()
        plan = [f for f in faults if f in ("kill-worker", "kill-engine", "readonly-cache")]
        for fault in plan:
            time.sleep(seconds / (len(plan) + 1))
            start = time.monotonic()
            report.fault_notes.append(_inject(fault, server.proc.pid, cache))
            if fault == "readonly-cache":
                report.fault_notes.append(_build_into(cache, env))
            fault_windows.append((start, start + 5.0))
        while time.monotonic() - t0 < seconds * (0.5 if "sigterm" in faults else 1.0):
            time.sleep(0.2)
        report.rss_end_mb = tree_rss_mb(server.proc.pid)
        if "sigterm" in faults:
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            fault_windows.append((sigterm_at, sigterm_at + 120))
            code = server.proc.wait(180)
            load.stop.set()
            for t in threads:
                t.join(180)
            # Owed an answer: every request the server accepted. A refused connection (the port closed) was never
            # accepted; 503 is the drain's documented answer to requests that arrive while it drains.
            lost = [r for r in load.records if r[0] >= sigterm_at and r[2] >= 500 and r[2] != 503]
            report.sigterm_unanswered = len(lost)
            refused = sum(1 for r in load.records if r[0] >= sigterm_at and r[2] == REFUSED)
            answered = sum(1 for r in load.records if r[0] >= sigterm_at and r[2] not in (REFUSED, LOST))
            report.fault_notes.append(
                f"sigterm: exit code {code}; after the signal {answered} requests were answered (200, 4xx or 503), "
                f"{len(lost)} accepted ones were not, and {refused} connection attempts were refused (port closed)")
        else:
            load.stop.set()
            for t in threads:
                t.join(180)
        sampler.join(RSS_EVERY_S * 2)
    finally:
        try:
            if "readonly-cache" in faults and cache.is_dir():
                _writable_again(cache)
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
    _summarize(report, load, fault_windows, t0)
    return report


def _summarize(report: SoakReport, load: _Load, fault_windows: list[tuple[float, float]], t0: float) -> None:
    records = load.records
    report.requests = len(records)
    for _, _, status, _ in records:
        report.by_status[str(status)] = report.by_status.get(str(status), 0) + 1
    in_fault = [any(a <= r[0] <= b for a, b in fault_windows) for r in records]
    report.count_5xx = sum(1 for r in records if r[2] >= 500)
    report.count_5xx_outside_faults = sum(1 for r, f in zip(records, in_fault) if r[2] >= 500 and not f)
    report.refused_outside_faults = sum(1 for r, f in zip(records, in_fault) if r[2] == REFUSED and not f)
    report.wrong_answers = load.wrong
    samples = report.rss_samples
    if samples:
        warm = [mb for t, mb in samples if t <= WARMUP_S] if report.seconds >= 1.5 * WARMUP_S else []
        report.rss_warm_mb = warm[-1] if warm else report.rss_start_mb
    else:
        report.rss_warm_mb = report.rss_start_mb
    minutes: dict[int, dict[str, list[float]]] = {}
    for t, ms, status, kind in records:
        if status == 200 and kind != "bad":
            minutes.setdefault(int((t - t0) // 60), {}).setdefault(kind, []).append(ms)
    for m in sorted(minutes):
        row: dict = {"minute": m + 1}
        for kind, xs in minutes[m].items():
            row[kind] = {"requests": len(xs), "p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99)}
        in_minute = [mb for t, mb in samples if m * 60 <= t < (m + 1) * 60]
        row["rss_mb"] = in_minute[-1] if in_minute else None
        report.per_minute.append(row)


def _sample_rss(proc, t0: float, out: list[tuple[float, float]], stop: threading.Event) -> None:
    while not stop.is_set() and proc.poll() is None:
        out.append((time.monotonic() - t0, tree_rss_mb(proc.pid)))
        stop.wait(RSS_EVERY_S)


def _build_into(cache: Path, env: dict) -> str:
    """A new build while the cache is read-only (a precision the server did not build): it must fail clearly."""
    cmd = [sys.executable, "-m", "ppdeploy", "build", "ppocr-cls", "--backend", "onnxruntime", "--precision", "fp16"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"readonly-cache: a new build into it exited {done.returncode}: {tail[:300]}"


def _inject(fault: str, server_pid: int, cache: Path) -> str:
    pids = [p for p in tree_pids(server_pid) if p != server_pid]
    if fault == "kill-worker":
        victims = [p for p in pids if "ppdeploy.serve.workers" in _cmdline(p) or "worker" in _cmdline(p)]
        victims = [p for p in victims if "engine_process" not in _cmdline(p)]
        if not victims:
            return "kill-worker: no worker process found (run with --workers 2)"
        os.kill(victims[0], signal.SIGKILL)
        return f"kill-worker: SIGKILL to worker pid {victims[0]}"
    if fault == "kill-engine":
        victims = [p for p in pids if "engine_process.child" in _cmdline(p)]
        if not victims:
            return "kill-engine: no engine process found"
        os.kill(victims[0], signal.SIGKILL)
        return f"kill-engine: SIGKILL to engine pid {victims[0]}"
    if fault == "readonly-cache":
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(cache), str(cache)], capture_output=True,
                                 text=True)
        if mounted.returncode == 0:
            return f"readonly-cache: {cache} bind-mounted read-only over itself"
        os.chmod(cache, 0o555)
        who = "as root, which ignores file modes: this fault has no effect" if os.getuid() == 0 else "file modes"
        return f"readonly-cache: {cache} made read-only ({who}; mount refused: {mounted.stderr.strip()[:120]})"
    raise ValueError(fault)


def _writable_again(cache: Path) -> None:
    # os.path.ismount misses a bind mount within one file system: look the path up in the mount table
    mounted = any(line.split()[1] == str(cache.resolve()) for line in Path("/proc/mounts").read_text().splitlines())
    if mounted:
        subprocess.run(["umount", str(cache)], check=False)
    os.chmod(cache, 0o755)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ppdeploy.bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--faults", default="", help=f"comma-separated: {', '.join(FAULTS)}")
    p.add_argument("--malformed", type=float, default=0.1)
    p.add_argument("--pages", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path("soak-work"))
    p.add_argument("--out", type=Path, default=Path("soak.json"))
    p.add_argument("--smoke", action="store_true", help="a short run: 4 clients, 8 s, 1 page")
    args = p.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        p.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    if args.smoke:
        args.clients, args.seconds, args.pages = 4, 8.0, 1
    report = run_soak(args.clients, args.seconds, workers=args.workers, faults=faults, malformed=args.malformed,
                      work=args.work, pages=args.pages)
    args.out.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    print(report.markdown())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
