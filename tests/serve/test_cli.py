"""`ppdeploy serve` argument handling (no server started)."""
from __future__ import annotations

import pytest

from ppdeploy.cli import build_parser
from ppdeploy.cli.serve import configs_from_args
from ppdeploy.core.errors import ConfigError
from tests.serve.conftest import write_repo


def parse(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_one_model_with_flags():
    [cfg] = configs_from_args(parse("ppocrv4-rec", "--max-batch-size", "16", "--max-queue-delay-ms", "3",
                                    "--backend", "openvino,onnxruntime", "--instances", "2"))
    assert cfg.name == "ppocrv4-rec" and cfg.source == "ppocrv4-rec" and cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_ms == 3 and cfg.backends == ["openvino", "onnxruntime"]
    assert cfg.instance_count == 2 and cfg.task == "none"


def test_ocr_bundle_and_classifier_folder(tmp_path):
    configs = {c.name: c for c in configs_from_args(parse("ocr"))}
    assert set(configs) == {"ppocrv4-det", "ppocr-cls", "ppocrv4-rec", "ocr"}
    assert configs["ocr"].task == "ocr" and configs["ocr"].pipeline["rec"] == "ppocrv4-rec"
    (tmp_path / "inference.json").write_text("{}")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    [cfg] = configs_from_args(parse(str(tmp_path)))
    assert cfg.task == "classification" and cfg.source == str(tmp_path.resolve())


def test_repo_and_errors(tmp_path):
    write_repo(tmp_path, {"cls": "source: ppocr-cls\n"})
    assert [c.name for c in configs_from_args(parse("--repo", str(tmp_path)))] == ["cls"]
    with pytest.raises(ConfigError, match="either MODEL or --repo"):
        configs_from_args(parse("ppocr-cls", "--repo", str(tmp_path)))
    with pytest.raises(ConfigError, match="nothing to serve"):
        configs_from_args(parse())
    with pytest.raises(ConfigError, match="neither a bundled model"):
        configs_from_args(parse("no-such-model"))
    with pytest.raises(ConfigError, match="max_batch_size"):
        configs_from_args(parse("ppocr-cls", "--max-batch-size", "0"))
