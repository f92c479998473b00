"""Triton export: every config.pbtxt parses with Triton's own schema (tritonclient's model_config_pb2), the ONNX
inside loads in ONNX Runtime with the dims the config declares, and the Python-backend OCR model gives the same
text as ppdeploy's pipeline when its BLS calls are served from the exported repository."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient")
from google.protobuf import text_format  # noqa: E402

from ppdeploy.core.errors import ConfigError  # noqa: E402
from ppdeploy.export import triton, triton_schema  # noqa: E402


def triton_parse(path: Path):
    """Parse with the schema module shipped in the tritonclient wheel (what tritonserver compiles in)."""
    pb2 = triton_schema.model_config_pb2()
    assert Path(pb2.__file__).parts[-3:] == ("tritonclient", "grpc", "model_config_pb2.py")
    return text_format.Parse(path.read_text(), pb2.ModelConfig())


def dims_with_batch(tensor, max_batch_size: int) -> list[int]:
    return ([-1] if max_batch_size else []) + list(tensor.dims)


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def ocr_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "models"
    triton.export(triton.BUNDLED_OCR, repo, overrides={"max_batch_size": 6, "max_queue_delay_us": 500})
    return repo


@pytest.mark.slow
def test_ocr_repository_layout_and_schema(ocr_repo: Path):
    assert sorted(p.name for p in ocr_repo.iterdir()) == ["ppocr", "ppocr-cls", "ppocrv4-det", "ppocrv4-rec"]
    for name in ("ppocr-cls", "ppocrv4-det", "ppocrv4-rec"):
        config = triton_parse(ocr_repo / name / "config.pbtxt")
        assert config.name == name and config.backend == "onnxruntime"
        assert config.max_batch_size == 6
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert (ocr_repo / name / "1" / "model.onnx").is_file()
    ocr = triton_parse(ocr_repo / "ppocr" / "config.pbtxt")
    assert ocr.backend == "python" and ocr.max_batch_size == 0
    assert {k: v.string_value for k, v in ocr.parameters.items()} == {
        "det_model": "ppocrv4-det", "cls_model": "ppocr-cls", "rec_model": "ppocrv4-rec"}
    assert [o.name for o in ocr.output] == ["texts", "scores", "boxes", "result_json"]
    version = ocr_repo / "ppocr" / "1"
    assert (version / "model.py").read_text() == triton.OCR_MODEL_FILE.read_text()
    spec = json.loads((version / "ocr.json").read_text())
    assert (version / spec["options"]["rec_dictionary"]).is_file()
    assert set(triton.validate_repository(ocr_repo)) == {"ppocr", "ppocr-cls", "ppocrv4-det", "ppocrv4-rec"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppocr-cls", "ppocrv4-rec", "ppocrv4-det"])
def test_onnx_loads_with_the_declared_dims(ocr_repo: Path, name: str):
    config = triton_parse(ocr_repo / name / "config.pbtxt")
    session = ort_session(ocr_repo / name / "1" / "model.onnx")
    pb2 = triton_schema.model_config_pb2()
    for declared, actual in [*zip(config.input, session.get_inputs()), *zip(config.output, session.get_outputs())]:
        assert declared.name == actual.name
        assert pb2.DataType.Name(declared.data_type) == "TYPE_FP32" and actual.type == "tensor(float)"
        want = dims_with_batch(declared, config.max_batch_size)
        got = [d if isinstance(d, int) else -1 for d in actual.shape]
        assert got == want, f"{name}/{declared.name}: ONNX {actual.shape} vs config {want}"
    # A full batch of Triton's declared size runs, and every output matches its declared dims.
    concrete = {"ppocr-cls": [3, 48, 192], "ppocrv4-rec": [3, 48, 320], "ppocrv4-det": [3, 64, 96]}[name]
    x = np.random.default_rng(0).random([config.max_batch_size, *concrete], dtype=np.float32)
    outputs = session.run(None, {config.input[0].name: x})
    for declared, out in zip(config.output, outputs):
        assert out.shape[0] == config.max_batch_size
        assert all(d == -1 or d == s for d, s in zip(declared.dims, out.shape[1:]))


@pytest.mark.slow
def test_paddle_classifier_dir_exports_with_labels(demo_classifier_dir: Path, demo_images, tmp_path: Path):
    """A Paddle 3 (PIR) model folder: converted by ppdeploy, its labels.txt becomes Triton's label file."""
    (exported,) = triton.export(demo_classifier_dir, tmp_path / "repo", overrides={"max_batch_size": 16})
    config = triton_parse(exported.directory / "config.pbtxt")
    assert config.output[0].label_filename == "labels.txt"
    assert (exported.directory / "labels.txt").read_text() == (demo_classifier_dir / "labels.txt").read_text()
    session = ort_session(exported.directory / "1" / "model.onnx")
    assert [d if isinstance(d, int) else -1 for d in session.get_inputs()[0].shape] == \
        dims_with_batch(config.input[0], config.max_batch_size)
    images, labels = demo_images
    predicted = session.run(None, {config.input[0].name: images})[0].argmax(axis=1)
    assert (predicted == labels).mean() >= 0.8  # the real trained classifier, not just a loadable graph
    (exported.directory / "labels.txt").unlink()
    with pytest.raises(ConfigError, match="labels.txt"):
        triton.validate_repository(tmp_path / "repo")


