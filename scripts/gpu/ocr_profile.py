"""Device run (issue 19 §3): where one process's OCR time goes on the GPU, and what moves it.

`OCR(backend="onnxruntime-cuda")` (PP-OCRv4 det/cls/rec, the task's GPU shape buckets and ctc_greedy head) on the
24 synthetic pages, with every runner call logged (stage, input shape, wall, and the runner's own h2d / compute /
d2h split: `OnnxRuntimeCUDARunner.last_timings`), then one change at a time on the same loaded runners where
possible (`OCRPipeline.from_runners` with other options), each with a cold and a warm pass and its character
accuracy:

  base         the defaults (rec/cls batch 6)
  bgr          the same on pre-decoded images (`predict_bgr`): what decode costs
  cprofile     one warm pass under cProfile (top functions -> $OUT/ocr_cprofile.txt)
  cls32 ...    cls/rec batch sizes; no cls
  det320       det padded to multiples of 320 instead of 960 (the pages are 573-958 px: 960x960 wastes pixels)
  tf32         all three models with TF32 on (ppdeploy keeps it off for parity with the CPU)
  threads N    N threads calling predict() on one pipeline (what a pipelined multi-page executor can get)
  procs N      N processes, each its own pipeline, sequential predict() (what --workers can get without HTTP)

Sections are skipped once PROFILE_BUDGET_S (default 330) seconds have passed, so the call ends in time.
  . scripts/gpu/device_env.sh; python3 scripts/gpu/ocr_profile.py        # PROFILE_ONLY=base,threads,... to pick
Writes $OUT/ocr_profile.json (+ ocr_cprofile.txt); prints a summary table last.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ONNX = Path(os.environ.get("PPDEPLOY_TEST_ONNX_DIR", ".gpu-carry/onnx"))
PAGES = next(Path(os.environ.get("PPDEPLOY_TEST_PAGES", ".gpu-carry/pages")).glob("synth-*"))
OUT = Path(os.environ.get("OUT", "."))
BACKEND = os.environ.get("E2E_BACKEND", "onnxruntime-cuda")
DICT = os.environ.get("E2E_DICT")
BUDGET_S = float(os.environ.get("PROFILE_BUDGET_S", 330))
ONLY = set(filter(None, os.environ.get("PROFILE_ONLY", "").split(",")))
T0 = time.perf_counter()
RESULTS: dict = {"backend": BACKEND, "pages": str(PAGES), "sections": {}}
SUMMARY: list[tuple] = []


def save() -> None:
    (OUT / "ocr_profile.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def left() -> float:
    return BUDGET_S - (time.perf_counter() - T0)


def wanted(name: str, needs_s: float = 10) -> bool:
    if ONLY and not any(name.startswith(o) for o in ONLY):
        return False
    if left() < needs_s:
        print(f"-- skip {name}: {left():.0f} s of the budget left", flush=True)
        RESULTS["sections"][name] = {"skipped": "budget"}
        return False
    print(f"== {name} ({time.perf_counter() - T0:.0f} s in)", flush=True)
    return True


def labelled():
    from ppdeploy.tasks.ocr.dataset import read_labelled_folder

    items = read_labelled_folder(PAGES)
    return items[:int(os.environ["PROFILE_PAGES"])] if os.environ.get("PROFILE_PAGES") else items  # smoke tests


def char_accuracy(results, items) -> float:
    from ppdeploy.tasks.ocr.metrics import score_dataset

    preds = [[(line.text, line.box) for line in r.lines] for r in results]
    gts = [[(line.text, line.box) for line in item.lines] for item in items]
    return round(score_dataset(preds, gts).char_accuracy, 4)


class CallLog:
    """Wraps runner.infer on the instance: stage, input shape, wall ms and the runner's h2d/compute/d2h per call."""

    def __init__(self):
        self.calls: list[tuple] = []

    def wrap(self, stage: str, runner) -> None:
        if getattr(runner, "_logged", None) is self:
            return
        inner = type(runner).infer.__get__(runner)

        def infer(feeds, _inner=inner, _runner=runner, _stage=stage):
            t = time.perf_counter()
            out = _inner(feeds)
            wall = (time.perf_counter() - t) * 1e3
            arr = feeds if isinstance(feeds, np.ndarray) else next(iter(feeds.values()))
            lt = _runner.last_timings
            self.calls.append((_stage, tuple(arr.shape), wall, lt.get("h2d", 0.0), lt.get("compute", 0.0),
                               lt.get("d2h", 0.0)))
            return out

        runner.infer = infer
        runner._logged = self

    def summary(self, pages: int) -> dict:
        by = defaultdict(list)
        for c in self.calls:
            by[c[0]].append(c)
        out = {}
        for stage, calls in by.items():
            walls = [c[2] for c in calls]
            out[stage] = {
                "calls_per_page": round(len(calls) / pages, 2),
                "distinct_shapes": len({c[1] for c in calls}),
                "wall_ms_per_page": round(sum(walls) / pages, 2),
                "h2d_ms_per_page": round(sum(c[3] for c in calls) / pages, 2),
                "compute_ms_per_page": round(sum(c[4] for c in calls) / pages, 2),
                "d2h_ms_per_page": round(sum(c[5] for c in calls) / pages, 2),
                "validate_etc_ms_per_page": round(sum(c[2] - c[3] - c[4] - c[5] for c in calls) / pages, 2),
                "median_call_ms": round(statistics.median(walls), 3),
                "batch_rows_mean": round(float(np.mean([c[1][0] for c in calls])), 2),
                "top_shapes": sorted(((str(s), n) for s, n in _count(c[1] for c in calls).items()),
                                     key=lambda x: -x[1])[:6],
            }
        self.calls = []
        return out


