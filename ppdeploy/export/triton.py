"""Export ppdeploy models as a Triton Inference Server model repository.

Layout written (Triton's model-repository convention)::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx                  --backend onnxruntime
    REPO/<name>/1/model_sm90.plan ...         --backend tensorrt, one engine per GPU compute capability,
                                              chosen by Triton through cc_model_filenames

The ONNX placed in the repository is the converted model before any backend optimization: ONNX Runtime's
offline-optimized file may hold CPU-only fused operators that Triton's CUDA/TensorRT providers cannot run.

Every written config.pbtxt is built as a message of Triton's own schema and re-parsed from disk with it
(`validate_repository`), together with the checks Triton does when it loads a repository that the schema alone
cannot express (model name = directory name, a numeric version folder holding the model file, batching dims).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.backends.onnxruntime import io_spec
from ppdeploy.convert.pipeline import to_onnx
from ppdeploy.core.errors import ConfigError, InputError, SourceError
from ppdeploy.core.tensors import IOSpec, TensorSpec
from ppdeploy.export import triton_schema as schema
from ppdeploy.repository.config import load_config, load_repository
from ppdeploy.source.model import detect
from ppdeploy.source.zoo import ocr_dictionary
from ppdeploy.tasks.ocr.pipeline import DEFAULT_MODELS, OCROptions

log = logging.getLogger("ppdeploy.export.triton")

# Triton's own backend names (config.pbtxt `backend`), a vocabulary of the file format written here rather than
# ppdeploy's BACKENDS: "onnxruntime" ships the ONNX graph, "tensorrt" prebuilt engines.
TRITON_ORT, TRITON_TRT = "onnxruntime", "tensorrt"
TRITON_BACKENDS = (TRITON_ORT, TRITON_TRT)
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# The file Triton looks for in a version folder when config.pbtxt names none.
DEFAULT_MODEL_FILES = {TRITON_ORT: "model.onnx", TRITON_TRT: "model.plan", "python": "model.py"}
_CC = re.compile(r"^\d+\.\d+$")
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class TritonExportOptions:
    backend: str = TRITON_ORT
    max_batch_size: int = 8  # 0: the model gets whole requests, Triton does no batching
    max_queue_delay_us: int = 100  # how long Triton's dynamic batcher may hold a request to fill a batch
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int | None = None  # requests queued beyond it are rejected; None: unbounded (Triton's default)
    default_timeout_us: int | None = None  # a request queued longer is rejected; None: no timeout
    instance_kind: str = "auto"  # auto | cpu | gpu
    instance_count: int = 1
    version: int = 1
    # --backend tensorrt: compute capability ("9.0") -> serialized engine built for it on such a GPU.
    plans: Mapping[str, Path] = field(default_factory=dict)
    # --backend onnxruntime on GPUs: run through ONNX Runtime's TensorRT provider at this precision (fp32|fp16).
    ort_tensorrt: str | None = None

    def check(self) -> None:
        if self.backend not in TRITON_BACKENDS:
            raise ConfigError(f"unknown Triton backend '{self.backend}'",
                              hint=f"choose from {', '.join(TRITON_BACKENDS)}")
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ConfigError(f"preferred batch size {size} is outside 1..max_batch_size ({self.max_batch_size})")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ConfigError(f"unknown instance kind '{self.instance_kind}'", hint="choose auto, cpu or gpu")
        if self.instance_count < 1:
            raise ConfigError(f"instance count must be >= 1, got {self.instance_count}")
        if self.version < 1:
            raise ConfigError(f"model version must be >= 1, got {self.version}")
        if self.backend == TRITON_TRT:
            if not self.plans:
                raise ConfigError(
                    "--backend tensorrt needs at least one engine (--plan CC=FILE)",
                    hint="build the engine on each GPU type you deploy to (ppdeploy build MODEL --backend tensorrt), "
                         "or export with --backend onnxruntime --ort-tensorrt fp16 to let Triton build it on start",
                )
            if self.instance_kind == "cpu":
                raise ConfigError("TensorRT engines run on GPUs only; drop --instance-kind cpu")
            for cc, path in self.plans.items():
                if not _CC.match(cc):
                    raise ConfigError(f"'{cc}' is not a compute capability like 9.0 or 8.9")
                if not Path(path).is_file() or Path(path).stat().st_size == 0:
                    raise SourceError(f"TensorRT engine for compute capability {cc} not found or empty: {path}")
        elif self.plans:
            raise ConfigError("--plan applies to --backend tensorrt only")
        if self.ort_tensorrt is not None:
            if self.backend != TRITON_ORT:
                raise ConfigError("--ort-tensorrt applies to --backend onnxruntime only")
            if self.ort_tensorrt not in ("fp32", "fp16"):
                raise ConfigError(f"--ort-tensorrt takes fp32 or fp16, got '{self.ort_tensorrt}'")
            if self.instance_kind == "cpu":
                raise ConfigError("--ort-tensorrt needs GPU instances; drop --instance-kind cpu")


@dataclass(frozen=True)
class ExportedModel:
    name: str
    directory: Path
    config: Any  # inference.ModelConfig message, as parsed back from the written file


def model_name(model: str | os.PathLike) -> str:
    """A Triton model name (a directory name) for a zoo name, a model directory or an .onnx file."""
    path = Path(model)
    if path.suffix == ".onnx":
        stem = path.stem
    elif path.suffix in (".pdmodel", ".json"):  # Paddle's fixed inference.* file names say nothing: use the folder
        stem = path.resolve().parent.name
    else:
        stem = path.name
    name = _NAME.sub("_", stem).strip("._-")
    if not name:
        raise ConfigError(f"cannot derive a model name from '{model}'", hint="pass --name")
    return name


def onnx_for(model: str | os.PathLike) -> Path:
    """The checked ONNX file for `model` (converted and cached by ppdeploy when it is a Paddle model)."""
    return to_onnx(detect(model)).onnx_path


def onnx_io(onnx_path: Path) -> IOSpec:
    """Inputs and outputs of an ONNX model as ONNX Runtime reports them (names, dtypes, dynamic dims)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No graph optimization: only the declared IO is wanted, and loading stays fast for large models.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SourceError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
    return io_spec(session)


