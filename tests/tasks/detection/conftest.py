"""Detection fixtures shared by the detection tests: PP-YOLOE+-s exported from paddledet 2.6.0 (random, seeded
weights; head randomised; NMS in the graph and excluded), built once per test cache.

PP-YOLOE+-s is ~30 MB of FP32 weights, too big to commit, and paddledet 2.6.0 cannot be a dependency (it pins
numpy<1.24 and opencv<=4.6), so the fixture installs it with --no-deps, plus the packages its `import ppdet`
really needs, into a folder of the cache (`pip install --target`, ~20 s from PyPI), and runs
scripts/detection/export_ppyoloe.py there (~1 min). $PPDEPLOY_TEST_PPYOLOE names ready exports (nms/ and raw/)
instead; without network and without them, the tests that need it skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
EXPORT = REPO / "scripts" / "detection" / "export_ppyoloe.py"
# paddledet itself with --no-deps, and what `import ppdet.modeling` imports (ppdet/__init__ pulls in metrics and
# tracking: pandas, motmetrics, lap); numpy, scipy, shapely, pycocotools, cv2, yaml come from ppdeploy's environment
PPDET_PACKAGES = ("paddledet==2.6.0", "typeguard", "terminaltables", "motmetrics==1.4.0", "lap", "pandas", "pytz",
                  "tzdata")
PPYOLOE_VERSION = 1  # bump when the export script changes what it writes


@pytest.fixture(scope="session")
def ppyoloe_dirs(cache_dir) -> tuple[Path, Path]:
    """(nms, raw): PP-YOLOE+-s 640x640, 80 classes, with multiclass_nms3 and with exclude_nms."""
    given = os.environ.get("PPDEPLOY_TEST_PPYOLOE")
    if given:
        return Path(given) / "nms", Path(given) / "raw"
    root = cache_dir / f"ppyoloe-s-v{PPYOLOE_VERSION}"
    nms, raw = root / "nms", root / "raw"
    if (nms / "inference.pdiparams").is_file() and (raw / "inference.pdiparams").is_file():
        return nms, raw
    site = cache_dir / "ppdet-site"
    if not (site / "ppdet" / "__init__.py").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                               *PPDET_PACKAGES], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"cannot install paddledet 2.6.0 from PyPI: {done.stderr.strip()[-300:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(EXPORT), str(nms), "--raw-out", str(raw)], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return nms, raw