def _count(items):
    d: dict = defaultdict(int)
    for i in items:
        d[i] += 1
    return d


def wrap_all(pipe, log: CallLog) -> None:
    log.wrap("det", pipe.detector.runner)
    log.wrap("rec", pipe.recognizer.runner)
    if pipe.classifier is not None:
        log.wrap("cls", pipe.classifier.runner)


def run_pass(predict, inputs, items=None) -> dict:
    t = time.perf_counter()
    results = [predict(x) for x in inputs]
    seconds = time.perf_counter() - t
    stage = defaultdict(float)
    for r in results:
        for k, v in r.timings.items():
            stage[k] += v / len(results)
    row = {"pages_per_s": round(len(results) / seconds, 2), "ms_per_page": round(seconds / len(results) * 1e3, 2),
           "stage_ms": {k: round(v, 2) for k, v in stage.items()}}
    if items is not None:
        row["char_acc"] = char_accuracy(results, items)
    return row


def passes(name: str, pipe, inputs, items, log: CallLog, warm: int = 2, predict=None) -> dict:
    predict = predict or pipe.predict
    wrap_all(pipe, log)
    log.calls = []
    entry = {"passes": []}
    for i in range(1 + warm):
        row = run_pass(predict, inputs, items)
        row["runner_calls"] = log.summary(len(inputs))
        entry["passes"].append(row)
        print(f"  {name:28s} pass {i}: {row['pages_per_s']:7.2f} pages/s ({row['ms_per_page']:.1f} ms/page) "
              f"acc {row.get('char_acc')}  {json.dumps(row['stage_ms'])}", flush=True)
        if i >= 1 and left() < 20:
            break
    warm_rows = entry["passes"][1:] or entry["passes"]
    entry["warm_pages_per_s"] = round(max(r["pages_per_s"] for r in warm_rows), 2)
    SUMMARY.append((name, entry["passes"][0]["pages_per_s"], entry["warm_pages_per_s"],
                    warm_rows[-1].get("char_acc")))
    RESULTS["sections"][name] = entry
    save()
    return entry


def sessions(pipe) -> dict:
    runners = {"det": pipe.detector.runner, "rec": pipe.recognizer.runner}
    if pipe.classifier is not None:
        runners["cls"] = pipe.classifier.runner
    return {s: getattr(r, "sessions_created", None) for s, r in runners.items()}


