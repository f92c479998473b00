"""Device run for issue 7's two serving goals, with the onnxruntime-cuda backend:

(a) batched serving >= 3x the throughput of batch-1 serving at equal p99;
(b) the server path within 10 % of the raw runner's throughput.

Method. Per model, two `ppdeploy serve --repo` processes run side by side from the same config but for
max_batch_size (1 vs N); the offered rates are interleaved (rate r on the batch-1 server, then on the batched
one, then the next rate), open-loop Poisson from `ppdeploy.bench.load` (several client processes, keep-alive,
bodies encoded once, latency from the scheduled send time). A server's throughput at a p99 budget is the highest
achieved rate among the points whose p99 stays within it and that lost no request. The raw runner is the same
engine the server loads (`ppdeploy.serve.models.load_engine` on the same config), timed alone at each batch size
on the same input. For (b) each server point is compared with the raw runner at the mean batch size the server
formed at that point (interpolated between the measured batch sizes) and with the raw runner's best; the server's
own busy time of its inference thread (Triton statistics) shows how much of the wall time the GPU path was fed.

Run 10 adds the engine-process variant (`engine_process: true`, ppdeploy.serve.engine_process): each config is
served twice, in-process and with its engine in a child process fed through shared memory, all four servers up
side by side with the rates interleaved over them; the raw runner is timed in-process and through the engine
process (the IPC cost alone). GOAL_VARIANTS=inproc,engine_process picks the variants (default both); GOAL_RATES_REC /
GOAL_RATES_CLS / GOAL_RATES_OCR (comma-separated) and GOAL_SECONDS / GOAL_OCR_SECONDS override the ladders and the
seconds per point; GOAL_OCR_WORKERS=1,4 serves /v1/ocr once per HTTP worker count; GOAL_OCR_HEAD=ctc_greedy gives
the served rec the greedy head (made at load), GOAL_OCR_BATCH its models' max_batch_size (default 8).

Several HTTP workers (`ppdeploy serve --workers N`, ppdeploy.serve.workers): variant `workers` serves each config with
GOAL_WORKERS (default 4) worker processes sharing one engine process per model (engine_process: true: the engine
merges the workers' batches), `workers_own` with that many workers each loading its own engine; e.g.
GOAL_VARIANTS=inproc,workers,workers_own. For those servers `mean_batch` is what the workers' batchers sent and
`engine_mean_batch` what the shared engine ran (ppdeploy_engine_batch_size), which the raw runner is compared at;
`infer_thread_busy` sums the workers' inference threads (up to N). Raise LOAD_WORKERS (client processes, default
one per four cores) so the load generator is not the limit: with 4 server workers on the 16-core host, 6 or 8.

Writes $OUT/serving_goals.json and prints a line per point. CPU smoke test (no GPU):
  E2E_BACKEND=onnxruntime PPDEPLOY_TEST_ONNX_DIR=... python scripts/gpu/serving_goals.py --smoke
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ONNX = Path(os.environ["PPDEPLOY_TEST_ONNX_DIR"])
OUT = Path(os.environ.get("OUT", "."))
BACKEND = os.environ.get("E2E_BACKEND", "onnxruntime-cuda")
SMOKE = "--smoke" in sys.argv
BUDGETS_MS = (25.0, 50.0, 100.0)
RESULTS: dict = {"backend": BACKEND, "method": __doc__.split("\n\n")[1], "models": {}}


def save() -> None:
    (OUT / "serving_goals.json").write_text(json.dumps(RESULTS, indent=1, default=str))


VARIANTS = os.environ.get("GOAL_VARIANTS", "inproc,engine_process").split(",")
EP = "_ep"  # suffix of the engine-process servers' names
GOAL_WORKERS = int(os.environ.get("GOAL_WORKERS", "4"))
# variant -> (suffix of its servers' names, engine_process, HTTP worker processes)
VARIANT_SPECS = {"inproc": ("", False, 1), "engine_process": (EP, True, 1), "workers": ("_w", True, GOAL_WORKERS),
                 "workers_own": ("_wo", False, GOAL_WORKERS)}
if unknown := [v for v in VARIANTS if v not in VARIANT_SPECS]:
    raise SystemExit(f"GOAL_VARIANTS: unknown variant(s) {unknown}; known: {', '.join(VARIANT_SPECS)}")
SUFFIXES = [VARIANT_SPECS[v][0] for v in VARIANTS]
WORKERS_OF_SUFFIX = {VARIANT_SPECS[v][0]: VARIANT_SPECS[v][2] for v in VARIANTS}


def config(name: str, model: Path, shape: tuple[int, ...], max_batch: int, delay_ms: float,
           engine_process: bool = False) -> dict:
    """The input profile makes the GPU runner warm every batch bucket before the model reports ready;
    inline_max_ms 0 keeps every batch off the event loop."""
    return {"name": name, "source": str(model), "backends": [BACKEND], "max_batch_size": max_batch,
            "inputs": {"x": {"min": [1, *shape], "opt": [max_batch, *shape], "max": [max_batch, *shape]}},
            "dynamic_batching": {"max_queue_delay_ms": delay_ms, "max_queue_size": 8192, "inline_max_ms": 0},
            "engine_process": engine_process}


def configs_for(model: Path, shape: tuple[int, ...], max_batch: int, delay_ms: float) -> dict[str, dict]:
    cfgs = {}
    for variant in VARIANTS:
        suffix, engine_process, _ = VARIANT_SPECS[variant]
        cfgs["batch1" + suffix] = config("batch1" + suffix, model, shape, 1, 0.0, engine_process)
        cfgs["batched" + suffix] = config("batched" + suffix, model, shape, max_batch, delay_ms, engine_process)
    return cfgs


def workers_of(name: str) -> int:
    """HTTP worker processes of the server of config `name` (batch1<suffix> / batched<suffix>)."""
    return WORKERS_OF_SUFFIX[name.removeprefix("batch1").removeprefix("batched")]


def engine_executions(url: str, name: str) -> float | None:
    """ppdeploy_engine_executions_total of a server whose workers share an engine process (else None)."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ppdeploy_engine_executions_total{") and f'model="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def raw_runner(cfg: dict, batches: list[int], x1: np.ndarray, seconds: float) -> list[dict]:
    """The server's own engine, alone: items/s at each batch size (the batch is x1 repeated)."""
    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.models import load_engine

    engine = load_engine(ModelConfig.model_validate(cfg))
    runner = engine.runners[0]
    rows = []
    try:
        for b in batches:
            x = np.repeat(x1, b, axis=0)
            for _ in range(5):
                runner.infer({"x": x})
            lat = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                t = time.perf_counter()
                runner.infer({"x": x})
                lat.append((time.perf_counter() - t) * 1e3)
            med = statistics.median(lat)
            rows.append({"batch": b, "median_ms": round(med, 4), "p99_ms": round(float(np.percentile(lat, 99)), 4),
                         "items_per_s": round(b / med * 1e3, 1)})
            print(f"  raw bs{b:<3d} {med:7.3f} ms  {b / med * 1e3:9.1f} items/s", flush=True)
    finally:
        for r in engine.runners:
            r.close()
    return rows


