"""Every CPU backend matches Paddle Inference on the real models, reports its IO and rejects bad inputs."""
import numpy as np
import pytest

from ppdeploy.core.errors import InputError
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.verify import generate_inputs

BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def references():
    return {}


def _reference(name, references):
    if name not in references:
        references[name] = load_model(name, backend="paddle", threads=2)
    return references[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,shape", [("ppocrv4-rec", (2, 3, 48, 320)), ("ppocr-cls", (3, 3, 48, 192)),
                                        ("ppocrv4-det", (1, 3, 320, 480))])
def test_ocr_models_match_paddle(backend, name, shape, references):
    ref = _reference(name, references)
    feeds = generate_inputs(ref.runner.io, seed=1, shapes={"x": shape})
    expected = ref.runner.infer(feeds)
    dep = load_model(name, backend=backend, threads=2)
    got = dep.runner.infer(feeds)
    for (k, want), have in zip(expected.items(), got.values()):
        assert have.shape == want.shape
        np.testing.assert_allclose(have, want, atol=1e-4, rtol=0, err_msg=f"{name} {backend} {k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_classifier_matches_paddle(backend, demo_classifier_dir, demo_images):
    x, labels = demo_images
    ref = load_model(demo_classifier_dir, backend="paddle").runner.infer({"x": x})
    got = load_model(demo_classifier_dir, backend=backend).runner.infer({"x": x})
    want, have = next(iter(ref.values())), next(iter(got.values()))
    np.testing.assert_allclose(have, want, atol=1e-4, rtol=0)
    assert (have.argmax(1) == labels).mean() >= 0.9  # it is a trained model, not random weights


@pytest.mark.parametrize("backend", BACKENDS + ["paddle"])
def test_io_spec_reports_dynamic_dims(backend):
    io = load_model("ppocrv4-rec", backend=backend).runner.io
    (inp,) = io.inputs
    assert inp.name == "x" and inp.dtype == "float32"
    assert inp.shape[1:3] == (3, 48) and inp.shape[0] is None and inp.shape[3] is None
    assert io.outputs[0].shape[-1] == 6625  # 6623 characters + blank + space


@pytest.mark.parametrize("backend", BACKENDS + ["paddle"])
def test_bad_inputs_give_clear_errors(backend):
    runner = load_model("ppocrv4-rec", backend=backend).runner
    good = np.zeros((1, 3, 48, 320), np.float32)
    with pytest.raises(InputError, match="dtype float64, the model expects float32"):
        runner.infer({"x": good.astype(np.float64)})
    with pytest.raises(InputError, match="rank 3"):
        runner.infer({"x": good[0]})
    with pytest.raises(InputError, match="dim 2 is 32, the model fixes it to 48"):
        runner.infer({"x": np.zeros((1, 3, 32, 320), np.float32)})
    with pytest.raises(InputError, match="unknown input"):
        runner.infer({"x": good, "y": good})
    with pytest.raises(InputError, match="missing input"):
        runner.infer({})
    with pytest.raises(InputError, match="numpy array"):
        runner.infer({"x": good.tolist()})
    assert runner.infer({"x": good})  # and the runner still works afterwards


def test_profile_range_is_enforced():
    dep = load_model("ppocr-cls", backend="onnxruntime",
                     shapes={"x": {"min": [1, 3, 48, 192], "opt": [4, 3, 48, 192], "max": [8, 3, 48, 192]}})
    with pytest.raises(InputError, match="outside the build profile"):
        dep.runner.infer({"x": np.zeros((9, 3, 48, 192), np.float32)})


def test_threads_setting_reaches_backends():
    from ppdeploy.backends.base import BuildOptions, default_threads
    from ppdeploy.backends.openvino.backend import compile_config

    assert compile_config(BuildOptions(threads=1))["INFERENCE_NUM_THREADS"] == 1
    assert compile_config(BuildOptions())["INFERENCE_NUM_THREADS"] == default_threads()
    assert compile_config(BuildOptions())["INFERENCE_PRECISION_HINT"] == "f32"  # pinned, never silent bf16


def test_onnxruntime_workers_do_not_spin_unless_asked():
    from ppdeploy.backends.base import BuildOptions
    from ppdeploy.backends.onnxruntime import session_options

    assert session_options(BuildOptions()).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="allow_spinning"):  # left at ORT's own default (spinning)
        session_options(BuildOptions(extra={"spin": True})).get_session_config_entry("session.intra_op.allow_spinning")


@pytest.mark.parametrize("backend", BACKENDS)
def test_borrowed_outputs_equal_infer_and_infer_outputs_stay_the_callers(backend):
    dep = load_model("ppocr-cls", backend=backend, threads=2)
    try:
        first = generate_inputs(dep.runner.io, seed=1, shapes={"x": (3, 3, 48, 192)})
        second = generate_inputs(dep.runner.io, seed=2, shapes={"x": (3, 3, 48, 192)})
        owned = dep.runner.infer(first)
        kept = {k: v.copy() for k, v in owned.items()}
        borrowed = dep.runner.infer_borrowed(first)
        for k in kept:
            np.testing.assert_array_equal(borrowed[k], kept[k])
        borrowed_view = {k: np.asarray(v) for k, v in borrowed.items()}
        dep.runner.infer(second)
        for k in kept:  # an infer result is the caller's: the next call leaves it alone
            np.testing.assert_array_equal(owned[k], kept[k])
        if backend == "openvino":  # OpenVINO lends the request's own buffer (no copy), which the next call reuses
            dep.runner.infer_borrowed(second)
            assert any(not np.array_equal(borrowed_view[k], kept[k]) for k in kept)
    finally:
        dep.close()
