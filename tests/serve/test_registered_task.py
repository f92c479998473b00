"""A task registered from outside ppdeploy (no module edited) is accepted by the config schema and served at
/v1/<route> by the real app, like the built-in ones."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Mapping, Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app
from ppdeploy.tasks.base import Task, TaskContext
from ppdeploy.tasks.registry import TASKS
from tests.serve.conftest import post_asgi


class MeanTask(Task):
    """JSON {"width": W} in -> the cls model on a W-wide gray line -> {"argmax": i}."""

    name = "mean-probe"
    route = "mean"
    roles = ("model",)

    def __init__(self, runner: Any, scale: float):
        self.runner, self.scale = runner, scale

    @classmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> "MeanTask":
        return cls(runners["model"], float(options.get("scale", 1.0)))

    def execute(self, inputs: Sequence[int]) -> list[dict]:
        batch = np.full((len(inputs), 3, 48, max(inputs)), self.scale, np.float32)
        (probs,) = self.runner.infer({"x": batch}).values()
        return [{"argmax": int(p.argmax())} for p in probs]

    @classmethod
    def decode(cls, body: bytes, content_type: str, max_pixels: int) -> int:
        return int(json.loads(body)["width"])

    def encode(self, result: dict) -> dict:
        return result


@pytest.fixture
def mean_task():
    TASKS.register(MeanTask.name, MeanTask)
    yield MeanTask
    TASKS.unregister(MeanTask.name)


def test_the_schema_takes_a_registered_task_only_while_it_is_registered(mean_task):
    cfg = ModelConfig.for_source("ppocr-cls", name="probe", task="mean-probe", task_options={"scale": 0.5})
    assert cfg.task_class is MeanTask and not cfg.composite
    with pytest.raises(ValidationError, match="pipeline"):
        ModelConfig(name="probe", source="ppocr-cls", task="mean-probe", pipeline={"model": "x"})
    TASKS.unregister("mean-probe")
    with pytest.raises(ValidationError, match="unknown task 'mean-probe'"):
        ModelConfig(name="probe", source="ppocr-cls", task="mean-probe")
    TASKS.register(MeanTask.name, MeanTask)


@pytest.mark.slow
def test_a_registered_task_is_served_at_its_route(mean_task, cls_runner):
    cfg = ModelConfig.for_source("ppocr-cls", name="probe", backends=["onnxruntime"], task="mean-probe",
                                 task_options={"scale": 0.25})
    app = build_app([cfg])

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            return (await post_asgi(app, "/v1/mean", b'{"width": 64}'),
                    await post_asgi(app, "/v1/mean/probe", b'{"width": 32}'),
                    await post_asgi(app, "/v1/mean/other", b'{"width": 32}'))

    (status, answer), (named, _), (missing, _) = asyncio.run(main())
    (probs,) = cls_runner.infer({"x": np.full((1, 3, 48, 64), 0.25, np.float32)}).values()
    assert status == 200 and answer == {"model": "probe", "argmax": int(probs[0].argmax())}
    assert named == 200 and missing == 404
