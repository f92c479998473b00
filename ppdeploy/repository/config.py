"""The model repository: one folder per model, each with a `config.yaml` (Triton's `config.pbtxt` ideas, in YAML).

Public API, shared by `ppdeploy serve`, `ppdeploy optimize` and the Triton exporter:

- `load_repository(dir) -> list[ModelConfig]`: every `<dir>/<model>/config.yaml`, validated together.
- `load_config(path) -> ModelConfig`: one file.
- `ModelConfig.for_source(source)`: the defaults `ppdeploy serve MODEL` uses.
- `ModelConfig.to_yaml()` / `ModelConfig.write(dir)`: write it back (round-trips through `load_config`).
- `ModelConfig.shape_profile()` -> `ppdeploy.core.shapes.ShapeProfile`; `ModelConfig.source_path()` resolves the
  source relative to the config's folder.

Every problem is reported as ``<file>: <field>: <message>``, all of them at once, in one `ConfigError`.

A config.yaml::

    name: rec                      # default: the folder name
    source: ppocrv4-rec            # zoo name | Paddle model dir | .onnx file (relative paths: from this folder)
    backends: [openvino, onnxruntime]   # tried in order; "auto" = ppdeploy's own order
    precision: fp32                # a registered precision (ppdeploy.precision.registry): fp32 | fp16 | bf16 | int8
    keep_fp32: []                  # bf16/fp16: what stays FP32; [encoder] = all before the first upsampling (DB det)
    threads: null                  # CPU threads per instance (null: all cores this process may use)
    backend_options: {}            # backend-specific build options (ppdeploy.backends.base.BuildOptions.extra)
    inputs:                        # shape profile per input (batch dim included)
      x: {min: [1, 3, 48, 32], opt: [8, 3, 48, 320], max: [16, 3, 48, 1280]}
    max_batch_size: 16             # 1 turns batching off
    dynamic_batching:
      max_queue_delay_ms: 2        # wait this long for more requests; 0 = batch only what queued while busy
      preferred_batch_sizes: [8, 16]
      max_queue_size: 128          # requests waiting; beyond it: 429 + Retry-After
      default_timeout_ms: 0        # 0 = no timeout; a request still queued after it gets 503
      pad: {x: [3]}                # axes each input may be zero-padded along to share a batch
    instance_count: 1
    engine_process: false          # run each instance's engine in its own process (ppdeploy.serve.engine_process)
    head: null                     # ctc_greedy: a CTC recognizer answers best class + probability per step, not the
                                   # whole softmax (2.1 MB per PP-OCRv4 line; ppdeploy.graph.heads)
    task: none                     # none | a registered task (ppdeploy.tasks.registry): ocr | classification
    autoscaling:                   # only `ppdeploy serve --ray`: Ray Serve replicas of this model (--replicas wins)
      {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 4}
    limits:                        # per request, checked before it runs (413 beyond them)
      {max_input_elements: 16777216, max_output_bytes: 268435456}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ppdeploy.backends import BACKENDS
from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.core.shapes import InputRange, ShapeProfile
from ppdeploy.precision.registry import PRECISIONS
from ppdeploy.source import zoo
from ppdeploy.tasks.registry import TASKS

if TYPE_CHECKING:
    from ppdeploy.tasks.base import Task

CONFIG_FILE = "config.yaml"
NO_TASK = "none"


class _Strict(BaseModel):
    # A misspelt key ("max_batch" for "max_batch_size") must be an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputShape(_Strict):
    """min/opt/max of one input, batch dim included (as `ppdeploy.core.shapes.InputRange`)."""

    min: list[int]
    opt: list[int]
    max: list[int]

    @model_validator(mode="after")
    def _ordered(self) -> "InputShape":
        try:
            InputRange(tuple(self.min), tuple(self.opt), tuple(self.max))
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    def to_range(self) -> InputRange:
        return InputRange(tuple(self.min), tuple(self.opt), tuple(self.max))


class DynamicBatching(_Strict):
    max_queue_delay_ms: float = Field(0.0, ge=0, le=60_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(256, ge=1)
    default_timeout_ms: float = Field(0.0, ge=0)
    # input name -> axes (never 0, the batch axis) along which requests may be zero-padded to a common size so
    # they share a batch. Only for models whose outputs do not depend on the padded extent: the outputs are
    # returned as the padded batch produced them.
    pad: dict[str, list[int]] = Field(default_factory=dict)
    # Batches expected to finish within this many ms run on the server's event loop instead of its inference
    # thread (saves two thread switches on sub-millisecond models); 0 turns it off. Only with one instance.
    inline_max_ms: float = Field(1.0, ge=0, le=50)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return sorted(set(v))

    @field_validator("pad")
    @classmethod
    def _no_batch_axis(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, axes in v.items():
            if any(a < 1 for a in axes):
                raise ValueError(f"input '{name}': pad axes must be >= 1 (axis 0 is the batch axis)")
        return {k: sorted(set(a)) for k, a in v.items()}


class Limits(_Strict):
    """What one request may ask of a model, checked before it runs (4xx naming the limit, never an engine crash).
    A shape profile (`inputs`, or the engine's own) bounds shapes too; these apply to every request."""

    max_input_elements: int = Field(1 << 24, ge=1)
    """Elements of one input of one request (16.7 M: a 64 MB float32 tensor). Larger: 413."""
    max_output_bytes: int = Field(256 << 20, ge=1)
    """Estimated bytes of one request's outputs (output shapes with their dynamic dims resolved from the request,
    else scaled from the bytes per input element seen on earlier calls). Larger: 413."""


class Autoscaling(_Strict):
    """Ray Serve autoscaling of this model's deployment (ppdeploy.serve.ray); the plain server ignores it."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)  # requests in flight per replica that Ray aims for
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self


class ModelConfig(_Strict):
    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    source: str | None = None  # zoo name, Paddle model dir or .onnx file; None only for a composite task (ocr)
    backends: list[str] = Field(default_factory=lambda: ["auto"], min_length=1)
    precision: str = "fp32"  # a name in PRECISIONS, checked when validated (so one registered later counts)
    # fp16/bf16: what stays FP32 (ppdeploy.graph.regions; "encoder", and for fp16 also node names)
    keep_fp32: list[str] = Field(default_factory=list)
    threads: int | None = Field(None, ge=1)
    backend_options: dict[str, Any] = Field(default_factory=dict)  # BuildOptions.extra (workspace, cuda graphs...)
    inputs: dict[str, InputShape] = Field(default_factory=dict)
    max_batch_size: int = Field(8, ge=1, le=4096)
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    instance_count: int = Field(1, ge=1, le=64)
    # true: each instance's engine runs in a child process fed through shared memory, so engine calls never wait on
    # the HTTP process's GIL (ppdeploy.serve.engine_process). Linux only. With `ppdeploy serve --workers N` (N >= 2)
    # the workers share one such process per instance, which merges their batches (ppdeploy.serve.workers).
    engine_process: bool = False
    head: Literal["ctc_greedy"] | None = None  # output head appended to the graph (ppdeploy.graph.heads)
    task: str = NO_TASK  # "none" or a name in TASKS, checked when validated (so one registered later counts)
    # a composite task (Task.composite, e.g. ocr) -> which models of this repository run each of its roles
    # ({det: ..., cls: ..., rec: ...}; the task's roles and required roles are checked by Task.check_config)
    pipeline: dict[str, str] = Field(default_factory=dict)
    # passed as keyword arguments to the task's constructor (labels file, thresholds, ...)
    task_options: dict[str, Any] = Field(default_factory=dict)
    version: str = Field("1", pattern=r"^[0-9]+$")
    autoscaling: Autoscaling | None = None  # Ray Serve only (ppdeploy serve --ray)
    limits: Limits = Field(default_factory=Limits)  # per-request size limits (413 beyond them)

    _base_dir: Path | None = PrivateAttr(default=None)
    _file: Path | None = PrivateAttr(default=None)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            if name.strip().lower() == "auto":
                out.append("auto")
                continue
            out.append(_registered(BACKENDS, name))
        return out

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, v: str) -> str:
        return _registered(PRECISIONS, v)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return NO_TASK if v.strip().lower() == NO_TASK else _registered(TASKS, v)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelConfig":
        task = self.task_class
        if task is not None:
            task.check_config(self.pipeline, self.task_options)
        elif self.pipeline:
            raise ValueError("'pipeline' is only for tasks whose roles are other models (task: ocr)")
        if not self.composite and not self.source:
            raise ValueError("'source' is required (zoo name, Paddle model dir or .onnx file)")
        for size in self.dynamic_batching.preferred_batch_sizes:
            if size > self.max_batch_size:
                raise ValueError(f"preferred batch size {size} exceeds max_batch_size {self.max_batch_size}")
        for name, rng in self.inputs.items():
            if self.max_batch_size > 1 and rng.max and rng.max[0] < self.max_batch_size:
                raise ValueError(
                    f"inputs.{name}.max batch dim {rng.max[0]} is below max_batch_size {self.max_batch_size}")
        return self

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def for_source(cls, source: str | os.PathLike, name: str | None = None, **overrides: Any) -> "ModelConfig":
        """Defaults for serving one model: the name is the zoo name or the file/folder stem."""
        text = str(source)
        if name is None:
            p = Path(text)
            name = p.stem if p.suffix == ".onnx" else (p.name or "model")
            name = "".join(c if (c.isalnum() or c in "_.-") else "_" for c in name) or "model"
        try:
            return cls(name=name, source=text, **overrides)
        except ValidationError as exc:
            raise ConfigError("invalid model settings:\n" + "\n".join(_error_lines(exc, "<command line>"))) from None

    # -- accessors ----------------------------------------------------------------------------------------
    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def base_dir(self) -> Path:
        return self._base_dir or Path.cwd()

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def task_class(self) -> "type[Task] | None":
        """The registered Task class of `task` (None for task: none)."""
        return None if self.task == NO_TASK else TASKS.get(self.task)

    @property
    def composite(self) -> bool:
        """A task over other models of the repository (its `pipeline`), with no engine of its own (task: ocr)."""
        task = self.task_class
        return task is not None and task.composite

    def source_path(self) -> str | Path:
        """A zoo name unchanged; a path made absolute against the config's folder."""
        if self.source is None:
            raise ConfigError(f"{self._where()}: model '{self.name}' has no source")
        if zoo.is_bundled(self.source):
            return self.source
        p = Path(self.source).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def shape_profile(self) -> ShapeProfile:
        return ShapeProfile({n: s.to_range() for n, s in self.inputs.items()})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)

    def write(self, repo_dir: str | os.PathLike) -> Path:
        """Write `<repo_dir>/<name>/config.yaml`; returns the file path."""
        folder = Path(repo_dir) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_FILE
        path.write_text(self.to_yaml())
        return path

    def _where(self) -> str:
        return str(self._file) if self._file else "<config>"