def _batchable(io: IOSpec) -> bool:
    """Triton batches along dim 0, so every input and output must have a dynamic leading dim."""
    tensors = io.inputs + io.outputs
    return all(len(t.shape) >= 1 and t.shape[0] is None for t in tensors)


def _triton_dims(spec: TensorSpec, batched: bool) -> list[int]:
    shape = spec.shape[1:] if batched else spec.shape
    dims = [-1 if d is None else int(d) for d in shape]
    if not dims:  # a per-sample scalar: Triton spells it [1] with a reshape to []
        return [1]
    return dims


def _add_tensor(collection, spec: TensorSpec, batched: bool) -> None:
    entry = collection.add(name=spec.name, data_type=schema.triton_dtype(spec.dtype), dims=_triton_dims(spec, batched))
    if len(spec.shape) == (1 if batched else 0):
        entry.reshape.SetInParent()  # empty reshape: the model's tensor has no dims beyond the batch


def tensor_config(name: str, io: IOSpec, options: TritonExportOptions):
    """The ModelConfig for one tensor model (ONNX or TensorRT) with this IO."""
    options.check()
    pb2 = schema.model_config_pb2()
    batched = options.max_batch_size > 0
    if batched and not _batchable(io):
        fixed = [t.describe() for t in io.inputs + io.outputs if not t.shape or t.shape[0] is not None]
        raise ConfigError(
            f"'{name}' cannot be batched by Triton: these tensors have no dynamic leading (batch) dim: {fixed}",
            hint="export with --max-batch-size 0",
        )
    config = pb2.ModelConfig(name=name, backend=options.backend, max_batch_size=options.max_batch_size)
    for spec in io.inputs:
        _add_tensor(config.input, spec, batched)
    for spec in io.outputs:
        _add_tensor(config.output, spec, batched)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
        config.dynamic_batching.preferred_batch_size.extend(options.preferred_batch_sizes)
        policy = config.dynamic_batching.default_queue_policy
        if options.max_queue_size:
            policy.max_queue_size = options.max_queue_size
        if options.default_timeout_us:
            policy.default_timeout_microseconds = options.default_timeout_us
            policy.timeout_action = pb2.ModelQueuePolicy.TimeoutAction.Value("REJECT")
    kind = INSTANCE_KINDS["gpu" if options.backend == TRITON_TRT and options.instance_kind == "auto" else options.instance_kind]
    config.instance_group.add(kind=pb2.ModelInstanceGroup.Kind.Value(kind), count=options.instance_count)
    if options.backend == TRITON_TRT:
        if len(options.plans) > 1:
            # No default_model_filename on purpose: a GPU whose capability has no engine fails to load the model
            # instead of deserializing an engine built for another architecture.
            for cc in sorted(options.plans):
                config.cc_model_filenames[cc] = plan_filename(cc)
        else:
            config.default_model_filename = plan_filename(next(iter(options.plans)))
    else:
        config.default_model_filename = DEFAULT_MODEL_FILES[TRITON_ORT]
        if options.ort_tensorrt:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name=TRITON_TRT)
            accelerator.parameters["precision_mode"] = options.ort_tensorrt.upper()
    return config


