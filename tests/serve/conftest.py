"""Shared pieces for the serving tests: direct runners (the reference) and model repositories. A real server in a
subprocess is `ppdeploy.bench.server_process.ServerProcess`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLS_OUT = "softmax_0.tmp_0"
REC_OUT = "softmax_11.tmp_0"


@pytest.fixture(scope="session")
def cls_runner():
    from ppdeploy.deploy import load_model

    dep = load_model("ppocr-cls", backend="onnxruntime")
    yield dep.runner
    dep.close()


@pytest.fixture(scope="session")
def rec_runner():
    from ppdeploy.deploy import load_model

    dep = load_model("ppocrv4-rec", backend="onnxruntime")
    yield dep.runner
    dep.close()


def write_repo(root: Path, configs: dict[str, str]) -> Path:
    for name, text in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "config.yaml").write_text(text)
    return root


def random_line_image(rng: np.random.Generator, width: int = 160) -> np.ndarray:
    return rng.standard_normal((1, 3, 48, width), dtype=np.float32)