def raw_at(rows: list[dict], batch: float) -> float:
    """Raw items/s at a (mean) batch size, linear between the measured sizes."""
    bs = [r["batch"] for r in rows]
    return float(np.interp(batch, bs, [r["items_per_s"] for r in rows]))


def model_stats(url: str, name: str) -> dict:
    import httpx

    return httpx.get(f"{url}/v2/models/{name}/stats", timeout=10).json()["model_stats"][0]


def busy_ns(stats: dict) -> int:
    return sum(b[k]["ns"] for b in stats["batch_stats"] for k in ("compute_input", "compute_infer", "compute_output"))


def point(url: str, name: str, template, rate: float, duration: float, seed: int, workers: int) -> dict:
    from ppdeploy.bench.load import LoadSettings, run_load

    s0, e0 = model_stats(url, name), engine_executions(url, name)
    [res] = run_load(url, template, [rate], duration, "poisson",
                     LoadSettings(timeout_s=20, drain_s=10, max_in_flight=4096, seed=seed, workers=workers))
    s1, e1 = model_stats(url, name), engine_executions(url, name)
    execs = s1["execution_count"] - s0["execution_count"]
    items = s1["inference_count"] - s0["inference_count"]
    engine_execs = (e1 or 0.0) - (e0 or 0.0)
    lat = res.latency_ms or {}
    return {"offered": rate, "achieved": res.achieved_rps, "ok": res.ok, "scheduled": res.scheduled,
            "lost": res.scheduled - res.ok, "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
            "send_lag_p99_ms": (res.send_lag_ms or {}).get("p99"), "window_s": res.window_s,
            "mean_batch": round(items / execs, 2) if execs else None,
            "engine_mean_batch": round(items / engine_execs, 2) if engine_execs >= 1 else None,
            "infer_thread_busy": round((busy_ns(s1) - busy_ns(s0)) / 1e9 / res.window_s, 3) if res.window_s else None,
            "errors": res.error_examples[:3]}


