"""Here (CPU): the detection/classification graphs for `detection_bench.py`, weight-stripped to travel to the device.

1. PP-YOLOE+-s (paddledet 2.6.0, random weights, as scripts/detection/export_ppyoloe.py builds it) with a dynamic
   batch, NMS in the graph and without it (decoded boxes + scores: what PaddleDetection's speed table times);
   `paddle.vision.models.resnet50()` (random init). Each saved with `paddle.jit.save`.
2. Converted by ppdeploy (`ppdeploy.convert.pipeline.to_onnx`, the route `ppdeploy convert` takes), and made FP16 by
   ppdeploy's precision builder (`ppdeploy.precision.build.apply`, the graph `load_model(precision="fp16")` runs),
   after `drop_empty_resize_inputs`; where the builder's accuracy gate refuses the graph (PP-YOLOE+ with random
   weights), the converter's plain FP16 (`ppdeploy.precision.fp16.convert`, its default FP32 keep ops) is used and
   the refusal recorded in manifest.json.
3. Stripped: every float initializer of 1024+ elements is emptied and described in `<name>.weights.json` (dtype,
   dims, mean, std); `detection_bench.strip.refill` puts back seeded normal values with the same per-tensor mean and
   std on the device. Speed does not depend on the values; the boxes reaching NMS do a little, so this script also
   counts them here with the real (random-init) weights and with refilled ones, for the device run to compare.

  pip install --no-deps --target /tmp/gpuwork/ppdet paddledet==2.6.0
  pip install --no-deps --target /tmp/gpuwork/ppdet-deps typeguard terminaltables motmetrics lap pandas
  PYTHONPATH=/tmp/gpuwork/ppdet:/tmp/gpuwork/ppdet-deps python scripts/gpu/make_det_models.py .gpu-carry/det
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detection"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from det_strip import boxes_to_nms, refill, strip  # noqa: E402


def export_ppyoloe(out: Path, exclude_nms: bool) -> None:
    import paddle
    from export_ppyoloe import build, infer_cfg, patch_paddledet

    patch_paddledet()
    model = build(80, exclude_nms, seed=0)
    # Realistic work for NMS: build() leaves every class score near sigmoid(-2) = 0.12, so all 8400 x 80 pairs pass
    # the 0.01 score threshold. These class-head values put ~4300 pairs in 17 classes above it on a noise image
    # (calibrated here, in dygraph), the order of a trained detector on a real photo.
    paddle.seed(1)
    for conv in model.yolo_head.pred_cls:
        conv.weight.set_value(paddle.normal(0.0, 10.0, conv.weight.shape))
        conv.bias.set_value(paddle.normal(-8.0, 1.0, conv.bias.shape))
    spec = [paddle.static.InputSpec([None, 3, 640, 640], "float32", "image"),
            paddle.static.InputSpec([None, 2], "float32", "scale_factor")]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(out / "inference"))
    (out / "infer_cfg.yml").write_text(infer_cfg(640, 80), encoding="utf-8")


def export_resnet50(out: Path) -> None:
    import paddle

    paddle.seed(0)
    model = paddle.vision.models.resnet50()
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, 224, 224], "float32", "x")]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(out / "inference"))


def drop_empty_resize_inputs(src: Path, dst: Path) -> int:
    """Resize's optional roi/scales given as a 0-element initializer -> the empty input name (same meaning). The FP16
    conversion otherwise turns that initializer into FP16 plus a Cast back, and ORT then sees `scales` *and*
    `sizes` ("Either `sizes` or `scales` must be provided, but not both of them"): seen on PP-YOLOE+'s neck."""
    import onnx

    model = onnx.load(str(src))
    empty = {t.name for t in model.graph.initializer if 0 in t.dims}
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Resize":
            for i in (1, 2):
                if i < len(node.input) and node.input[i] in empty:
                    node.input[i] = ""
                    changed += 1
    onnx.save(model, str(dst))
    return changed


def ort_cpu(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--only", default="ppyoloe_nms,ppyoloe_nonms,resnet50")
    args = ap.parse_args()
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.precision.build import apply
    from ppdeploy.source.model import detect

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    cache = EngineCache()
    for name in args.only.split(","):
        work = Path(tempfile.mkdtemp()) / name
        work.mkdir(parents=True)
        if name == "resnet50":
            export_resnet50(work)
        else:
            export_ppyoloe(work, exclude_nms=name == "ppyoloe_nonms")
        conv = to_onnx(detect(str(work)), cache=cache)
        entry = {"route": conv.route, "converter": conv.converter_version, "opset": conv.opset}
        rng = np.random.default_rng(0)
        if name == "resnet50":
            feeds = {"x": rng.uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)}
        else:
            feeds = {"image": rng.uniform(0, 1, (1, 3, 640, 640)).astype(np.float32),
                     "scale_factor": np.ones((1, 2), np.float32)}
        for precision in ("fp32", "fp16"):
            src = conv.onnx_path
            if precision == "fp16":
                fixed = work / "fp32.fixed.onnx"
                entry["empty_resize_inputs_dropped"] = drop_empty_resize_inputs(conv.onnx_path, fixed)
                try:
                    res = apply(fixed, "fp16", cache=cache, calib=[feeds])
                    src = Path(res.onnx_path)
                    entry["fp16_via"] = {"via": "ppdeploy.precision.build.apply", "result": repr(res)[:400]}
                except Exception as exc:  # noqa: BLE001 - recorded, then the converter's plain FP16
                    import onnx

                    from ppdeploy.precision import fp16
                    model = fp16.convert(onnx.load(str(fixed)))
                    src = work / "fp16.onnx"
                    onnx.save(model, str(src))
                    entry["fp16_via"] = {"via": "ppdeploy.precision.fp16.convert (default keep ops)",
                                     "apply_failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
            dst = out / f"{name}.{precision}.onnx"
            info = strip(src, dst)
            entry[precision] = {"bytes_full": src.stat().st_size, "bytes_stripped": dst.stat().st_size, **info}
            if name != "resnet50" and precision == "fp32":
                sess = ort_cpu(src)
                real = sess.run(None, feeds)
                refilled = Path(tempfile.mkdtemp()) / "refilled.onnx"
                refill(dst, refilled, seed=0)
                again = ort_cpu(refilled).run(None, feeds)
                entry["nms_input_cpu"] = {"original_weights": boxes_to_nms(name, real),
                                          "refilled_weights": boxes_to_nms(name, again)}
            print(name, precision, json.dumps(entry.get(precision)), flush=True)
        manifest[name] = entry
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
