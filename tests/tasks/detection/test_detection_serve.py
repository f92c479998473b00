"""/v1/detect through the real ASGI app (in process), with the detection task registered the way the registry line
does it: the task contract is all the server needs."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from ppdeploy.tasks.detection.synth import pcb
from ppdeploy.tasks.registry import TASKS

PCB = Path(__file__).resolve().parents[3] / "ppdeploy" / "tasks" / "detection" / "weights" / "pcb"


@pytest.fixture
def detection_registered():
    added = "detection" not in TASKS
    if added:
        TASKS.register("detection", "ppdeploy.tasks.detection.task:Detector")
    yield
    if added:
        TASKS.unregister("detection")


@pytest.mark.skipif(not (PCB / "infer_cfg.yml").is_file(), reason="PCB weights not committed")
def test_v1_detect_serves_the_pcb_detector(detection_registered, tmp_path):
    from starlette.testclient import TestClient

    from ppdeploy.repository.config import load_repository
    from ppdeploy.serve.app import build_app
    from ppdeploy.serve.http import ServerSettings

    (tmp_path / "repo" / "pcb").mkdir(parents=True)
    (tmp_path / "repo" / "pcb" / "config.yaml").write_text(
        f"source: {PCB}\nbackends: [onnxruntime]\ntask: detection\nmax_batch_size: 4\n"
        "task_options: {score_threshold: 0.3}\n", encoding="utf-8")
    boards = pcb.generate(tmp_path / "boards", 2, seed=pcb.SPLIT_SEEDS["test"])
    app = build_app(load_repository(tmp_path / "repo"), ServerSettings(cache_dir=None))
    with TestClient(app) as client:
        deadline = time.time() + 120
        while client.get("/v2/health/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        body = (boards / "images" / f"{pcb.SPLIT_SEEDS['test']}_00000.png").read_bytes()
        r = client.post("/v1/detect", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["model"] == "pcb" and doc["width"] == 320 and doc["height"] == 320
        assert all(d["label"] in pcb.CLASSES and d["score"] >= 0.3 for d in doc["detections"])
        bad = client.post("/v1/detect", content=b"not an image", headers={"content-type": "image/png"})
        assert bad.status_code == 400