def tiny_onnx(path: Path, batch: int | str) -> Path:
    """y = x + 1 with a fixed or symbolic batch dim."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "tiny", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_fixed_batch_dim_needs_max_batch_size_zero(tmp_path: Path):
    model = tiny_onnx(tmp_path / "fixed.onnx", 1)
    with pytest.raises(ConfigError, match="no dynamic leading"):
        triton.export_model(model, tmp_path / "repo")
    exported = triton.export_model(model, tmp_path / "repo", options=triton.TritonExportOptions(max_batch_size=0))
    config = triton_parse(exported.directory / "config.pbtxt")
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]
    assert not config.HasField("dynamic_batching")
    session = ort_session(exported.directory / "1" / "model.onnx")
    np.testing.assert_array_equal(session.run(None, {"x": np.zeros((1, 4), np.float32)})[0], np.ones((1, 4)))


def test_tensorrt_engines_per_compute_capability(tmp_path: Path):
    model = tiny_onnx(tmp_path / "tiny.onnx", "N")
    # Engines cannot be built without a GPU; the exporter only places them, so any non-empty file stands in.
    plans = {}
    for cc in ("9.0", "8.9"):
        plans[cc] = tmp_path / f"engine_{cc}.plan"
        plans[cc].write_bytes(b"engine " + cc.encode())
    options = triton.TritonExportOptions(backend="tensorrt", plans=plans, max_batch_size=16)
    exported = triton.export_model(model, tmp_path / "repo", options=options)
    config = triton_parse(exported.directory / "config.pbtxt")
    assert config.backend == "tensorrt"
    assert dict(config.cc_model_filenames) == {"9.0": "model_sm90.plan", "8.9": "model_sm89.plan"}
    assert config.default_model_filename == ""  # no fallback to an engine of another GPU architecture
    assert pb2_kind(config.instance_group[0].kind) == "KIND_GPU"
    assert (exported.directory / "1" / "model_sm89.plan").read_bytes() == b"engine 8.9"
    single = triton.export_model(model, tmp_path / "repo", name="one",
                                 options=triton.TritonExportOptions(backend="tensorrt", plans={"9.0": plans["9.0"]}))
    assert single.config.default_model_filename == "model_sm90.plan" and not single.config.cc_model_filenames
    with pytest.raises(ConfigError, match="needs at least one engine"):
        triton.export_model(model, tmp_path / "repo", options=triton.TritonExportOptions(backend="tensorrt"))
    with pytest.raises(ConfigError, match="one model"):  # one engine set cannot serve det, cls and rec
        triton.export(triton.BUNDLED_OCR, tmp_path / "ocr", overrides={"backend": "tensorrt", "plans": plans})
    with pytest.raises(ConfigError, match="compute capability"):
        triton.TritonExportOptions(backend="tensorrt", plans={"sm90": plans["9.0"]}).check()


def pb2_kind(value: int) -> str:
    return triton_schema.model_config_pb2().ModelInstanceGroup.Kind.Name(value)


def test_onnxruntime_tensorrt_accelerator(tmp_path: Path):
    model = tiny_onnx(tmp_path / "tiny.onnx", "N")
    options = triton.TritonExportOptions(ort_tensorrt="fp16", instance_kind="gpu", instance_count=2)
    config = triton_parse(triton.export_model(model, tmp_path / "repo", options=options).directory / "config.pbtxt")
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert pb2_kind(config.instance_group[0].kind) == "KIND_GPU" and config.instance_group[0].count == 2


def test_validation_catches_what_triton_would_reject(tmp_path: Path):
    model = tiny_onnx(tmp_path / "tiny.onnx", "N")
    repo = tmp_path / "repo"
    exported = triton.export_model(model, repo)
    config_path = exported.directory / "config.pbtxt"
    good = config_path.read_text()
    config_path.write_text(good.replace("max_batch_size", "max_batch"))
    with pytest.raises(ConfigError, match="schema"):
        triton.validate_repository(repo)
    config_path.write_text(good.replace('name: "tiny"', 'name: "other"'))
    with pytest.raises(ConfigError, match="differs from its directory"):
        triton.validate_repository(repo)
    config_path.write_text(good)
    (exported.directory / "1" / "model.onnx").unlink()
    with pytest.raises(ConfigError, match="lacks model.onnx"):
        triton.validate_repository(repo)


def test_config_yaml_settings_become_triton_settings(tmp_path: Path):
    from ppdeploy.repository.config import ModelConfig

    source = tmp_path / "src"
    source.mkdir()
    tiny_onnx(source / "tiny.onnx", "N")
    cfg = ModelConfig(name="adder", source=str(source / "tiny.onnx"), max_batch_size=16, instance_count=3,
                      dynamic_batching={"max_queue_delay_ms": 2.5, "preferred_batch_sizes": [4, 8],
                                        "max_queue_size": 64, "default_timeout_ms": 100})
    cfg.write(source)
    (exported,) = triton.export(source, tmp_path / "repo")
    config = triton_parse(exported.directory / "config.pbtxt")
    assert config.name == "adder" and config.max_batch_size == 16
    batching = config.dynamic_batching
    assert batching.max_queue_delay_microseconds == 2500 and list(batching.preferred_batch_size) == [4, 8]
    assert batching.default_queue_policy.max_queue_size == 64
    assert batching.default_queue_policy.default_timeout_microseconds == 100_000
    assert config.instance_group[0].count == 3
    # An explicit command-line value wins over config.yaml.
    (exported,) = triton.export(source, tmp_path / "repo2", overrides={"max_batch_size": 32})
    assert exported.config.max_batch_size == 32


def test_cli_export_and_error(tmp_path: Path, capsys):
    from ppdeploy.cli import main

    model = tiny_onnx(tmp_path / "tiny.onnx", "N")
    assert main(["export", "triton", str(model), "--out", str(tmp_path / "repo"), "--max-batch-size", "4"]) == 0
    assert "validated 1 model(s)" in capsys.readouterr().out
    assert triton_parse(tmp_path / "repo" / "tiny" / "config.pbtxt").max_batch_size == 4
    assert main(["export", "triton", str(model), "--out", str(tmp_path / "r2"), "--backend", "tensorrt"]) == 2
    assert "--plan" in capsys.readouterr().err
    assert main(["export", "triton", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "r3")]) == 2


# -- the Python-backend OCR model, run outside Triton --------------------------------------------------------

class _Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class _Response:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error_value = list(output_tensors), error

    def has_error(self) -> bool:
        return self.error_value is not None

    def error(self):
        return self.error_value


def stand_in_triton(repo: Path, calls: list) -> types.ModuleType:
    """`triton_python_backend_utils` exists only inside tritonserver. This stand-in implements the calls
    model.py makes, and serves its BLS requests from the exported repository's model.onnx files with ONNX
    Runtime, enforcing each config's max_batch_size as Triton would."""
    sessions: dict[str, tuple] = {}

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            if self.model_name not in sessions:
                sessions[self.model_name] = (triton_parse(repo / self.model_name / "config.pbtxt"),
                                             ort_session(repo / self.model_name / "1" / "model.onnx"))
            config, session = sessions[self.model_name]
            feeds = {t.name(): t.as_numpy() for t in self.inputs}
            batch = next(iter(feeds.values())).shape[0]
            calls.append((self.model_name, batch))
            if config.max_batch_size and batch > config.max_batch_size:
                return _Response([], _Error(f"batch {batch} > max_batch_size {config.max_batch_size}"))
            outs = session.run(self.outputs, feeds)
            return _Response([_Tensor(n, o) for n, o in zip(self.outputs, outs)])

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceRequest = InferenceRequest
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.TritonModelException = RuntimeError

    def by_name(holder, name):
        tensors = holder.output_tensors if isinstance(holder, _Response) else holder.inputs
        return next(t for t in tensors if t.name() == name)

    module.get_input_tensor_by_name = by_name
    module.get_output_tensor_by_name = by_name
    return module


