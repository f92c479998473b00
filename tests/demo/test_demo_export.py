"""The quickstart's own demo model exports without warning about itself (issue 20: the first screen of the
product must not warn). Runs the real training + export in a child process with the CLI's logging, so a
`log.warning` or `warnings.warn` anywhere on the path shows up on its stderr."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("paddle", reason="the demo model is trained with Paddle (pip install 'ppdeploy[paddle]')")

SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from ppdeploy.demo import shapes_classifier
out = shapes_classifier.export(sys.argv[1], steps=5)
print(json.dumps(sorted(p.name for p in out.iterdir())))
"""


@pytest.mark.slow
def test_demo_export_prints_no_warning(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"inference.json", "inference.pdiparams", "labels.txt", "preprocess.yaml", "metrics.json"} <= set(files)
    assert "training mode" not in proc.stderr, proc.stderr[-2000:]
    assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING")], proc.stderr[-2000:]