def _error_lines(exc: ValidationError, where: str) -> list[str]:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: {field}: {msg}")
    return lines


def _registered(registry, name: str) -> str:
    """The registered spelling of `name` in `registry`, as the ValueError pydantic reports with the field."""
    try:
        return registry.canonical(name)
    except PPDeployError as exc:  # carries the list of valid names in its hint
        hint = f" ({exc.hint})" if exc.hint else ""
        raise ValueError(f"{exc.args[0]}{hint}") from None


def _parse_file(path: Path, default_name: str | None) -> tuple[ModelConfig | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                      "save the file as UTF-8"]
    except OSError as exc:
        return None, [f"{path}: cannot read: {exc}"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"{path}: {at}invalid YAML: {problem}"]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [f"{path}: (top level): expected a mapping of fields, got {type(data).__name__}"]
    if default_name and "name" not in data:
        data["name"] = default_name
    try:
        cfg = ModelConfig.model_validate(data)
    except ValidationError as exc:
        return None, _error_lines(exc, str(path))
    cfg._file = path
    cfg._base_dir = path.parent
    return cfg, []


def _source_problem(cfg: ModelConfig) -> str | None:
    if cfg.source is None:
        return None
    if zoo.is_bundled(cfg.source):
        return None
    p = cfg.source_path()
    if not Path(p).exists():
        return f"{cfg._where()}: source: '{cfg.source}' is neither a bundled model ({', '.join(zoo.names())}) nor an existing path ({p})"
    return None


