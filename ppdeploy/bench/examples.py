"""Example models the bench suite measures besides the bundled ones: the brief's first example,
`paddle.vision.models.resnet50()` (random init, seeded: speed does not depend on the weights), saved with
`paddle.jit.save` into the cache once, then converted, verified and benchmarked like any Paddle model folder.

  ppdeploy bench $(python -c "from ppdeploy.bench.examples import resnet50; print(resnet50())") \\
      --backends onnxruntime,openvino,paddle
"""
from __future__ import annotations

from pathlib import Path

from ppdeploy.core.cache import default_root
from ppdeploy.core.lazy import import_paddle

RESNET50_SHAPE = (3, 224, 224)


def resnet50(root: Path | None = None) -> Path:
    """The folder holding resnet50's inference.json + .pdiparams (batch dynamic, 3x224x224), exported on first use."""
    folder = (root or default_root()) / "bench-models" / "resnet50"
    if (folder / "inference.pdiparams").is_file():
        return folder
    paddle = import_paddle()
    paddle.seed(0)
    model = paddle.vision.models.resnet50()
    model.eval()
    spec = [paddle.static.InputSpec([None, *RESNET50_SHAPE], "float32", "x")]
    folder.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(folder / "inference"))
    return folder


__all__ = ["RESNET50_SHAPE", "resnet50"]
