"""What the user handed us: a paddle.nn.Layer, a legacy `inference.pdmodel` directory, a Paddle 3 PIR
`inference.json` directory, or an `.onnx` file — detected from the files, checked before anything runs."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ppdeploy.core.cache import default_root, sha256_files
from ppdeploy.core.errors import BackendUnavailable, SourceError
from ppdeploy.core.lazy import import_paddle
from ppdeploy.source import wheel_models, zoo

log = logging.getLogger("ppdeploy.source.model")

PDMODEL = "pdmodel"  # legacy ProgramDesc protobuf (Paddle <= 2.6, or 3.x with PIR off)
PIR = "pir"  # Paddle 3 PIR program as JSON
ONNX = "onnx"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # PDMODEL | PIR | ONNX
    model_file: Path
    params_file: Path | None  # None for ONNX
    name: str

    @property
    def directory(self) -> Path:
        return self.model_file.parent

    @property
    def is_paddle(self) -> bool:
        return self.kind in (PDMODEL, PIR)

    def files(self) -> list[Path]:
        return [self.model_file] + ([self.params_file] if self.params_file else [])

    def digest(self) -> str:
        """Content hash of the model (+ params) bytes: the root of every cache key."""
        return sha256_files(self.files())


def detect(model: Any, input_spec: Sequence[Any] | None = None, *, export_dir: Path | None = None,
           exports_root: Path | None = None) -> ModelSource:
    """Resolve `model` (zoo name, path, or paddle.nn.Layer) into a checked ModelSource."""
    if _is_layer(model):
        return from_layer(model, input_spec, export_dir=export_dir, exports_root=exports_root)
    if isinstance(model, ModelSource):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise SourceError(f"cannot use a {type(model).__name__} as a model",
                          hint="pass a zoo name, a Paddle model directory, an .onnx file or a paddle.nn.Layer")
    path = zoo.resolve(model)
    if not path.exists():
        raise SourceError(f"model path does not exist: {path}",
                          hint=f"bundled model names: {', '.join([*zoo.MODELS, *wheel_models.MODELS])}")
    if path.is_file():
        return _from_file(path)
    return _from_dir(path)


def _from_file(path: Path) -> ModelSource:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        _check_readable(path, "ONNX model")
        return ModelSource(ONNX, path, None, path.stem)
    if suffix in (".pdmodel", ".json"):
        return _paddle(path)
    raise SourceError(f"unrecognised model file {path}",
                      hint="expected a .onnx, a .pdmodel (legacy Paddle) or a .json (Paddle 3 PIR) model file")


def _from_dir(path: Path) -> ModelSource:
    candidates = sorted(path.glob("*.pdmodel")) + sorted(
        p for p in path.glob("*.json") if p.with_suffix(".pdiparams").exists() or p.stem in ("inference", "model"))
    if not candidates:
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) == 1:
            return _from_file(onnx_files[0])
        raise SourceError(f"no model found in {path}",
                          hint="expected inference.pdmodel or inference.json with inference.pdiparams, or one .onnx file")
    # Prefer the conventional inference.* name when a folder holds several programs.
    preferred = [c for c in candidates if c.stem == "inference"] or candidates
    return _paddle(preferred[0])


def _paddle(model_file: Path) -> ModelSource:
    kind = PDMODEL if model_file.suffix == ".pdmodel" else PIR
    params = model_file.with_suffix(".pdiparams")
    if not params.exists():
        raise SourceError(f"params file missing: {params}",
                          hint=f"{model_file.name} needs its weights next to it as {params.name}")
    _check_readable(model_file, "model file")
    _check_readable(params, "params file")
    _check_program(model_file, kind)
    name = model_file.parent.name if model_file.stem == "inference" else model_file.stem
    return ModelSource(kind, model_file, params, name)


def _check_readable(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise SourceError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    if not head:
        raise SourceError(f"{what} {path} is empty")


def _check_program(model_file: Path, kind: str) -> None:
    """Parse the program once, so a corrupt file is a clear error here rather than a converter abort later."""
    data = model_file.read_bytes()
    if kind == PIR:
        try:
            program = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(f"{model_file} is not a valid Paddle PIR program (JSON): {exc}") from exc
        if not isinstance(program, dict) or "program" not in program:
            raise SourceError(f"{model_file} is JSON but not a Paddle PIR program (no 'program' key)")
        return
    from google.protobuf.message import DecodeError

    try:
        import_paddle()
        from paddle.base.proto import framework_pb2
    except (ImportError, BackendUnavailable):  # paddle absent: the converter will still parse it; nothing cheap to check with
        return
    desc = framework_pb2.ProgramDesc()
    try:
        desc.ParseFromString(data)
    except DecodeError as exc:
        raise SourceError(f"{model_file} is not a valid Paddle program (corrupt or truncated .pdmodel): {exc}") from exc
    if not desc.blocks or not desc.blocks[0].ops:
        raise SourceError(f"{model_file} parses but holds no operators (corrupt or truncated .pdmodel)")


def _is_layer(obj: Any) -> bool:
    return any(cls.__module__.startswith("paddle.") and cls.__name__ == "Layer" for cls in type(obj).__mro__)


def from_layer(layer: Any, input_spec: Sequence[Any] | None, *, export_dir: Path | None = None,
               exports_root: Path | None = None) -> ModelSource:
    """Export a Layer with paddle.jit.save in eval mode (Paddle 3 writes a PIR inference.json).

    Without export_dir the export lands in `exports_root` (default: <cache>/layer-exports) under its content hash,
    so exporting the same Layer again reuses one folder instead of leaving a new temporary one each time."""
    paddle = import_paddle()

    if not input_spec:
        raise SourceError("a paddle.nn.Layer needs input_spec (a list of paddle.static.InputSpec)",
                          hint="e.g. input_spec=[paddle.static.InputSpec([None, 3, 224, 224], 'float32', 'x')]")
    if layer.training:
        warnings.warn(f"{type(layer).__name__} was in training mode; exporting it in eval mode "
                      "(dropout off, batch-norm running statistics)", stacklevel=3)
        log.warning("layer %s was in training mode; switched to eval() for export", type(layer).__name__)
    layer.eval()
    if export_dir:
        out_dir = Path(export_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paddle.jit.save(layer, str(out_dir / "inference"), input_spec=list(input_spec))
        return _from_dir(out_dir)
    root = Path(exports_root) if exports_root else default_root() / "layer-exports"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
    try:
        paddle.jit.save(layer, str(staging / "inference"), input_spec=list(input_spec))
        final = root / _from_dir(staging).digest()[:32]
        try:
            staging.rename(final)
        except OSError:  # already exported (same content), possibly by another process just now
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _from_dir(final)