def load_config(path: str | os.PathLike, *, check_source: bool = True) -> ModelConfig:
    """One config file; the folder name is the default model name."""
    path = Path(path)
    cfg, errors = _parse_file(path, path.parent.name if path.name == CONFIG_FILE else None)
    if cfg is not None and check_source and (problem := _source_problem(cfg)):
        errors.append(problem)
    if errors or cfg is None:
        raise ConfigError("invalid model config:\n" + "\n".join(errors))
    return cfg


def load_repository(repo_dir: str | os.PathLike, *, check_source: bool = True) -> list[ModelConfig]:
    """Every `<repo_dir>/<model>/config.yaml`, sorted by name. Errors from all files are reported together."""
    repo = Path(repo_dir)
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} is not a directory")
    errors: list[str] = []
    configs: list[ModelConfig] = []
    broken: set[str] = set()
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        path = folder / CONFIG_FILE
        if not path.is_file():
            continue  # Triton also ignores folders without a config; say so at debug level only
        cfg, errs = _parse_file(path, folder.name)
        errors.extend(errs)
        if cfg is None:
            broken.add(folder.name)  # its own errors are reported; don't also call references to it dangling
            continue
        if check_source and (problem := _source_problem(cfg)):
            errors.append(problem)
        configs.append(cfg)
    errors.extend(check_references(configs, broken))
    if not configs and not errors:
        errors.append(f"{repo}: no model folders with a {CONFIG_FILE}")
    if errors:
        raise ConfigError(f"invalid model repository {repo}:\n" + "\n".join(errors))
    return sorted(configs, key=lambda c: c.name)


def check_references(configs: list[ModelConfig], invalid: set[str] = frozenset()) -> list[str]:
    """Cross-file checks: unique names, and composite tasks (ocr) that name existing tensor models. `invalid`: names of
    models whose config failed to parse (references to them are not reported again)."""
    errors = []
    by_name: dict[str, ModelConfig] = {}
    for cfg in configs:
        if cfg.name in by_name:
            errors.append(f"{cfg._where()}: name: '{cfg.name}' is also used by {by_name[cfg.name]._where()}")
        by_name.setdefault(cfg.name, cfg)
    for cfg in configs:
        for stage, ref in cfg.pipeline.items():
            target = by_name.get(ref)
            if target is None and ref in invalid:
                continue
            if target is None:
                errors.append(f"{cfg._where()}: pipeline.{stage}: no model named '{ref}' in this repository "
                              f"(models: {', '.join(sorted(by_name)) or 'none'})")
            elif target.composite:
                errors.append(f"{cfg._where()}: pipeline.{stage}: '{ref}' is itself a '{target.task}' pipeline, "
                              "not a model")
    return errors


__all__ = ["Autoscaling", "CONFIG_FILE", "DynamicBatching", "InputShape", "Limits", "ModelConfig", "NO_TASK", "check_references",
           "load_config", "load_repository"]
