"""Shared fixtures. One engine cache per test session (so conversions are paid once), isolated from the user's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    # Set before any ppdeploy module reads it; a per-run directory keeps CI deterministic.
    if "PPDEPLOY_CACHE" not in os.environ or os.environ.get("PPDEPLOY_TEST_FRESH_CACHE"):
        base = Path(config.rootpath) / ".pytest_cache" / "ppdeploy-cache"
        os.environ["PPDEPLOY_CACHE"] = str(base)


def has_gpu() -> bool:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (README, section GPU; on the lent device: scripts/gpu/README.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["PPDEPLOY_CACHE"])


@pytest.fixture(scope="session")
def demo_classifier_dir() -> Path:
    """The real trained shapes classifier, exported with paddle.jit.save (PIR); trained once per cache."""
    from ppdeploy.demo import shapes_classifier

    return shapes_classifier.export(shapes_classifier.default_dir())


@pytest.fixture(scope="session")
def demo_images():
    """(NCHW float32 batch, labels) from the demo classifier's own renderer, disjoint from its training seed."""
    from ppdeploy.demo import shapes_classifier

    images, labels = shapes_classifier.dataset(16, seed=12345)
    return shapes_classifier.to_tensor(images), labels
