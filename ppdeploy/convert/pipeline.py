"""Paddle -> ONNX, by the route that works for the model's format, cached by content.

`to_onnx(source)` returns the path of a checked ONNX file in the cache. A second call with the same model
bytes, route, converter version and opset is a cache hit and converts nothing.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ppdeploy.convert import routes
from ppdeploy.convert.optimize import optimize_and_check
from ppdeploy.core.cache import EngineCache
from ppdeploy.core.errors import ConversionError
from ppdeploy.core.lazy import install_hint
from ppdeploy.source.model import ONNX, PDMODEL, ModelSource

log = logging.getLogger("ppdeploy.convert.pipeline")

ONNX_FILE = "model.onnx"
WORKER_TIMEOUT_S = 900
# Counts real conversions in this process; tests use it to prove a cache hit converted nothing.
CONVERSIONS = {"count": 0}


@dataclass
class ConversionResult:
    onnx_path: Path
    route: str
    converter_version: str
    opset: int | None
    cache_hit: bool
    seconds: float
    facts: dict


def to_onnx(source: ModelSource, *, opset: int | None = None, cache: EngineCache | None = None,
            simplify: bool = True, rebuild: bool = False) -> ConversionResult:
    cache = cache or EngineCache()
    if source.kind == ONNX:
        return _onnx_passthrough(source, cache, simplify=simplify, rebuild=rebuild)
    if importlib.util.find_spec("paddle") is None:
        raise ConversionError(f"converting {source.name} from Paddle needs paddlepaddle and paddle2onnx",
                              hint=f"{install_hint('paddle')} (or give an .onnx file)")
    route = routes.route_for(source.kind)
    opset = opset or route.default_opset
    if opset < 11:
        raise ConversionError(f"opset {opset} is too old", hint="use --opset 11 or newer (TensorRT needs >= 11)")
    parts = {"source": source.digest(), "kind": source.kind, "route": route.name,
             "converter": route.version() if route.pythonpath is None else routes.LEGACY_VERSION,
             "opset": opset, "simplify": simplify}
    facts: dict = {}

    def build(out_dir: Path) -> None:
        nonlocal facts
        facts = _run_route(route, source, out_dir / ONNX_FILE, opset)
        facts.update(optimize_and_check(out_dir / ONNX_FILE, simplify=simplify))
        (out_dir / "conversion.json").write_text(json.dumps(facts, indent=2))

    start = time.perf_counter()
    result = cache.get_or_build("onnx", parts, build, label=f"{source.name} via {route.name}", rebuild=rebuild)
    if result.hit:
        facts = json.loads((result.path / "conversion.json").read_text())
    return ConversionResult(result.path / ONNX_FILE, route.name, str(parts["converter"]), facts.get("opset", opset),
                            result.hit, time.perf_counter() - start, facts)


def _onnx_passthrough(source: ModelSource, cache: EngineCache, *, simplify: bool, rebuild: bool) -> ConversionResult:
    """An ONNX the user gave still gets simplified and checked once (cached), never modified in place."""
    parts = {"source": source.digest(), "kind": ONNX, "simplify": simplify}

    def build(out_dir: Path) -> None:
        shutil.copyfile(source.model_file, out_dir / ONNX_FILE)
        facts = optimize_and_check(out_dir / ONNX_FILE, simplify=simplify, origin=source.model_file)
        (out_dir / "conversion.json").write_text(json.dumps(facts, indent=2))

    start = time.perf_counter()
    result = cache.get_or_build("onnx", parts, build, label=f"{source.name} (onnx)", rebuild=rebuild)
    facts = json.loads((result.path / "conversion.json").read_text())
    return ConversionResult(result.path / ONNX_FILE, "onnx", "-", facts.get("opset"), result.hit,
                            time.perf_counter() - start, facts)


def _run_route(route: routes.Route, source: ModelSource, save_file: Path, opset: int) -> dict:
    env = dict(os.environ)
    if route.pythonpath is not None:
        routes.ensure_legacy_installed()
        env["PYTHONPATH"] = os.pathsep.join([str(route.pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = {"model_file": str(source.model_file), "params_file": str(source.params_file),
            "save_file": str(save_file), "opset": opset}
    CONVERSIONS["count"] += 1
    log.info("converting %s with %s (opset %d)", source.model_file, route.name, opset)
    try:
        proc = subprocess.run([sys.executable, "-m", "ppdeploy.convert.worker", json.dumps(args)],
                              capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"{route.name} did not finish converting {source.model_file} in {WORKER_TIMEOUT_S}s") from exc
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0 or not save_file.is_file():
        message, ops = _explain_failure(route, source, output, proc.returncode)
        raise ConversionError(message, hint=_hint(route, source, ops))
    line = next((ln for ln in output.splitlines() if ln.startswith("PPDEPLOY_RESULT ")), None)
    info = json.loads(line.split(" ", 1)[1]) if line else {}
    return {"route": route.name, "paddle2onnx": info.get("paddle2onnx"), "source_kind": source.kind}


def _explain_failure(route: routes.Route, source: ModelSource, output: str, code: int) -> tuple[str, list[str]]:
    """Name the Paddle op at fault when paddle2onnx says which; otherwise show the tail of its output."""
    unsupported = re.findall(r"=+\s*([\w.]+)\s*=+", output)
    line = next((ln for ln in output.splitlines() if ln.startswith("PPDEPLOY_SUSPECTS ")), None)
    suspects = json.loads(line.split(" ", 1)[1]) if line else []
    how = "killed by a signal" if code < 0 else f"exit {code}"
    lines = [f"{route.name} (paddle2onnx {route.version()}) failed on {source.model_file} ({how})"]
    ops = sorted(set(unsupported) | set(suspects))
    if ops:
        lines.append(f"unsupported Paddle op(s): {', '.join(ops)}")
    if not unsupported:
        errs = [ln for ln in output.splitlines() if re.search(r"error|Error|ERROR|MUST|not support", ln)]
        tail = errs[-6:] if errs else output.strip().splitlines()[-6:]
        lines.extend("  " + ln.strip()[:300] for ln in tail)
    return "\n".join(lines), ops


def _hint(route: routes.Route, source: ModelSource, ops: list[str]) -> str:
    if ops:
        return (f"paddle2onnx {route.version()} has no ONNX mapping for {', '.join(ops)}: rewrite that part of the "
                "model with supported ops, or serve it with --backend paddle (Paddle Inference needs no ONNX)")
    if source.kind == PDMODEL:
        return ("legacy .pdmodel files convert with paddle2onnx 1.3.1; if an op is unsupported, try --opset 16, "
                "or re-export the model with Paddle 3 (PIR) and convert that")
    return "PIR programs need paddle2onnx >= 2.0; try another --opset (e.g. 16 or 18) or upgrade paddle2onnx"