def best_within(points: list[dict], budget_ms: float) -> dict | None:
    good = [p for p in points if p["p99_ms"] is not None and p["p99_ms"] <= budget_ms and p["lost"] == 0]
    return max(good, key=lambda p: p["achieved"]) if good else None


def run_model(key: str, shape: tuple[int, ...], max_batch: int, delay_ms: float, rates: list[float],
              duration: float, workers: int) -> None:
    import yaml

    from ppdeploy.bench.server_process import ServerProcess
    from ppdeploy.bench.serving import binary_request_template

    print(f"== {key} {shape} max_batch {max_batch}", flush=True)
    model = ONNX / f"{key}.onnx"
    x1 = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    cfgs = configs_for(model, shape, max_batch, delay_ms)
    entry = RESULTS["models"].setdefault(key, {"shape": list(shape), "configs": cfgs})
    batches = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch]
    # The in-process runner is the reference for every server; the engine-process one shows the IPC cost alone.
    entry["raw_runner"] = raw_runner(config("raw", model, shape, max_batch, delay_ms), batches, x1,
                                     0.3 if SMOKE else 1.5)
    if "engine_process" in VARIANTS:
        print("  (through the engine process)", flush=True)
        entry["raw_engine_process"] = raw_runner(config("raw", model, shape, max_batch, delay_ms, True), batches, x1,
                                                 0.3 if SMOKE else 1.0)
    save()
    ladders: dict[str, list[dict]] = {name: [] for name in cfgs}
    servers = {}
    try:
        for name in cfgs:  # one server per config, both up for the whole ladder
            one = Path(tempfile.mkdtemp()) / "repo"
            (one / name).mkdir(parents=True)
            (one / name / "config.yaml").write_text(yaml.safe_dump(cfgs[name]))
            n_workers = workers_of(name)
            servers[name] = ServerProcess(["--repo", str(one), *(["--workers", str(n_workers)] if n_workers > 1 else [])],
                                          ready_timeout_s=600, log_path=OUT / f"server_{key}_{name}.log").start()
        templates = {name: binary_request_template(name, {"x": x1}) for name in cfgs}
        for name, srv in servers.items():  # unrecorded warm-up: connections, allocator, every code path once
            point(srv.url, name, templates[name], rates[0], 1.0, 99, workers)
        saturated: set[str] = set()
        for i, rate in enumerate(rates):
            for name, srv in servers.items():
                if name in saturated:
                    continue
                p = point(srv.url, name, templates[name], rate, duration, i, workers)
                ladders[name].append(p)
                raw = raw_at(entry["raw_runner"], p["engine_mean_batch"] or p["mean_batch"] or 1)
                p["raw_at_mean_batch"] = round(raw, 1)
                engine = f" engine batch {p['engine_mean_batch']}" if p["engine_mean_batch"] else ""
                print(f"  {name:10s} offered {rate:7.0f}/s achieved {p['achieved']:8.1f}/s lost {p['lost']:5d} "
                      f"p50 {p['p50_ms'] or float('nan'):7.2f} p99 {p['p99_ms'] or float('nan'):8.2f} ms "
                      f"batch {p['mean_batch']}{engine} busy {p['infer_thread_busy']} raw@batch {raw:8.1f}",
                      flush=True)
                if p["achieved"] < 0.8 * p["scheduled"] / duration or (p["p99_ms"] or 0) > 2000:
                    saturated.add(name)  # past its capacity: higher rates only add queueing
            entry["ladders"] = ladders
            save()
            if len(saturated) == len(servers):
                break
    finally:
        for srv in servers.values():
            srv.stop()
    raw_best = max(r["items_per_s"] for r in entry["raw_runner"])
    raw_bs1 = entry["raw_runner"][0]["items_per_s"]
    summary = {"raw_bs1_items_per_s": raw_bs1, "raw_best_items_per_s": raw_best, "budgets": {}}
    for budget in BUDGETS_MS:
        for suffix in SUFFIXES:
            if "batch1" + suffix not in ladders:
                continue
            b1 = best_within(ladders["batch1" + suffix], budget)
            bb = best_within(ladders["batched" + suffix], budget)
            summary["budgets"][str(budget) + suffix] = {
                "batch1": b1, "batched": bb,
                "gain": round(bb["achieved"] / b1["achieved"], 2) if b1 and bb else None,
            }
    # (b): the highest throughput each server reached (whatever its p99), against the raw runner.
    for name in ladders:
        top = max(ladders[name], key=lambda p: p["achieved"]) if ladders[name] else None
        if top:
            summary[f"{name}_max"] = {"achieved": top["achieved"], "mean_batch": top["mean_batch"],
                                      "engine_mean_batch": top["engine_mean_batch"], "workers": workers_of(name),
                                      "raw_at_mean_batch": top["raw_at_mean_batch"],
                                      "vs_raw_at_mean_batch": round(top["achieved"] / top["raw_at_mean_batch"], 3),
                                      "vs_raw_bs1": round(top["achieved"] / raw_bs1, 3),
                                      "vs_raw_best": round(top["achieved"] / raw_best, 3),
                                      "infer_thread_busy": top["infer_thread_busy"], "p99_ms": top["p99_ms"]}
    entry["summary"] = summary
    print(json.dumps(summary, indent=1), flush=True)
    save()


