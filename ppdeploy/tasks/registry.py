"""`TASKS`: task name -> `ppdeploy.tasks.base.Task` class, imported on first use.

The serve routes (`/v1/<route>`), the repository's `task:` field, `build --calib` and the precision gates come from
here, so adding a task is its folder plus one `register` line (or a `TASKS.register` call at run time).
"""
from __future__ import annotations

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.registry import Registry

TASKS: Registry = Registry("task", ConfigError)
TASKS.register("ocr", "ppdeploy.tasks.ocr.pipeline:OCRPipeline")
TASKS.register("classification", "ppdeploy.tasks.classification.task:Classifier")
TASKS.register("detection", "ppdeploy.tasks.detection.task:Detector")

__all__ = ["TASKS"]