def build_ocr(**kwargs):
    from ppdeploy.tasks.ocr.builder import OCR

    dict_kw = {"rec_dictionary": DICT} if DICT else {}
    t = time.perf_counter()
    ocr = OCR(backend=BACKEND, det_model=str(ONNX / "ppocrv4-det.onnx"), rec_model=str(ONNX / "ppocrv4-rec.onnx"),
              cls_model=str(ONNX / "ppocr-cls.onnx"), **dict_kw, **kwargs)
    return ocr, round(time.perf_counter() - t, 1)


def decode_section(paths) -> list:
    from ppdeploy.tasks.image_io import load_image

    times, images = [], []
    for p in paths:
        t = time.perf_counter()
        images.append(load_image(p))
        times.append((time.perf_counter() - t) * 1e3)
    png = [t for p, t in zip(paths, times) if p.suffix == ".png"]
    jpg = [t for p, t in zip(paths, times) if p.suffix != ".png"]
    with ThreadPoolExecutor(8) as ex:
        t = time.perf_counter()
        list(ex.map(load_image, paths))
        threaded = (time.perf_counter() - t) * 1e3 / len(paths)
    RESULTS["sections"]["decode"] = {
        "ms_per_page": round(statistics.mean(times), 2), "png_ms": round(statistics.mean(png), 2) if png else None,
        "jpg_ms": round(statistics.mean(jpg), 2) if jpg else None, "pages_png": len(png), "pages_jpg": len(jpg),
        "wall_ms_per_page_8_threads": round(threaded, 2),
        "sizes": [list(i.shape[:2]) for i in images]}
    print("  decode", json.dumps({k: v for k, v in RESULTS["sections"]["decode"].items() if k != "sizes"}), flush=True)
    return images


def threaded(name: str, pipe, paths, items, n: int, rounds: int = 2) -> None:
    with ThreadPoolExecutor(n) as ex:
        list(ex.map(pipe.predict, paths[:n]))  # warm the threads
        t = time.perf_counter()
        results = []
        for _ in range(rounds):
            results = list(ex.map(pipe.predict, paths))
        seconds = time.perf_counter() - t
    pps = round(rounds * len(paths) / seconds, 2)
    acc = char_accuracy(results, items)
    RESULTS["sections"][name] = {"threads": n, "pages_per_s": pps, "char_acc": acc}
    SUMMARY.append((name, None, pps, acc))
    print(f"  {name:28s} {pps:7.2f} pages/s  acc {acc}", flush=True)
    save()