def gil_probe(calls: int = 300) -> None:
    """Per-call time of the server's engine at batch 1 with nothing else running, with a Python thread of the same
    process spinning in short bursts (50 us of bytecode, 50 us asleep: an event loop under load), and with one
    spinning without pause; in-process and through the engine process."""
    import threading

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.models import load_engine

    def spin(stop: threading.Event, burst_s: float | None) -> None:
        while not stop.is_set():
            end = time.perf_counter() + (burst_s or 1e-3)
            while time.perf_counter() < end:
                pass
            if burst_s:
                time.sleep(burst_s)

    entry = RESULTS.setdefault("gil_probe", {"calls": calls, "rows": []})
    print("== engine call alone / + bursty Python thread / + spinning thread (median, p90, p99 ms)", flush=True)
    for key, shape in (("ppocr-cls", (3, 48, 192)), ("ppocrv4-rec", (3, 48, 320))):
        x = {"x": np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)}
        for ep in (False, True):
            cfg = config("probe", ONNX / f"{key}.onnx", shape, 1, 0.0, ep)
            engine = load_engine(ModelConfig.model_validate(cfg))
            runner = engine.runners[0]
            try:
                for mode, burst in (("alone", None), ("bursty", 50e-6), ("spinning", 0.0)):
                    stop = threading.Event()
                    th = threading.Thread(target=spin, args=(stop, burst), daemon=True) if mode != "alone" else None
                    if th:
                        th.start()
                    for _ in range(20):
                        runner.infer(x)
                    lat = []
                    for _ in range(calls):
                        t = time.perf_counter()
                        runner.infer(x)
                        lat.append((time.perf_counter() - t) * 1e3)
                    stop.set()
                    if th:
                        th.join()
                    row = {"model": key, "engine_process": ep, "mode": mode, "median_ms": round(statistics.median(lat), 4),
                           "p90_ms": round(float(np.percentile(lat, 90)), 4),
                           "p99_ms": round(float(np.percentile(lat, 99)), 4)}
                    entry["rows"].append(row)
                    print(f"  {key:12s} {'engine-process' if ep else 'in-process':14s} {mode:8s} "
                          f"{row['median_ms']:7.3f} {row['p90_ms']:7.3f} {row['p99_ms']:7.3f}", flush=True)
            finally:
                for r in engine.runners:
                    r.close()
    save()


def _echo(sock, spin: bool) -> None:
    import select

    fd = sock.fileno()
    while True:
        if spin:
            while not select.select([fd], [], [], 0)[0]:
                pass
        data = os.read(fd, 256)
        if not data:
            return
        os.write(fd, data)


