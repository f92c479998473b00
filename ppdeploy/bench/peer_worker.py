"""Runs one RapidOCR flavour for `ppdeploy.bench.peers`, as a long-lived child process in the peer's own virtual
environment, so it imports nothing from ppdeploy (only the standard library before the peer itself).

Protocol, one JSON object per line:
  stdin  first line: {"package", "images": [paths], "overrides": {section: {key: value}}}
         then:       {"cmd": "run", "index": i}  |  {"cmd": "stats"}
  stdout every reply is one line starting with RESULT_MARKER (RapidOCR logs to stdout too):
         init:  {"ok", "load_s", "versions", "config"} or {"ok": false, "error"}
         run:   {"ok", "wall_ms", "cpu_ms", "stages": {det, cls, rec}, "lines": [{text, score, box}]}
         stats: {"ok", "peak_rss_mib"}
The parent decides when and how often each image runs, so peers and ppdeploy can be interleaved.
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
    merge(config, overrides)
    # RapidOCR resolves relative model paths against its package dir; keep them relative.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
        cfg_path = f.name
    engine = module.RapidOCR(config_path=cfg_path)
    if config["Det"].get("limit_type") == "max" and "engine_type" not in config["Det"]:
        # RapidOCR's "max" mode ignores limit_side_len and picks 960/1500/2000 from the image size itself;
        # pin it to the configured value so the peer detects at the same resolution as ppdeploy. (rapidocr >= 3,
        # whose sections name their engine_type, honours the limit itself.)
        det = engine.text_det
        pre = importlib.import_module(f"{package}.ch_ppocr_det.utils").DetPreProcess
        det.get_preprocess = lambda _max_wh: pre(det.limit_side_len, det.limit_type, det.mean, det.std)
    return engine, config


def merge(config: dict, overrides: dict) -> None:
    """Overrides into the config, nested sections key by key (EngineConfig.onnxruntime keeps its other keys)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            merge(config[key], value)
        else:
            config[key] = value


def versions(package: str) -> dict:
    from importlib import metadata

    out = {}
    for dist in (package.replace("_", "-"), "onnxruntime", "openvino", "paddlepaddle", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_once(engine, data: bytes) -> dict:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = engine(data)
    wall_ms = (time.perf_counter() - wall0) * 1e3
    cpu_ms = (time.process_time() - cpu0) * 1e3
    if isinstance(out, tuple):  # rapidocr 1.x: ([(box, text, score)], [det, cls, rec] seconds)
        result, elapse = out
    else:  # rapidocr >= 3: an output object (boxes None when nothing was read)
        boxes = [] if getattr(out, "boxes", None) is None else out.boxes
        result = list(zip(boxes, out.txts or (), out.scores or ()))
        elapse = getattr(out, "elapse_list", None)
    stages = {n: float(v) * 1e3 for n, v in zip(("det", "cls", "rec"), elapse or []) if v is not None}
    lines = [{"text": item[1], "score": float(item[2]), "box": [[float(x), float(y)] for x, y in item[0]]}
             for item in result or []]
    return {"ok": True, "wall_ms": wall_ms, "cpu_ms": cpu_ms, "stages": stages, "lines": lines}


def peak_rss_mib() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except (ImportError, OSError):
        return None


def reply(obj: dict) -> None:
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    try:
        spec = json.loads(sys.stdin.readline())
        images = [Path(p).read_bytes() for p in spec["images"]]
        t0 = time.perf_counter()
        engine, config = make_engine(spec["package"], spec.get("overrides", {}))
        reply({"ok": True, "load_s": time.perf_counter() - t0, "versions": versions(spec["package"]), "config": config})
    except Exception as exc:
        reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]})
        return 1
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if cmd.get("cmd") == "run":
                reply(run_once(engine, images[int(cmd["index"])]))
            elif cmd.get("cmd") == "stats":
                reply({"ok": True, "peak_rss_mib": peak_rss_mib()})
            else:
                reply({"ok": False, "error": f"unknown command {cmd!r}"})
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
