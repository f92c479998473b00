"""Post-conversion clean-up and proof: simplify with onnxslim, infer shapes, run onnx.checker, and load once in
ONNX Runtime. A graph that fails any step is not declared converted."""
from __future__ import annotations

import logging
from pathlib import Path

from ppdeploy.core.errors import ConversionError, SourceError

log = logging.getLogger("ppdeploy.convert.pipeline")


def optimize_and_check(path: Path, *, simplify: bool = True, origin: Path | None = None) -> dict:
    """Rewrite `path` in place; return facts about the final graph (node count, opset, io).

    `origin`: the user's own .onnx that `path` is a copy of; a file that does not parse is then a SourceError
    naming it (a corrupt download, a truncated copy), else a ConversionError (our converter wrote garbage)."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, a truncated external-data file, ...
        what = f"{type(exc).__name__}: {_first_line(exc)}"
        if origin is not None:
            raise SourceError(f"{origin} is not a readable ONNX model ({what})",
                              hint="the file is corrupt or not ONNX; export or download it again") from exc
        raise ConversionError(f"converted graph {path} is not a readable ONNX model ({what})",
                              hint="rebuild with --rebuild; if it persists, report the model") from exc
    nodes_before = len(model.graph.node)
    if simplify:
        model = _slim(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # shape inference is advisory; a failure is logged, the checker decides
        log.warning("ONNX shape inference failed on %s: %s", path.name, exc)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"converted graph {path} fails onnx.checker: {_first_line(exc)}",
                              hint="try another --opset, or report the op named above") from exc
    onnx.save(model, str(path))
    _load_in_onnxruntime(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"nodes_before": nodes_before, "nodes": len(model.graph.node), "opset": opset,
            "simplified": simplify}


def _slim(model):
    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim not installed; skipping graph simplification")
        return model
    try:
        # Shapes stay symbolic: onnxslim only folds what is constant, dynamic dims are preserved.
        return onnxslim.slim(model)
    except Exception as exc:  # a simplifier bug must not block a valid conversion
        log.warning("onnxslim failed (%s); keeping the unsimplified graph", _first_line(exc))
        return model


def _load_in_onnxruntime(path: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        msg = str(exc)
        node = _node_from_ort_error(msg)
        raise ConversionError(
            f"converted graph {path.name} does not load in ONNX Runtime"
            + (f" (node {node})" if node else "") + f": {_first_line(msg)}",
            hint="this paddle2onnx route produced an invalid graph; try another --opset or the other route",
        ) from exc


def _node_from_ort_error(msg: str) -> str | None:
    import re

    m = re.search(r"[Nn]ode \(([^)]+)\)", msg) or re.search(r"node_name[=: ]+'?([\w./:-]+)", msg)
    return m.group(1) if m else None


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