def ipc_probe(calls: int = 2000) -> None:
    """Where the engine process's per-call cost goes: a bare socket round trip between two processes (the child
    sleeping in read(2), or polling), and the runner's own stage timings in-process and through the engine
    process (child sleeping, or polling for 500 us after each reply: PPDEPLOY_ENGINE_PROCESS_SPIN_US)."""
    import multiprocessing
    import socket

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.models import load_engine

    entry = RESULTS.setdefault("ipc_probe", {})
    print("== IPC probe", flush=True)
    for spin in (False, True):
        a, b = socket.socketpair()
        proc = multiprocessing.get_context("spawn").Process(target=_echo, args=(b, spin))
        proc.start()
        b.close()
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            os.write(a.fileno(), b"x" * 100)
            os.read(a.fileno(), 256)
            lat.append((time.perf_counter() - t) * 1e6)
        a.close()
        proc.join(5)
        proc.kill()
        key = f"socket_round_trip_us_{'polling' if spin else 'sleeping'}"
        entry[key] = {"median": round(statistics.median(lat), 1), "p90": round(float(np.percentile(lat, 90)), 1)}
        print(f"  {key}: {entry[key]}", flush=True)
    for key, shape, batch in (("ppocr-cls", (3, 48, 192), 1), ("ppocrv4-rec", (3, 48, 320), 1),
                              ("ppocrv4-rec", (3, 48, 320), 16)):
        x = {"x": np.random.default_rng(0).uniform(-1, 1, (batch, *shape)).astype(np.float32)}
        for variant, ep, spin_us in (("in-process", False, 0), ("engine-process", True, 0),
                                     ("engine-process, child polls 500 us", True, 500)):
            os.environ["PPDEPLOY_ENGINE_PROCESS_SPIN_US"] = str(spin_us)
            engine = load_engine(ModelConfig.model_validate(config("probe", ONNX / f"{key}.onnx", shape, 16, 0.0, ep)))
            runner = engine.runners[0]
            try:
                for _ in range(20):
                    runner.infer(x)
                stages: dict[str, list[float]] = {}
                for _ in range(200 if batch == 1 else 50):
                    runner.infer(x)
                    for k, v in runner.last_timings.items():
                        stages.setdefault(k, []).append(v)
                row = {k: round(statistics.median(v), 4) for k, v in stages.items()}
                entry[f"{key} bs{batch} {variant}"] = row
                print(f"  {key} bs{batch} {variant}: {row}", flush=True)
            finally:
                for r in engine.runners:
                    r.close()
    os.environ.pop("PPDEPLOY_ENGINE_PROCESS_SPIN_US", None)
    save()


