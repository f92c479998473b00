"""Adding a backend and a task needs no module edit: both are registered from this test and then show up in `doctor`,
`--backend`, the config schema, the fallback chain and a served `/v1/<route>` (issue 16's acceptance test).

The backend is small but real: ONNX's own reference evaluator (onnx.reference), which runs any ONNX graph in numpy.
The task is small but real too: it reads a gray text line of a given width with the PP-OCR direction classifier.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pytest

from ppdeploy.backends import BACKENDS
from ppdeploy.backends.base import Backend, BuildOptions, Runner
from ppdeploy.cli import main as cli_main
from ppdeploy.core.errors import ConfigError
from ppdeploy.core.tensors import IOSpec, TensorSpec, dims, numpy_dtype
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.app import build_app
from ppdeploy.tasks.base import Task, TaskContext
from ppdeploy.tasks.registry import TASKS
from tests.serve.conftest import post_asgi

GRAPH = "model.onnx"


class ReferenceRunner(Runner):
    backend = "onnx-reference"

    def __init__(self, path: Path, shapes):
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(str(path))
        self._session = ReferenceEvaluator(model)

        def spec(v) -> TensorSpec:
            t = v.type.tensor_type
            dtype = numpy_dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name)
            return TensorSpec(v.name, dtype, dims([d.dim_value for d in t.shape.dim]))

        init = {i.name for i in model.graph.initializer}
        super().__init__(IOSpec(tuple(spec(v) for v in model.graph.input if v.name not in init),
                                tuple(spec(v) for v in model.graph.output)), shapes)

    def _infer(self, feeds):
        outs = self._session.run(None, feeds)
        return {name: np.asarray(o) for name, o in zip(self.output_names, outs)}


class ReferenceBackend(Backend):
    """ONNX's reference evaluator: slow, but any ONNX graph, in numpy, on any machine."""

    name = "onnx-reference"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})
    formats: ClassVar[frozenset[str]] = frozenset({"onnx"})
    int8_quantizer = None

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str:
        import onnx

        return onnx.__version__

    def build(self, model_path: Path, out_dir: Path, options: BuildOptions) -> None:
        shutil.copyfile(model_path, out_dir / GRAPH)

    def load(self, artifact_dir: Path, options: BuildOptions) -> Runner:
        return ReferenceRunner(artifact_dir / GRAPH, options.shapes)


class LineDirection(Task):
    """JSON {"width": W} -> the direction classifier on a W-wide mid-gray line -> {"label": i, "score": p}."""

    name = "line-direction"
    route = "direction"
    roles = ("model",)

    def __init__(self, runner: Any):
        self.runner = runner

    @classmethod
    def initialize(cls, runners: Mapping[str, Any], options: Mapping[str, Any],
                   context: TaskContext = TaskContext()) -> "LineDirection":
        return cls(runners["model"])

    def execute(self, inputs: Sequence[int]) -> list[dict]:
        (probs,) = self.runner.infer({"x": gray_lines(len(inputs), max(inputs))}).values()
        return [{"label": int(p.argmax()), "score": round(float(p.max()), 4)} for p in probs]

    @classmethod
    def decode(cls, body: bytes, content_type: str, max_pixels: int) -> int:
        return int(json.loads(body)["width"])

    def encode(self, result: dict) -> dict:
        return result


def gray_lines(n: int, width: int) -> np.ndarray:
    return np.full((n, 3, 48, width), 0.25, np.float32)


@pytest.fixture
def registered():
    BACKENDS.register(ReferenceBackend.name, ReferenceBackend)
    TASKS.register(LineDirection.name, LineDirection)
    try:
        yield
    finally:
        BACKENDS.unregister(ReferenceBackend.name)
        TASKS.unregister(LineDirection.name)


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(list(argv))
    return code, out.getvalue()


def test_registered_backend_shows_in_doctor_and_runs_with_backend_flag(registered, tmp_path):
    code, text = cli("doctor")
    assert code == 0
    row = next(line for line in text.splitlines() if "onnx-reference" in line)
    assert "fp32" in row
    x = tmp_path / "x.npy"
    np.save(x, gray_lines(1, 96))
    code, text = cli("run", "ppocr-cls", "--backend", "onnx-reference", "--input", f"x={x}", "--json")
    assert code == 0
    summary = json.loads(text[text.index("{"):])
    assert summary["backend"] == "onnx-reference"
    # the same model on ONNX Runtime gives the same answer: the extra backend really ran it
    code, ref_text = cli("run", "ppocr-cls", "--backend", "onnxruntime", "--input", f"x={x}", "--json")
    ref = json.loads(ref_text[ref_text.index("{"):])
    got, want = summary["outputs"], ref["outputs"]
    assert got.keys() == want.keys()
    for name in got:
        assert got[name]["shape"] == want[name]["shape"]
        for stat in ("min", "max", "mean"):
            assert got[name][stat] == pytest.approx(want[name][stat], abs=1e-4)


def test_schema_and_chain_follow_the_registries(registered):
    cfg = ModelConfig.for_source("ppocr-cls", name="dir", backends=["onnx-reference"], task="line-direction")
    assert cfg.backends == ["onnx-reference"] and cfg.task_class is LineDirection
    from ppdeploy.deploy.select import chain_for

    assert chain_for("auto")[0][-1] == "onnx-reference"  # registration order is the fallback order


def test_schema_rejects_them_once_unregistered():
    with pytest.raises(ConfigError, match="unknown backend 'onnx-reference'"):
        ModelConfig.for_source("ppocr-cls", name="dir", backends=["onnx-reference"])
    with pytest.raises(ConfigError, match="unknown task 'line-direction'"):
        ModelConfig.for_source("ppocr-cls", name="dir", task="line-direction")


@pytest.mark.slow
def test_registered_task_on_registered_backend_is_served_at_its_route(registered, tmp_path):
    from ppdeploy.deploy import load_model

    reference = load_model("ppocr-cls", backend="onnxruntime")
    cfg = ModelConfig.for_source("ppocr-cls", name="dir", backends=["onnx-reference"], task="line-direction")
    app = build_app([cfg])

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.host.wait_loaded()
            served = app.state.host.models["dir"]
            return served.engine.backend, await post_asgi(app, "/v1/direction", b'{"width": 80}')

    backend, (status, answer) = asyncio.run(main())
    (probs,) = reference.runner.infer({"x": gray_lines(1, 80)}).values()
    reference.close()
    assert backend == "onnx-reference"
    assert status == 200 and answer["label"] == int(probs[0].argmax())
    assert answer["score"] == pytest.approx(float(probs[0].max()), abs=1e-3)
