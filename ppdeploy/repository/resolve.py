"""Which model configs to serve: a model repository folder, one model (zoo name, Paddle dir, .onnx), or the name of
a composite task (e.g. 'ocr'), which serves its default models behind its route.

`resolve_configs(model, repo=..., defaults=ServeDefaults(...))` is what `ppdeploy serve`, the workers of
`--workers N` and the Ray Serve app builder share, so they resolve a model the same way. `ServeDefaults` holds the
settings a single model is served with (a repository's configs carry their own).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ppdeploy.core.errors import ConfigError
from ppdeploy.repository.config import ModelConfig, check_references, load_repository
from ppdeploy.source import zoo
from ppdeploy.tasks.registry import TASKS


@dataclass(frozen=True)
class ServeDefaults:
    """How one model given by name or path is served (ignored for a repository: its config.yaml files say)."""

    name: str | None = None  # model name on the API; None: derived from the source
    backends: tuple[str, ...] = ("auto",)  # backend preference list
    precision: str = "fp32"
    threads: int | None = None  # CPU threads per model instance
    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0  # wait this long for a batch to fill
    max_queue_size: int = 256  # queued requests before 429
    timeout_ms: float = 0.0  # default per-request queue timeout (0: none)
    instances: int = 1  # model instances (runners) per model
    head: str | None = None  # output head of a CTC recognizer (with a composite task: of its rec role)
    task: str | None = None  # task; None: the registered task that claims the folder (Task.claims_folder), else none


def resolve_configs(model: str | None = None, *, repo: str | None = None,
                    defaults: ServeDefaults = ServeDefaults(), engine_process: bool = False) -> list[ModelConfig]:
    """The configs to serve: every model of `repo`, or `model` with `defaults`. `engine_process`: run every
    model that has an engine in its own process (a pipeline has none)."""
    configs = _resolve(model, repo, defaults)
    if engine_process:
        for cfg in configs:
            if not cfg.pipeline:
                cfg.engine_process = True
    return configs


def _resolve(model: str | None, repo: str | None, d: ServeDefaults) -> list[ModelConfig]:
    if repo and model:
        raise ConfigError("give either MODEL or --repo, not both")
    if repo:
        return load_repository(repo)
    if not model:
        raise ConfigError("nothing to serve", hint="ppdeploy serve ppocrv4-rec   or   ppdeploy serve --repo DIR")
    common = dict(backends=list(d.backends) or ["auto"], precision=d.precision, threads=d.threads,
                  max_batch_size=d.max_batch_size, instance_count=d.instances,
                  dynamic_batching={"max_queue_delay_ms": d.max_queue_delay_ms, "max_queue_size": d.max_queue_size,
                                    "default_timeout_ms": d.timeout_ms})
    bundles = TASKS.where(lambda task: task.composite and bool(task.default_models))
    if model in bundles:
        task = TASKS.get(model)
        stages = dict(task.default_models)
        configs = [ModelConfig.for_source(src, name=src, **common, head=d.head if stage == task.head_role else None)
                   for stage, src in stages.items()]
        configs.append(ModelConfig(name=d.name or task.name, task=task.name, pipeline=stages))
        errors = check_references(configs)
        if errors:
            raise ConfigError("\n".join(errors))
        return configs
    if not zoo.is_bundled(model) and not Path(model).exists():
        raise ConfigError(f"'{model}' is neither a bundled model ({', '.join([*zoo.names(), *bundles])}) nor an "
                          f"existing path")
    task = d.task
    if task is None:
        folder = Path(model)
        task = next((name for name in TASKS.where(lambda t: t.claims_folder(folder))), "none")
    source = model if zoo.is_bundled(model) else str(Path(model).resolve())
    return [ModelConfig.for_source(source, name=d.name, task=task, head=d.head, **common)]


__all__ = ["ServeDefaults", "resolve_configs"]