def ocr_server(rates: list[float], duration: float, workers: int, http_workers: int = 1) -> None:
    """`/v1/ocr` with det, cls and rec on the GPU backend (the shape buckets the OCR task uses on a GPU), one
    synthetic page per request, open-loop Poisson; plus the per-model batching the pipeline's calls got.
    `http_workers` > 1 serves it with `ppdeploy serve --workers N` (each worker its own engines and pipeline);
    GOAL_OCR_REC names the carried rec model (e.g. ppocrv4-rec-greedy, the ctc_greedy head: 960 bytes per line)."""
    import yaml

    from ppdeploy.bench.load import LoadSettings, image_request, run_load
    from ppdeploy.bench.server_process import ServerProcess
    from ppdeploy.tasks.ocr.builder import GPU_SHAPE_BUCKETS

    page = sorted(next(Path(os.environ["PPDEPLOY_TEST_PAGES"]).glob("synth-*")).glob("*.png"))[0]
    repo = Path(tempfile.mkdtemp()) / "repo"
    models = {"det": "ppocrv4-det", "cls": "ppocr-cls", "rec": os.environ.get("GOAL_OCR_REC", "ppocrv4-rec")}
    for stage, key in models.items():
        cfg = {"name": stage, "source": str(ONNX / f"{key}.onnx"), "backends": [BACKEND],
               "max_batch_size": int(os.environ.get("GOAL_OCR_BATCH", 8)),
               "dynamic_batching": {"max_queue_delay_ms": 1.0, "inline_max_ms": 0},
               "backend_options": GPU_SHAPE_BUCKETS[stage] if BACKEND == "onnxruntime-cuda" else {}}
        if stage == "rec" and os.environ.get("GOAL_OCR_HEAD"):  # e.g. ctc_greedy, made at load (run 13)
            cfg["head"] = os.environ["GOAL_OCR_HEAD"]
        (repo / stage).mkdir(parents=True)
        (repo / stage / "config.yaml").write_text(yaml.safe_dump(cfg))
    task = {"name": "ocr", "task": "ocr", "pipeline": {"det": "det", "cls": "cls", "rec": "rec"}}
    if os.environ.get("E2E_DICT"):
        task["task_options"] = {"rec_dictionary": os.environ["E2E_DICT"]}
    (repo / "ocr").mkdir()
    (repo / "ocr" / "config.yaml").write_text(yaml.safe_dump(task))
    template = image_request("ocr", page.read_bytes(), page.name)
    settings = LoadSettings(timeout_s=60, drain_s=30, workers=workers)
    key = "ocr_server" if http_workers == 1 else f"ocr_server_w{http_workers}"
    entry = RESULTS.setdefault(key, {"page": page.name, "rec": models["rec"], "http_workers": http_workers,
                                     "rates": []})
    print(f"== /v1/ocr, {page.name}, rec {models['rec']}, {http_workers} HTTP worker(s)", flush=True)
    args = ["--repo", str(repo), *(["--workers", str(http_workers)] if http_workers > 1 else [])]
    with ServerProcess(args, ready_timeout_s=600, log_path=OUT / f"server_{key}.log") as srv:
        # Warm-up: every worker's sessions see the page's shapes once (ORT re-plans on a new shape, per session).
        run_load(srv.url, template, [2.0 * http_workers], 5.0 if not SMOKE else 1.0, "constant", settings)
        for res in run_load(srv.url, template, rates, duration, "poisson", settings):
            lat = res.latency_ms or {}
            print(f"  ocr offered {res.offered_rate:5.1f}/s achieved {res.achieved_rps:6.2f} pages/s "
                  f"ok {res.ok}/{res.scheduled} p50 {lat.get('p50', float('nan')):7.1f} "
                  f"p99 {lat.get('p99', float('nan')):7.1f} ms", flush=True)
            entry["rates"].append(res.to_dict(with_samples=False))
            save()
        entry["model_stats"] = {m: model_stats(srv.url, m) for m in models}


def main() -> int:
    from ppdeploy.bench.load import default_workers
    from ppdeploy.core.device import gpu_info

    RESULTS["gpu"] = gpu_info()
    workers = int(os.environ.get("LOAD_WORKERS", default_workers()))
    RESULTS["load_workers"] = workers
    RESULTS["variants"] = {v: dict(zip(("suffix", "engine_process", "http_workers"), VARIANT_SPECS[v])) for v in VARIANTS}
    t0 = time.perf_counter()
    only = os.environ.get("GOAL_MODELS", "rec,cls,ocr").split(",")
    RESULTS["gil_switch_ms"] = os.environ.get("PPDEPLOY_GIL_SWITCH_MS", "Python's default (5)")
    seconds = float(os.environ.get("GOAL_SECONDS", 4.0))

    def rates(name: str, default: list[float]) -> list[float]:
        text = os.environ.get(f"GOAL_RATES_{name}")
        return [float(r) for r in text.split(",")] if text else default

    if "ipc" in only:
        ipc_probe(200 if SMOKE else 2000)
    if "probe" in only:
        gil_probe(60 if SMOKE else 300)
    if SMOKE:
        run_model("ppocr-cls", (3, 48, 192), 8, 1.0, rates("CLS", [20, 60]), 1.0, workers)
        if "ocr" in only:
            ocr_server([1.0], 2.0, workers)
    else:
        if "rec" in only:
            run_model("ppocrv4-rec", (3, 48, 320), 32, 1.0,
                      rates("REC", [200, 275, 325, 375, 425, 500, 600, 700, 800, 900, 1000, 1200, 1500, 1800]),
                      seconds, workers)
        if "cls" in only:
            run_model("ppocr-cls", (3, 48, 192), 64, 1.0,
                      rates("CLS", [300, 450, 600, 700, 800, 1000, 1500, 2000, 2500, 3000, 4000, 5000]), seconds,
                      workers)
        if "ocr" in only:
            for n in (int(w) for w in os.environ.get("GOAL_OCR_WORKERS", "1").split(",")):
                ocr_server(rates("OCR", [5, 10, 20, 30]), float(os.environ.get("GOAL_OCR_SECONDS", 5.0)), workers, n)
    RESULTS["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
