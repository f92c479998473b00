"""Runs one RapidOCR flavour over images and prints JSON timings. Executed as a script by `ppdeploy.bench.peers`
inside the peer's own virtual environment, so it imports nothing from ppdeploy (and only the standard library
before the peer itself).

Input: one JSON object on stdin (package, config overrides, image paths, warm-up and timing bounds).
Output: one line starting with RESULT_MARKER followed by JSON (RapidOCR logs to stdout too).
"""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULT_MARKER = "@@PPDEPLOY_PEER_RESULT@@"


def make_engine(package: str, overrides: dict):
    module = importlib.import_module(package)
    import yaml

    default_cfg = Path(module.__file__).parent / "config.yaml"
    config = yaml.safe_load(default_cfg.read_text())
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    # RapidOCR resolves relative model paths against its package dir; keep them relative.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
        cfg_path = f.name
    engine = module.RapidOCR(config_path=cfg_path)
    if config["Det"].get("limit_type") == "max":
        # RapidOCR's "max" mode ignores limit_side_len and picks 960/1500/2000 from the image size itself;
        # pin it to the configured value so the peer detects at the same resolution as ppdeploy.
        det = engine.text_det
        pre = importlib.import_module(f"{package}.ch_ppocr_det.utils").DetPreProcess
        det.get_preprocess = lambda _max_wh: pre(det.limit_side_len, det.limit_type, det.mean, det.std)
    return engine, config


def run(spec: dict) -> dict:
    images = [Path(p).read_bytes() for p in spec["images"]]
    t0 = time.perf_counter()
    engine, config = make_engine(spec["package"], spec.get("overrides", {}))
    load_s = time.perf_counter() - t0

    def once(data: bytes):
        start = time.perf_counter()
        result, elapse = engine(data)
        total_ms = (time.perf_counter() - start) * 1e3
        return total_ms, result, elapse

    outputs = []
    for data in images[: max(1, spec.get("warmup", 1))]:
        once(data)
    # One full pass first (its texts are the result), then cycle until the minimum count and time.
    samples, stages = [], []
    start = time.perf_counter()
    i = 0
    while True:
        idx = i % len(images)
        total_ms, result, elapse = once(images[idx])
        samples.append(total_ms)
        if elapse:
            names = ("det", "cls", "rec")
            stages.append({n: float(v) * 1e3 for n, v in zip(names, elapse) if v is not None})
        if i < len(images):
            lines = []
            for item in result or []:
                box, text, score = item[0], item[1], item[2]
                lines.append({"text": text, "score": float(score), "box": [[float(x), float(y)] for x, y in box]})
            outputs.append({"image": spec["images"][idx], "lines": lines})
        i += 1
        elapsed = time.perf_counter() - start
        if (i >= max(spec["min_runs"], len(images)) and elapsed >= spec["min_time_s"]) or elapsed >= spec["max_time_s"]:
            break
    versions = {}
    try:
        from importlib import metadata

        for dist in (spec["package"].replace("_", "-"), "onnxruntime", "openvino", "paddlepaddle", "numpy"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    except Exception:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        peak = None
    return {"ok": True, "load_s": load_s, "peak_rss_mib": peak, "samples_ms": samples, "stages_ms": stages, "outputs": outputs,
            "versions": versions, "config": config}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        out = run(spec)
    except Exception as exc:
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
