"""Write an optimize winner as a model-repository entry in the serving schema (`ppdeploy.repository.config`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ppdeploy.repository.config import ModelConfig
from ppdeploy.source import zoo


def write_model_config(repo: Path, source: str, name: str | None, backend: str, precision: str, threads: int | None,
                       max_batch_size: int = 8, **extra: Any) -> Path:
    """<repo>/<name>/config.yaml in the serving schema (ppdeploy.repository.config), source made absolute when a path."""
    src = source if source in zoo.MODELS else str(Path(source).resolve())
    cfg = ModelConfig.for_source(src, name=name, backends=[backend], precision=precision, threads=threads,
                                 max_batch_size=max_batch_size, **extra)
    return cfg.write(repo)


def write_pipeline_config(repo: Path, name: str, task: str, pipeline: dict[str, str]) -> Path:
    """<repo>/<name>/config.yaml for a task that chains the stage entries named in `pipeline`."""
    return ModelConfig(name=name, task=task, pipeline=pipeline).write(repo)