def many(name: str, pipe, paths, items, inflight: int, rounds: int = 2) -> None:
    try:
        pipe.predict_many(paths[:4], inflight=inflight)  # warm
        t = time.perf_counter()
        for _ in range(rounds):
            results = pipe.predict_many(paths, inflight=inflight)
        seconds = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - code in flux: recorded, the run goes on
        RESULTS["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"  {name}: {exc}", flush=True)
        return
    pps = round(rounds * len(paths) / seconds, 2)
    acc = char_accuracy(results, items)
    RESULTS["sections"][name] = {"inflight": inflight, "pages_per_s": pps, "char_acc": acc}
    SUMMARY.append((name, None, pps, acc))
    print(f"  {name:28s} {pps:7.2f} pages/s  acc {acc}", flush=True)
    save()


# ------------------------------------------------------------------------------------------- multi-process

def child(index: int, go: Path, seconds: float, threads: int) -> None:
    """One process: its own pipeline, a warm pass, then predict() in a loop from `go` for `seconds`."""
    paths = [item.path for item in labelled()]
    ocr, _ = build_ocr(**json.loads(os.environ.get("PROFILE_CHILD_OPTIONS", "{}")))
    for p in paths:
        ocr.predict(p)
    (go.parent / f"ready.{index}").write_text("1")
    while not go.exists():
        time.sleep(0.01)
    done = 0
    t = time.perf_counter()

    def loop(offset: int) -> int:
        k = 0
        while time.perf_counter() - t < seconds:
            ocr.predict(paths[(offset + k) % len(paths)])
            k += 1
        return k

    with ThreadPoolExecutor(threads) as ex:
        done = sum(ex.map(loop, [index * 5 + 7 * j for j in range(threads)]))
    (go.parent / f"done.{index}").write_text(json.dumps({"pages": done, "seconds": time.perf_counter() - t}))
    ocr.close()


def processes(name: str, n: int, seconds: float, threads: int = 1, options: dict | None = None) -> None:
    d = Path(tempfile.mkdtemp())
    go = d / "go"
    env = {**os.environ, "PROFILE_CHILD_OPTIONS": json.dumps(options or {})}
    # child logs stay in the temp folder ($OUT brings back at most 8 files); their tails go into the JSON on failure
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(i), str(go), str(seconds), str(threads)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(d / f"child_{i}.log", "w"))
             for i in range(n)]
    t = time.perf_counter()
    while sum((d / f"ready.{i}").exists() for i in range(n)) < n:
        if any(p.poll() not in (None, 0) for p in procs) or time.perf_counter() - t > 240:
            for p in procs:
                p.kill()
            RESULTS["sections"][name] = {"error": "a child failed or was not ready in 240 s",
                                         "logs": [(d / f"child_{i}.log").read_text()[-1500:] for i in range(n)]}
            print(f"  {name}: a child failed", flush=True)
            return
        time.sleep(0.1)
    ready_s = time.perf_counter() - t
    go.write_text("1")
    for p in procs:
        p.wait(seconds + 120)
    rows = [json.loads((d / f"done.{i}").read_text()) for i in range(n) if (d / f"done.{i}").exists()]
    pps = round(sum(r["pages"] / r["seconds"] for r in rows), 2)
    RESULTS["sections"][name] = {"processes": n, "threads_each": threads, "options": options or {},
                                 "pages_per_s": pps, "per_process": rows, "startup_s": round(ready_s, 1)}
    SUMMARY.append((name, None, pps, None))
    print(f"  {name:28s} {pps:7.2f} pages/s  ({n} processes x {threads} threads; startup {ready_s:.0f} s)", flush=True)
    save()


# ------------------------------------------------------------------------------------------------- main

