"""Export PP-YOLOE+-s (paddledet 2.6.0, random weights) with `paddle.jit.save`, NMS in the graph or excluded.

paddledet 2.6.0 under paddle 3.x needs five fixes, all applied here (see the detection issue):
  1. `multiclass_nms3` built through LayerHelper is rejected by jit.save with PIR: call paddle._C_ops.multiclass_nms3.
  2. the unused `im_shape` input must leave the InputSpec (inputs: image, scale_factor).
  3. CustomCSPPAN's `F.interpolate(scale_factor=2.)` keeps an f64 `scale` paddle2onnx 2.1.0 rejects ("the 0th
     elementwise MUST be ir::FloatAttribute"): interpolate with an explicit `size` instead.
  4. Paddle Inference on CPU needs oneDNN disabled for this graph (a runtime switch of the paddle backend).
  5. `convert_to_deploy()` folds the RepVGG branches (and the head's training-only parts) before export.
The head's prediction convolutions start at zero/constant: every anchor is then identical and a parity check means
nothing, so they are re-initialised at random (seeded).

  pip install --no-deps --target DIR paddledet==2.6.0 ; pip install --target DIR2 --no-deps typeguard
      terminaltables motmetrics lap pandas        (its imports; numpy<1.24 / opencv<=4.6 pins are not needed)
  PYTHONPATH=DIR:DIR2 python scripts/detection/export_ppyoloe.py OUT [--no-nms] [--raw-out OUT2] [--size 640]
  (tests/tasks/detection/conftest.py does exactly this, into the test cache, when paddledet is not importable)
Writes OUT/inference.json + .pdiparams and OUT/infer_cfg.yml (PaddleDetection's format, 80 COCO-sized classes).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def patch_paddledet() -> None:
    import paddle
    import paddle.nn.functional as F
    from ppdet.modeling import layers as det_layers
    from ppdet.modeling.necks import custom_pan

    def multiclass_nms(bboxes, scores, score_threshold=0.05, nms_top_k=-1, keep_top_k=100, nms_threshold=0.3,
                       normalized=True, nms_eta=1.0, background_label=-1, return_index=False,
                       return_rois_num=True, rois_num=None, name=None):  # fix 1
        out, index, num = paddle._C_ops.multiclass_nms3(bboxes, scores, rois_num, score_threshold, nms_top_k,
                                                        keep_top_k, nms_threshold, normalized, nms_eta,
                                                        background_label)
        return out, num, index

    det_layers.ops.multiclass_nms = multiclass_nms

    def interpolate(x, size=None, scale_factor=None, **kwargs):  # fix 3
        if size is None and scale_factor is not None:
            size = [int(x.shape[2] * scale_factor), int(x.shape[3] * scale_factor)]
        return F.interpolate(x, size=size, **kwargs)

    class _F:
        def __getattr__(self, name):
            return interpolate if name == "interpolate" else getattr(F, name)

    custom_pan.F = _F()


def build(num_classes: int, exclude_nms: bool, seed: int):
    import paddle
    from ppdet.modeling.backbones.cspresnet import CSPResNet
    from ppdet.modeling.heads.ppyoloe_head import PPYOLOEHead
    from ppdet.modeling.layers import MultiClassNMS
    from ppdet.modeling.necks.custom_pan import CustomCSPPAN

    paddle.seed(seed)
    width, depth = 0.50, 0.33  # the "s" size
    backbone = CSPResNet(layers=[3, 6, 6, 3], channels=[64, 128, 256, 512, 1024], return_idx=[1, 2, 3],
                         use_large_stem=True, use_alpha=True, width_mult=width, depth_mult=depth)
    neck = CustomCSPPAN(in_channels=[s.channels for s in backbone.out_shape], out_channels=[768, 384, 192],
                        stage_num=1, block_num=3, act="swish", spp=True, use_alpha=True,
                        width_mult=width, depth_mult=depth)
    nms = MultiClassNMS(nms_top_k=1000, keep_top_k=300, score_threshold=0.01, nms_threshold=0.7)
    head = PPYOLOEHead(in_channels=[s.channels for s in neck.out_shape], num_classes=num_classes,
                       fpn_strides=[32, 16, 8], grid_cell_scale=5.0, grid_cell_offset=0.5, static_assigner_epoch=-1,
                       use_varifocal_loss=True, static_assigner=None, assigner=None, nms=nms, exclude_nms=exclude_nms)
    for conv in list(head.pred_cls) + list(head.pred_reg):  # they start at zero: randomise for a meaningful parity
        conv.weight.set_value(paddle.normal(0.0, 0.01, conv.weight.shape))
        conv.bias.set_value(paddle.normal(-2.0 if conv in head.pred_cls else 0.5, 0.5, conv.bias.shape))

    class PPYOLOEPlus(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.yolo_head = backbone, neck, head

        def forward(self, image, scale_factor):  # fix 2: no im_shape
            feats = self.neck(self.backbone({"image": image}))
            outs = self.yolo_head(feats)
            bbox, num, _ = self.yolo_head.post_process(outs, scale_factor)
            return bbox, num  # NMS rows + counts, or (exclude_nms) decoded boxes + scores

    model = PPYOLOEPlus()
    model.eval()
    for layer in model.sublayers():  # fix 5
        if hasattr(layer, "convert_to_deploy"):
            layer.convert_to_deploy()
    return model


def infer_cfg(size: int, num_classes: int) -> str:
    import yaml

    doc = {"mode": "paddle", "arch": "YOLO", "draw_threshold": 0.5, "metric": "COCO", "use_dynamic_shape": False,
           "Preprocess": [{"type": "Resize", "target_size": [size, size], "keep_ratio": False, "interp": 2},
                          {"type": "NormalizeImage", "is_scale": True, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                           "norm_type": "none"},
                          {"type": "Permute"}],
           "label_list": [f"class_{i}" for i in range(num_classes)],
           "NMS": {"name": "MultiClassNMS", "nms_top_k": 1000, "keep_top_k": 300, "score_threshold": 0.01,
                   "nms_threshold": 0.7}}
    return yaml.safe_dump(doc, sort_keys=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--no-nms", action="store_true", help="exclude NMS: outputs decoded boxes BxNx4 and scores BxCxN")
    ap.add_argument("--raw-out", default=None,
                    help="also export the same weights without NMS (exclude_nms) to this folder, in the same process")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import paddle

    patch_paddledet()
    spec = [paddle.static.InputSpec([1, 3, args.size, args.size], "float32", "image"),
            paddle.static.InputSpec([1, 2], "float32", "scale_factor")]
    exports = [(Path(args.out), args.no_nms)] + ([(Path(args.raw_out), True)] if args.raw_out else [])
    for out, no_nms in exports:  # paddle.seed(seed) in build: the same weights each time
        model = build(args.classes, no_nms, args.seed)
        out.mkdir(parents=True, exist_ok=True)
        paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(out / "inference"))
        (out / "infer_cfg.yml").write_text(infer_cfg(args.size, args.classes), encoding="utf-8")
        print("exported", out, sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    main()
