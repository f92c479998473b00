"""The model-repository schema: round trip, and every error reported with its file and field."""
from __future__ import annotations

import pytest

from ppdeploy.core.errors import ConfigError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.repository.config import ModelConfig, load_config, load_repository
from tests.serve.conftest import write_repo

GOOD = """\
source: model.onnx
backends: [ort, openvino]
precision: fp16
inputs:
  x: {min: [1, 3, 48, 32], opt: [8, 3, 48, 320], max: [16, 3, 48, 1280]}
max_batch_size: 16
dynamic_batching: {max_queue_delay_ms: 2.5, preferred_batch_sizes: [16, 8, 8], max_queue_size: 64, default_timeout_ms: 500}
instance_count: 2
"""


def test_good_config_round_trips(tmp_path):
    repo = write_repo(tmp_path, {"rec": GOOD})
    (repo / "rec" / "model.onnx").write_bytes(b"not checked here")
    [cfg] = load_repository(repo)
    assert cfg.name == "rec"  # folder name is the default name
    assert cfg.backends == ["onnxruntime", "openvino"]  # aliases canonicalised
    assert cfg.dynamic_batching.preferred_batch_sizes == [8, 16]
    assert cfg.source_path() == repo / "rec" / "model.onnx"  # relative to the config's folder
    profile = cfg.shape_profile()
    assert isinstance(profile, ShapeProfile) and profile.ranges["x"].max == (16, 3, 48, 1280)
    # to_yaml -> file -> load gives the same config
    out = cfg.write(tmp_path / "copy")
    (out.parent / "model.onnx").write_bytes(b"x")
    again = load_config(out)
    assert again.model_dump() == cfg.model_dump()


def test_every_error_is_reported_with_file_and_field(tmp_path):
    repo = write_repo(tmp_path, {
        "bad": "source: missing.onnx\nbackends: [warp-drive]\nmax_batch: 3\nprecision: fp8\n"
               "dynamic_batching: {max_queue_delay_ms: -1}\ninputs: {x: {min: [2], opt: [1], max: [3]}}\n",
        "yaml": "source: [unclosed\n",
        "nosrc": "max_batch_size: 4\n",
        "pipe": "task: ocr\npipeline: {det: nodet, rec: nosrc}\n",
        "small": "source: ppocrv4-rec\nmax_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [8]}\n",
    })
    with pytest.raises(ConfigError) as err:
        load_repository(repo)
    text = str(err.value)
    bad = str(repo / "bad" / "config.yaml")
    for field in ("backends", "max_batch: unknown field", "precision", "dynamic_batching.max_queue_delay_ms",
                  "inputs.x"):
        assert f"{bad}: {field}" in text, field
    assert "warp-drive" in text
    assert f"{repo / 'yaml' / 'config.yaml'}: line " in text and "invalid YAML" in text
    assert f"{repo / 'nosrc' / 'config.yaml'}" in text and "'source' is required" in text
    assert "pipeline.det: no model named 'nodet'" in text
    assert "pipeline.rec" not in text  # 'nosrc' exists (with its own errors): not reported as dangling too
    assert "preferred batch size 8 exceeds max_batch_size 4" in text


def test_missing_source_path_and_duplicate_names(tmp_path):
    repo = write_repo(tmp_path, {"a": "name: same\nsource: nowhere.onnx\n", "b": "name: same\nsource: ppocr-cls\n"})
    with pytest.raises(ConfigError) as err:
        load_repository(repo)
    text = str(err.value)
    assert "source: 'nowhere.onnx' is neither a bundled model" in text
    assert "name: 'same' is also used by" in text


def test_empty_repository_and_not_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="no model folders"):
        load_repository(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_repository(tmp_path / "nope")


def test_for_source_defaults():
    cfg = ModelConfig.for_source("/models/ch_rec.onnx", max_batch_size=4)
    assert cfg.name == "ch_rec" and cfg.max_batch_size == 4 and cfg.backends == ["auto"] and cfg.task == "none"
    with pytest.raises(ConfigError, match="max_batch_size"):
        ModelConfig.for_source("ppocr-cls", max_batch_size=0)


def test_keep_fp32_reaches_the_precision_step(tmp_path):
    from ppdeploy.serve.models import load_model_kwargs

    repo = write_repo(tmp_path, {"det": "source: ppocrv4-det\nprecision: bf16\nkeep_fp32: [encoder]\n",
                                 "rec": "source: ppocrv4-rec\nprecision: bf16\n"})
    det, rec = sorted(load_repository(repo), key=lambda c: c.name)
    assert load_model_kwargs(det)["precision_options"] == {"keep_fp32": ["encoder"]}
    assert "precision_options" not in load_model_kwargs(rec)
