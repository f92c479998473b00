"""verify: metrics on known arrays, and the real report across backends."""
import json

import numpy as np
import pytest

from ppdeploy.deploy.verify import Tolerance, compare_arrays, generate_inputs


def test_metrics_on_known_arrays():
    ref = np.array([1.0, -2.0, 0.0, 4.0], np.float32)
    got = ref + np.array([0.0, 0.1, 0.0, -0.2], np.float32)
    c = compare_arrays("y", ref, got, Tolerance(atol=1e-3, rtol=0, min_cosine=0.9))
    assert c.max_abs == pytest.approx(0.2, rel=1e-5)
    assert c.max_rel == pytest.approx(0.05, rel=1e-5)  # 0.1/2 and 0.2/4
    assert c.mean_abs == pytest.approx(0.075, rel=1e-5)
    expected_cos = ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))
    assert c.cosine == pytest.approx(float(expected_cos), rel=1e-6)
    assert not c.passed
    assert compare_arrays("y", ref, got, Tolerance(atol=0.25, rtol=0, min_cosine=0.99)).passed


def test_shape_mismatch_fails():
    assert not compare_arrays("y", np.zeros((2, 3)), np.zeros((3, 2)), Tolerance()).passed


def test_generated_inputs_are_seeded():
    from ppdeploy.core.tensors import IOSpec, TensorSpec

    io = IOSpec((TensorSpec("x", "float32", (None, 3, None, None)), TensorSpec("n", "int64", (None,))), ())
    a, b = generate_inputs(io, seed=3), generate_inputs(io, seed=3)
    assert a["x"].shape == (1, 3, 224, 224) and a["n"].dtype == np.int64
    np.testing.assert_array_equal(a["x"], b["x"])


def test_verify_cli_writes_a_passing_report(tmp_path):
    from ppdeploy.cli import main

    out = tmp_path / "report.json"
    code = main(["verify", "ppocr-cls", "--backend", "openvino,onnxruntime", "--batch", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["passed"]
    assert report["reference"] == "paddle" and report["inputs"]["x"] == [2, 3, 48, 192]
    assert {b["backend"] for b in report["backends"]} == {"openvino", "onnxruntime"}
    assert all(o["max_abs"] < 1e-4 and o["cosine"] > 0.9999 for b in report["backends"] for o in b["outputs"])


def test_verify_fails_when_tolerance_is_impossible(tmp_path):
    from ppdeploy.cli import main

    code = main(["verify", "ppocrv4-rec", "--backend", "openvino", "--atol", "0", "--rtol", "0",
                 "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 1 and not report["passed"]  # fp32 kernels differ in the last bits; 0 tolerance must fail


def test_verify_on_user_images(tmp_path, demo_classifier_dir):
    import cv2

    from ppdeploy.cli import main
    from ppdeploy.demo import shapes_classifier

    images, _ = shapes_classifier.dataset(4, seed=77)
    for i, img in enumerate(images):
        cv2.imwrite(str(tmp_path / f"{i}.png"), img[:, :, ::-1])  # renders are RGB, files are BGR on disk
    out = tmp_path / "r.json"
    code = main(["verify", str(demo_classifier_dir), "--backend", "onnxruntime", "--images", str(tmp_path),
                 "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["inputs"]["x"] == [4, 3, 64, 64]
