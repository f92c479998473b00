"""Classification task on the lead's real trained shapes classifier (Paddle 3 PIR export)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ppdeploy.core.errors import ConfigError
from ppdeploy.tasks.classification.preprocess import PreprocessConfig, preprocess_image
from ppdeploy.tasks.classification.task import Classifier, to_probabilities


@pytest.fixture(scope="module")
def shapes_model():
    from ppdeploy.demo import shapes_classifier

    return shapes_classifier.export(shapes_classifier.default_dir())


@pytest.fixture(scope="module")
def shapes_images():
    """Fresh renders (not the training seed), as BGR arrays the way cv2 would read them, and true labels."""
    from ppdeploy.demo import shapes_classifier

    images, labels = shapes_classifier.dataset(48, seed=777)
    return [np.ascontiguousarray(im[:, :, ::-1]) for im in images], labels


def test_preprocess_matches_the_declared_config(shapes_model, shapes_images):
    from ppdeploy.demo import shapes_classifier

    cfg = PreprocessConfig.from_file(shapes_model / "preprocess.yaml")
    assert cfg.crop_size == 64 and cfg.channel_order == "RGB"
    bgr = shapes_images[0][0]
    ours = preprocess_image(bgr, cfg)
    theirs = shapes_classifier.to_tensor(bgr[None, :, :, ::-1])[0]  # the training-time transform
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preprocess_defaults_are_imagenet_resize_and_center_crop():
    cfg = PreprocessConfig()
    assert (cfg.resize_short, cfg.crop_size, cfg.channel_order) == (256, 224, "RGB")
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 300 - 60:300 + 60] = (0, 0, 255)  # red (BGR) band in the middle
    out = preprocess_image(img, cfg)
    assert out.shape == (3, 224, 224)
    red = (1.0 - 0.485) / 0.229
    assert out[0, 112, 112] == pytest.approx(red, rel=1e-5)  # RGB order: channel 0 is red
    with pytest.raises(ConfigError, match="unknown preprocess key"):
        PreprocessConfig.from_mapping({"resize": 3})
    with pytest.raises(ConfigError, match="channel_order"):
        PreprocessConfig(channel_order="GBR")


def test_logits_become_probabilities():
    probs = to_probabilities(np.array([[2.0, 1.0, 0.0]]))
    assert probs.sum() == pytest.approx(1.0) and probs.argmax() == 0
    already = np.array([[0.2, 0.8]])
    np.testing.assert_array_equal(to_probabilities(already), already)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_top1_agrees_with_paddle_inference(backend, shapes_model, shapes_images):
    images, labels = shapes_images
    reference = Classifier(shapes_model, backend="paddle", topk=4)
    other = Classifier(shapes_model, backend=backend, topk=4)
    try:
        batch = reference.preprocess_batch(images)  # the same preprocessed tensors go to both
        ref = reference.predict_tensor(batch)
        got = other.predict_tensor(batch)
        assert [r[0].index for r in got] == [r[0].index for r in ref]
        np.testing.assert_allclose([p.score for r in got for p in r], [p.score for r in ref for p in r], atol=1e-4)
        accuracy = np.mean([r[0].index == y for r, y in zip(got, labels)])
        assert accuracy > 0.9  # a trained model: the comparison is meaningful
        assert got[0][0].label in ("circle", "square", "triangle", "cross")
    finally:
        reference.close()
        other.close()


@pytest.mark.slow
def test_cli_classify(shapes_model, shapes_images, tmp_path, capsys):
    import cv2

    from ppdeploy.cli import main

    images, labels = shapes_images
    path = tmp_path / "shape.png"
    cv2.imwrite(str(path), images[0])
    assert main(["classify", str(path), "--model", str(shapes_model), "--backend", "onnxruntime", "--topk", "2",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["topk"]) == 2
    assert doc["topk"][0]["label"] == ["circle", "square", "triangle", "cross"][labels[0]]
    labels_file = tmp_path / "names.txt"
    labels_file.write_text("a\nb\nc\n")
    assert main(["classify", str(path), "--model", str(shapes_model), "--backend", "onnxruntime",
                 "--labels", str(labels_file)]) == 2
    assert "4 classes" in capsys.readouterr().err


def test_cli_classify_a_folder_streams_jsonl_and_reports_bad_files(shapes_model, shapes_images, tmp_path, capsys):
    import cv2

    from ppdeploy.cli import main

    images, labels = shapes_images
    names = ["circle", "square", "triangle", "cross"]
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), images[i])
    (folder / "1b_broken.png").write_bytes(b"\x89PNG truncated")  # sorts between the good ones
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    code = main(["classify", str(folder), "--model", str(shapes_model), "--backend", "onnxruntime", "--json"])
    out, err = capsys.readouterr()
    assert code == 2  # something failed: non-zero, after every other image was classified
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"].rsplit("/", 1)[1] for r in records] == ["0.png", "1.png", "1b_broken.png", "2.png"]
    assert "not a recognised image" in records[2]["error"] and "topk" not in records[2]
    for r, i in zip([records[0], records[1], records[3]], range(3)):
        assert r["topk"][0]["label"] == names[labels[i]]
    assert f"error: {folder / '1b_broken.png'}: " in err and "1 of 4 inputs failed" in err
    assert "Traceback" not in err
    # every image fine: exit 0, plain text output in order
    (folder / "1b_broken.png").unlink()
    assert main(["classify", str(folder), "--model", str(shapes_model), "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert out.index("0.png") < out.index("1.png") < out.index("2.png")