def plan_filename(cc: str) -> str:
    return f"model_sm{cc.replace('.', '')}.plan"


def write_config(model_dir: Path, config) -> ExportedModel:
    """Write config.pbtxt and read it back through Triton's schema."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / "config.pbtxt"
    tmp = target.with_suffix(".pbtxt.tmp")
    tmp.write_text(schema.config_text(config))
    os.replace(tmp, target)
    parsed = schema.parse_config(target.read_text(), str(target))
    return ExportedModel(parsed.name, model_dir, parsed)


def export_model(model: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                 options: TritonExportOptions | None = None) -> ExportedModel:
    """Export one model (zoo name, Paddle model dir or .onnx) into the Triton repository `repo`."""
    options = options or TritonExportOptions()
    options.check()
    name = name or model_name(model)
    onnx_path = onnx_for(model)
    if _NAME.search(name):
        raise ConfigError(f"model name '{name}' may hold only letters, digits, '_', '.' and '-'")
    io = onnx_io(onnx_path)
    config = tensor_config(name, io, options)
    model_dir = Path(repo) / name
    version_dir = model_dir / str(options.version)
    if version_dir.exists():
        shutil.rmtree(version_dir)  # a re-export replaces the version, never mixes old engines with new ones
    version_dir.mkdir(parents=True)
    if options.backend == TRITON_TRT:
        for cc, plan in options.plans.items():
            shutil.copyfile(plan, version_dir / plan_filename(cc))
    else:
        shutil.copyfile(onnx_path, version_dir / DEFAULT_MODEL_FILES[TRITON_ORT])
    labels = labels_file(model)
    if labels is not None and len(config.output) == 1:
        # Triton's classification extension (top-k "score:index:label") reads this file from the model folder.
        shutil.copyfile(labels, model_dir / LABELS_FILE)
        config.output[0].label_filename = LABELS_FILE
    exported = write_config(model_dir, config)
    validate_model_dir(model_dir)
    log.info("exported %s -> %s", model, model_dir)
    return exported


LABELS_FILE = "labels.txt"


def labels_file(model: str | os.PathLike) -> Path | None:
    """The class-name file next to a Paddle model (as ppdeploy's classification task reads it), if any."""
    path = Path(model)
    folder = path if path.is_dir() else path.parent
    candidate = folder / LABELS_FILE
    return candidate if path.exists() and candidate.is_file() else None


def validate_model_dir(model_dir: Path):
    """Parse <model_dir>/config.pbtxt with Triton's schema and check what Triton checks on load. Returns the config."""
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ConfigError(f"{model_dir} has no config.pbtxt")
    config = schema.parse_config(config_path.read_text(), str(config_path))
    where = str(config_path)
    if config.name and config.name != model_dir.name:
        raise ConfigError(f"{where}: name '{config.name}' differs from its directory '{model_dir.name}'")
    backend = config.backend or {"onnxruntime_onnx": TRITON_ORT, "tensorrt_plan": TRITON_TRT,
                                 "ensemble": "ensemble"}.get(config.platform, "")
    if not backend:
        raise ConfigError(f"{where}: neither backend nor platform is set")
    if config.max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size is negative")
    for output in config.output:
        if output.label_filename and not (model_dir / output.label_filename).is_file():
            raise ConfigError(f"{where}: output '{output.name}' names {output.label_filename}, which is missing")
    for tensor in list(config.input) + list(config.output):
        if not tensor.name:
            raise ConfigError(f"{where}: a tensor has no name")
        if not tensor.dims:
            raise ConfigError(f"{where}: tensor '{tensor.name}' has no dims")
        if any(d < -1 or d == 0 for d in tensor.dims):
            raise ConfigError(f"{where}: tensor '{tensor.name}' has invalid dims {list(tensor.dims)}")
    if backend == "ensemble":
        if not config.ensemble_scheduling.step:
            raise ConfigError(f"{where}: an ensemble needs ensemble_scheduling steps")
        return config
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    if not versions:
        raise ConfigError(f"{model_dir} has no numeric version folder (1/, 2/, ...)")
    for version in versions:
        wanted = set(config.cc_model_filenames.values()) or {config.default_model_filename or DEFAULT_MODEL_FILES.get(backend, "")}
        for filename in wanted:
            if filename and not (version / filename).exists():
                raise ConfigError(f"{version} lacks {filename}, which {where} names")
    return config


def validate_repository(repo: str | os.PathLike) -> dict[str, Any]:
    """Validate every model in a repository; also check that models called by others (ensemble steps and
    ppdeploy's Python models, which name theirs in parameters ending in '_model') exist. Returns name -> config."""
    repo = Path(repo)
    if not repo.is_dir():
        raise InputError(f"model repository not found: {repo}")
    configs = {p.parent.name: validate_model_dir(p.parent) for p in sorted(repo.glob("*/config.pbtxt"))}
    if not configs:
        raise ConfigError(f"{repo} holds no model (no */config.pbtxt)")
    for name, config in configs.items():
        called = [step.model_name for step in config.ensemble_scheduling.step]
        called += [v.string_value for k, v in config.parameters.items() if k.endswith("_model")]
        for target in called:
            if target not in configs:
                raise ConfigError(f"model '{name}' calls '{target}', which is not in {repo}")
    return configs


# -- OCR: three tensor models + a Python-backend model running ppdeploy's pipeline over them -------------------

OCR_MODEL_FILE = Path(__file__).with_name("triton_ocr_model.py")
BUNDLED_OCR = "ppocr"  # `ppdeploy export triton ppocr`: the bundled PP-OCRv4 det + cls + rec system


def io_to_json(io: IOSpec) -> dict:
    def tensors(items) -> list[dict]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in items]

    return {"inputs": tensors(io.inputs), "outputs": tensors(io.outputs)}


