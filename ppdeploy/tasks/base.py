"""The Task contract: what a task (OCR, classification, ...) gives the rest of ppdeploy, after Triton's Python model.

A task is a class registered in `ppdeploy.tasks.registry.TASKS`; its instances are the runnable pipelines.
- class data: `name` (the repository's `task:` value), `route` (served at `/v1/<route>`), `roles` (the models it
  runs, e.g. det/cls/rec), `required_roles`, `default_models` (role -> zoo name), `composite` (True: each role is
  another model of the repository, named in the config's `pipeline:`; False: the config's own model is the one role),
  `head_role`, `gate_metric`, and `claims_folder(dir)` (serve a model folder given without a task as this task).
- life cycle: `initialize(runners, options, context)` builds an instance on runner-like objects (`.io`, `.infer`),
  `execute(inputs) -> results` predicts a batch, `finalize()` frees what the instance owns.
- precision: `calibration(role, folder, runners=...)` -> CalibrationSet through the task's own preprocessing
  (`calibration_needs`: the FP32 runners that takes); `metric(role, data, runners)` -> TaskMetric for the gates
  (the candidate runner swapped into `role`); `role_of(model)`, `synthetic_data(...)` for `ppdeploy build`.
- serving: `decode(body, content_type, max_pixels)` turns a `/v1/<route>` request body into one input,
  `encode(result)` a result into JSON; `check_config(pipeline, options)` validates the task's config fields.
Everything that used to branch on a task's name asks the registry for the class and calls these instead.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ppdeploy.core.errors import InputError
from ppdeploy.precision.calibration import CalibrationSet
from ppdeploy.precision.gate import TaskMetric
from ppdeploy.tasks.image_io import load_image


@dataclass(frozen=True)
class TaskContext:
    """What the host knows about a task beyond its runners."""

    source_dir: Path | None = None  # folder of the model's source (side files such as labels.txt live there)
    base_dir: Path | None = None  # folder of the config.yaml: relative paths in task options start there
    max_pixels: int | None = None  # the server's input image limit (None: the task's default)


class Task(abc.ABC):
    name: ClassVar[str]
    route: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]
    required_roles: ClassVar[tuple[str, ...] | None] = None  # None: every role
    default_models: ClassVar[Mapping[str, str]] = {}
    composite: ClassVar[bool] = False
    # The output agreement metric (precision/compare.py) its models' precision gates use without a task metric.
    gate_metric: ClassVar[str] = "auto"
    # The role whose model takes `--head` (an output head appended to its graph, graph/heads.py), if any.
    head_role: ClassVar[str | None] = None
    # role -> roles whose FP32 runners its calibration set needs (OCR: rec/cls crops come from the det runner)
    calibration_needs: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @classmethod
    def claims_folder(cls, folder: Path) -> bool:
        """True when a model folder given without a task is this task's (e.g. a classifier's labels.txt): `ppdeploy
        serve DIR` serves it at this task's route. At most one registered task should claim a folder."""
        return False

    @classmethod
    def role_of(cls, model: str) -> str | None:
        """The role `model` (a zoo name or path, as given to `ppdeploy build`) plays in this task, if any."""
        return next((role for role, name in cls.default_models.items() if name == model), None)

    # -- life cycle --------------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> "Task":
        """An instance on runner-like objects, one per role (optional roles may be missing)."""

    @abc.abstractmethod
    def execute(self, inputs: Sequence[Any]) -> list[Any]:
        """One result per input."""

    def finalize(self) -> None:
        """Free what this instance loaded itself (runners handed to `initialize` belong to the caller)."""

    # -- precision ---------------------------------------------------------------------------------------------
    @classmethod
    def calibration(cls, role: str, folder: str | Path, *, runners: Mapping[str, Any] | None = None,
                    limit: int | None = None, input_name: str = "x", model: str | Path | None = None) -> CalibrationSet:
        """Images in `folder` as `role`'s feeds; `runners`: FP32 runners of `calibration_needs[role]`; `model`: the
        role's model source (where side files such as a preprocess.yaml live)."""
        raise InputError(f"task '{cls.name}' has no calibration from images")

    @classmethod
    def synthetic_data(cls, folder: Path, count: int, seed: int) -> Path | None:
        """Generate `count` labelled inputs into `folder` for calibration without user data (None: cannot)."""
        return None

    @classmethod
    def metric(cls, role: str, data: str | Path, runners: Mapping[str, Any], **options: Any) -> TaskMetric:
        raise InputError(f"task '{cls.name}' has no task metric for the precision gates")

    @classmethod
    def unordered_outputs(cls, io: Any) -> frozenset[str]:
        """Outputs (of a model with this IOSpec) whose rows form a set, so `verify` compares them regardless of
        order (a detector's NMS rows: engines order equal scores differently)."""
        return frozenset()

    @classmethod
    def example_feeds(cls, io: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Generated inputs (random, for `verify`) made plausible where the task's preprocessing fixes some of them
        (a detector's scale_factor and im_shape); the image tensors stay as given."""
        return dict(feeds)

    # -- repository and serving --------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, pipeline: Mapping[str, str], options: Mapping[str, Any]) -> None:
        """ValueError for a config this task cannot run (the schema reports it with the file and field)."""
        if not cls.composite:
            if pipeline:
                raise ValueError(f"'pipeline' is only for tasks whose roles are other models; task '{cls.name}' "
                                 "runs this config's own model")
            return
        unknown = sorted(set(pipeline) - set(cls.roles))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(cls.roles)}")
        required = cls.roles if cls.required_roles is None else cls.required_roles
        missing = [r for r in required if r not in pipeline]
        if missing:
            raise ValueError(f"task '{cls.name}' needs pipeline.{missing[0]} (the name of a model in this repository)")

    @classmethod
    def decode(cls, body: bytes, content_type: str, max_pixels: int) -> Any:
        """A request body -> one input. The default takes an encoded image (decoded to HxWx3 BGR uint8)."""
        if content_type.startswith("application/json"):
            raise InputError("send the image itself (raw body, e.g. Content-Type: image/png) or as multipart "
                             "field 'image', not JSON")
        return load_image(body, max_pixels=max_pixels)

    def encode(self, result: Any) -> dict[str, Any]:
        """A result -> the JSON object answered on `/v1/<route>` (a "timings_ms" dict, if any, gets "decode")."""
        return result.to_dict()


__all__ = ["Task", "TaskContext"]
