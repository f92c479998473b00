"""Shared pieces for the serving tests: direct runners (the reference) and model repositories. A real server in a
subprocess is `ppdeploy.bench.server_process.ServerProcess`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLS_OUT = "softmax_0.tmp_0"
REC_OUT = "softmax_11.tmp_0"


def _onnxruntime_runner(model: str):
    """The model on ONNX Runtime CPU: the direct reference the servers' answers are compared with."""
    from ppdeploy.deploy.load import load_model

    dep = load_model(model, backend="onnxruntime")
    yield dep.runner
    dep.close()


@pytest.fixture(scope="session")
def cls_runner():
    yield from _onnxruntime_runner("ppocr-cls")


@pytest.fixture(scope="session")
def rec_runner():
    yield from _onnxruntime_runner("ppocrv4-rec")


@pytest.fixture(scope="session")
def det_runner():
    yield from _onnxruntime_runner("ppocrv4-det")


def write_repo(root: Path, configs: dict[str, str]) -> Path:
    for name, text in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.yaml").write_text(text)
    return root


def random_line_image(rng: np.random.Generator, width: int = 160) -> np.ndarray:
    return rng.standard_normal((1, 3, 48, width), dtype=np.float32)