def ocr_config(name: str, stages: Mapping[str, str], instance_count: int = 1):
    """ModelConfig of the Python-backend OCR model. `stages` maps det/rec[/cls] to tensor-model names."""
    pb2 = schema.model_config_pb2()
    # max_batch_size 0: one image per execution; the batching that pays happens in the det/cls/rec models.
    config = pb2.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.add(name="image", data_type=pb2.TYPE_STRING, dims=[1])
    config.output.add(name="texts", data_type=pb2.TYPE_STRING, dims=[-1])
    config.output.add(name="scores", data_type=pb2.TYPE_FP32, dims=[-1])
    config.output.add(name="boxes", data_type=pb2.TYPE_INT32, dims=[-1, 4, 2])
    config.output.add(name="result_json", data_type=pb2.TYPE_STRING, dims=[1])
    config.instance_group.add(kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"), count=instance_count)
    for stage, model in sorted(stages.items()):
        config.parameters[f"{stage}_model"].string_value = model
    return config


def write_ocr_model(repo: Path, name: str, stages: Mapping[str, ExportedModel], *, options: Mapping[str, Any] | None = None,
                    instance_count: int = 1, version: int = 1) -> ExportedModel:
    """Write the Python-backend OCR model over already exported det/rec[/cls] models."""
    if "det" not in stages or "rec" not in stages:
        raise ConfigError(f"OCR model '{name}' needs det and rec models, got {sorted(stages)}")
    options = dict(options or {})

    parsed = OCROptions.from_kwargs(**options)  # unknown or invalid options fail now, not when Triton loads the model
    for stage, per_call in (("cls", parsed.cls.batch_size), ("rec", parsed.rec.batch_size)):
        limit = stages[stage].config.max_batch_size if stage in stages else 0
        if limit and per_call > limit:
            raise ConfigError(f"OCR model '{name}': {stage}_batch_size {per_call} exceeds the max_batch_size {limit} "
                              f"of '{stages[stage].name}'", hint=f"raise its max_batch_size or lower {stage}_batch_size")
    model_dir = repo / name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    version_dir.mkdir(parents=True)
    shutil.copyfile(OCR_MODEL_FILE, version_dir / DEFAULT_MODEL_FILES["python"])
    dictionary = options.get("rec_dictionary")
    if dictionary is None:
        dictionary = ocr_dictionary()
    dictionary = Path(dictionary)
    if not dictionary.is_file():
        raise ConfigError(f"recognition dictionary not found: {dictionary}")
    shutil.copyfile(dictionary, version_dir / dictionary.name)  # the repository must work on another machine
    options["rec_dictionary"] = dictionary.name
    spec = {
        "stages": {stage: {"model": exported.name, "io": io_to_json(_io_of(exported))}
                   for stage, exported in sorted(stages.items())},
        "options": options,
    }
    (version_dir / "ocr.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False))
    exported = write_config(model_dir, ocr_config(name, {s: e.name for s, e in stages.items()}, instance_count))
    validate_model_dir(model_dir)
    return exported


def _io_of(exported: ExportedModel) -> IOSpec:
    """The IO a caller sees (batch dim included) from an exported tensor model's config."""
    config = exported.config
    lead = (None,) if config.max_batch_size > 0 else ()

    def specs(items) -> tuple[TensorSpec, ...]:
        out = []
        for t in items:
            shape = () if t.HasField("reshape") and not t.reshape.shape else tuple(None if d < 0 else int(d) for d in t.dims)
            out.append(TensorSpec(t.name, schema.numpy_dtype_of(t.data_type), lead + shape))
        return tuple(out)

    return IOSpec(specs(config.input), specs(config.output))


def export_bundled_ocr(repo: str | os.PathLike, *, name: str = BUNDLED_OCR,
                       options: TritonExportOptions | None = None) -> list[ExportedModel]:
    """The bundled PP-OCRv4 system: det, cls, rec tensor models and the `ppocr` Python model over them."""
    repo = Path(repo)
    stages = {stage: export_model(zoo_name, repo, options=options) for stage, zoo_name in DEFAULT_MODELS.items()}
    return [*stages.values(), write_ocr_model(repo, name, stages)]


# -- ppdeploy model repositories (config.yaml) ----------------------------------------------------------------

def options_from_config(cfg, base: TritonExportOptions | None = None, **overrides: Any) -> TritonExportOptions:
    """Triton export options for one ppdeploy `serve.config.ModelConfig`: its batching, queue and instance
    settings, with explicit `overrides` (from the command line) winning."""
    base = base or TritonExportOptions()
    batching = cfg.dynamic_batching
    values = {
        "max_batch_size": cfg.max_batch_size,
        "max_queue_delay_us": int(round(batching.max_queue_delay_ms * 1000)),
        "preferred_batch_sizes": tuple(batching.preferred_batch_sizes),
        "max_queue_size": batching.max_queue_size,
        "default_timeout_us": int(round(batching.default_timeout_ms * 1000)) or None,
        "instance_count": cfg.instance_count,
        "version": int(cfg.version),
    }
    values.update(overrides)
    return dataclasses.replace(base, **values)


def export_config_repository(source_repo: str | os.PathLike, repo: str | os.PathLike,
                             **overrides: Any) -> list[ExportedModel]:
    """Every model of a ppdeploy model repository (`<dir>/<model>/config.yaml`); `task: ocr` entries become
    Python-backend models over the tensor models their `pipeline` names."""
    configs = load_repository(source_repo)
    repo = Path(repo)
    exported: dict[str, ExportedModel] = {}
    for cfg in configs:
        if cfg.composite:
            continue
        options = options_from_config(cfg, **overrides)
        if options.max_batch_size and not _batchable(onnx_io(onnx_for(cfg.source_path()))):
            log.warning("%s: the model has a fixed batch dim; exporting without Triton batching", cfg.name)
            options = dataclasses.replace(options, max_batch_size=0, preferred_batch_sizes=())
        exported[cfg.name] = export_model(cfg.source_path(), repo, name=cfg.name, options=options)
    out = list(exported.values())
    for cfg in configs:
        if not cfg.composite:
            continue
        stages = {stage: exported[ref] for stage, ref in cfg.pipeline.items()}
        out.append(write_ocr_model(repo, cfg.name, stages, options=cfg.task_options,
                                   instance_count=cfg.instance_count, version=int(cfg.version)))
    return out


def export(model: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
           overrides: Mapping[str, Any] | None = None) -> list[ExportedModel]:
    """`ppdeploy export triton`: MODEL is a model (zoo name, Paddle dir, .onnx), a ppdeploy model repository or
    one of its config.yaml files, or 'ppocr' (the bundled OCR system). `overrides` are TritonExportOptions
    fields given explicitly; the rest come from config.yaml or the defaults."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TritonExportOptions)}
    if unknown:
        raise ConfigError(f"unknown Triton export option(s) {sorted(unknown)}")
    path = Path(model)
    several = (str(model) == BUNDLED_OCR and not path.exists()) or (path.is_dir() and any(path.glob("*/config.yaml")))
    if several and overrides.get("plans"):
        raise ConfigError("--plan gives the engines of one model; export the models of this repository one by one "
                          "with --backend tensorrt --plan ...", hint="or use --ort-tensorrt fp16 for all of them")
    if str(model) == BUNDLED_OCR and not path.exists():
        return export_bundled_ocr(repo, name=name or BUNDLED_OCR, options=TritonExportOptions(**overrides))
    if path.is_dir() and any(path.glob("*/config.yaml")):
        if name:
            raise ConfigError("--name applies to a single model, not to a model repository")
        return export_config_repository(path, repo, **overrides)
    if path.name == "config.yaml":
        cfg = load_config(path)
        if cfg.composite:
            raise ConfigError(f"{path} is an OCR pipeline; export its whole repository ({path.parent.parent})")
        return [export_model(cfg.source_path(), repo, name=name or cfg.name, options=options_from_config(cfg, **overrides))]
    return [export_model(model, repo, name=name, options=TritonExportOptions(**overrides))]