def text_image() -> bytes:
    import cv2

    image = np.full((160, 640, 3), 255, np.uint8)
    cv2.putText(image, "TRITON 2026", (20, 70), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, "export ok", (20, 140), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 3, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", image)
    assert ok
    return png.tobytes()


@pytest.mark.slow
def test_python_backend_ocr_model_matches_ppdeploy_pipeline(ocr_repo: Path, monkeypatch):
    import importlib.util

    from ppdeploy.backends.base import BuildOptions
    from ppdeploy.backends.onnxruntime import OnnxRuntimeBackend
    from ppdeploy.tasks.ocr.pipeline import OCRPipeline

    calls: list = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in_triton(ocr_repo, calls))
    version = ocr_repo / "ppocr" / "1"
    spec = importlib.util.spec_from_file_location("exported_ocr_model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(ocr_repo / "ppocr"), "model_version": "1", "model_name": "ppocr"})

    image = text_image()
    request = types.SimpleNamespace(inputs=[_Tensor("image", np.array([image], dtype=np.object_))])
    bad = types.SimpleNamespace(inputs=[_Tensor("image", np.array([b"not an image"], dtype=np.object_))])
    good_response, bad_response = model.execute([request, bad])

    assert bad_response.has_error() and "image" in bad_response.error().message().lower()
    assert not good_response.has_error()
    out = {t.name(): t.as_numpy() for t in good_response.output_tensors}
    texts = [t.decode() for t in out["texts"]]
    assert {m for m, _ in calls} == {"ppocrv4-det", "ppocr-cls", "ppocrv4-rec"}

    # The same pipeline on plain ONNX Runtime runners over the same model files: identical lines.
    runners = {}
    for stage, name in (("det", "ppocrv4-det"), ("cls", "ppocr-cls"), ("rec", "ppocrv4-rec")):
        backend = OnnxRuntimeBackend()
        artifact = ocr_repo.parent / f"ort-{stage}"
        artifact.mkdir(exist_ok=True)
        backend.build(ocr_repo / name / "1" / "model.onnx", artifact, BuildOptions())
        runners[stage] = backend.load(artifact, BuildOptions())
    reference = OCRPipeline.from_runners(runners["det"], runners["rec"], runners["cls"]).predict(image)
    assert texts == [line.text for line in reference.lines]
    assert "2026" in texts[0] and texts[1] == "export ok"  # (Hershey's O reads as 0 in "TRITON")
    np.testing.assert_allclose(out["scores"], [line.score for line in reference.lines], atol=1e-4)
    assert out["boxes"].shape == (len(texts), 4, 2)
    assert json.loads(out["result_json"][0])["lines"][0]["text"] == texts[0]