def main() -> int:
    from ppdeploy.core.device import gpu_info
    from ppdeploy.tasks.ocr.pipeline import OCRPipeline

    RESULTS["gpu"] = gpu_info()
    items = labelled()
    paths = [item.path for item in items]
    log = CallLog()
    images = decode_section(paths)

    ocr, load_s = build_ocr()
    RESULTS["load_s"] = load_s
    RESULTS["rec_head"] = ocr.deployments["rec"].head
    print(f"  OCR loaded in {load_s} s; rec head {RESULTS['rec_head']}", flush=True)
    det, rec, cls = ocr.detector.runner, ocr.recognizer.runner, ocr.classifier.runner
    dict_kw = {"rec_dictionary": DICT} if DICT else {}

    if wanted("base", 20):
        passes("base", ocr, paths, items, log)
        RESULTS["sections"]["base"]["sessions"] = sessions(ocr)
    if wanted("bgr", 10):
        passes("bgr (no decode)", ocr, images, items, log, warm=1, predict=ocr.predict_bgr)
    if wanted("cprofile", 15):
        prof = cProfile.Profile()
        prof.enable()
        run_pass(ocr.predict, paths)
        prof.disable()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(35)
        st.sort_stats("cumulative").print_stats(45)
        (OUT / "ocr_cprofile.txt").write_text(s.getvalue())
        top = sorted(((f"{Path(k[0]).name}:{k[1]}:{k[2]}", v[2] * 1e3 / len(paths), v[3] * 1e3 / len(paths), v[1])
                      for k, v in st.stats.items()), key=lambda x: -x[1])[:25]
        RESULTS["sections"]["cprofile_top_tottime_ms_per_page"] = [
            {"fn": f, "tottime": round(a, 2), "cumtime": round(b, 2), "calls": c} for f, a, b, c in top]
        for row in RESULTS["sections"]["cprofile_top_tottime_ms_per_page"][:12]:
            print(f"    {row['tottime']:7.2f} ms/page tottime  {row['cumtime']:7.2f} cum  {row['fn']}", flush=True)
        log.calls = []
        save()

    variants = [("cls32", {"cls_batch_size": 32}),
                ("cls32 rec16", {"cls_batch_size": 32, "rec_batch_size": 16}),
                ("cls32 rec32", {"cls_batch_size": 32, "rec_batch_size": 32}),
                ("cls64 rec64", {"cls_batch_size": 64, "rec_batch_size": 64}),
                ("no cls", {"use_cls": False})]
    for name, opts in variants:
        if wanted(name, 25):
            use_cls = opts.pop("use_cls", True)
            pipe = OCRPipeline.from_runners(det, rec, cls, use_cls=use_cls, **dict_kw, **opts)
            passes(name, pipe, paths, items, log, warm=1)
    best_opts = {"cls_batch_size": 32}
    best = max((n for n, _ in variants[:4]), key=lambda n: RESULTS["sections"].get(n, {}).get("warm_pages_per_s", 0))
    best_opts = dict(variants[[n for n, _ in variants].index(best)][1]) if best in RESULTS["sections"] else best_opts
    RESULTS["best_batch_options"] = best_opts
    if Path("/tmp/gpu-carry").is_dir():  # the next call on the warm machine (rapid_vs.py) reads it
        Path("/tmp/gpu-carry/ocr_best_opts.json").write_text(json.dumps(best_opts))
    best_pipe = OCRPipeline.from_runners(det, rec, cls, **dict_kw, **best_opts)

    if wanted("det320", 30):
        from ppdeploy.deploy.load import load_model

        d320 = load_model(str(ONNX / "ppocrv4-det.onnx"), backend=BACKEND,
                          extra={BACKEND: {"pad_multiple": {"x": {"2": 320, "3": 320}}, "max_cached_shapes": 16}})
        pipe = OCRPipeline.from_runners(d320.runner, rec, cls, **dict_kw, **best_opts)
        passes("det320 + " + best, pipe, paths, items, log, warm=1)
        RESULTS["sections"]["det320 + " + best]["sessions"] = sessions(pipe)

    for n in (2, 4, 8):
        if wanted(f"threads{n}", 15):
            threaded(f"threads{n} ({best})", best_pipe, paths, items, n)

    # predict_many (ppdeploy.tasks.ocr.throughput, being built now): the pipelined multi-page executor
    if hasattr(OCRPipeline, "predict_many"):
        for label, pipe in (("defaults", ocr), (best, best_pipe)):
            for n in (2, 4, 8):
                if wanted(f"many{n} ({label})", 15):
                    many(f"many{n} ({label})", pipe, paths, items, n)

    if wanted("tf32", 60):
        from ppdeploy.tasks.ocr.builder import GPU_SHAPE_BUCKETS

        opts = {s: {"extra": {BACKEND: {**GPU_SHAPE_BUCKETS[s], "use_tf32": True}}} for s in ("det", "rec", "cls")}
        tf, load_s = build_ocr(load_options=opts, **best_opts)
        passes("tf32 + " + best, tf, paths, items, log, warm=1)
        tf.close()

    procs_n = [int(n) for n in os.environ.get("PROFILE_PROCS", "4").split(",") if n]
    for n in procs_n:
        if wanted(f"procs{n}", 70):
            processes(f"procs{n} ({best}, 2 threads)", n, 8.0, threads=2, options=best_opts)

    ocr.close()
    RESULTS["total_s"] = round(time.perf_counter() - T0, 1)
    save()
    print(f"\n{'variant':40s} {'cold':>8s} {'warm p/s':>9s} {'char_acc':>9s}")
    for name, cold, warm, acc in SUMMARY:
        print(f"{name:40s} {cold if cold is not None else '':>8} {warm:>9} {acc if acc is not None else '':>9}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(main())
