"""A real, trained image classifier made from scratch in seconds: a small CNN with batch norm that tells
circles, squares, triangles and crosses apart, trained on synthetic renders with a fixed seed and exported
with `paddle.jit.save` (Paddle 3 writes a PIR `inference.json`).

It exists so that the Paddle 3 (PIR) conversion route, the classification task and the serving tests run on a
model that was actually trained (its logits are meaningful and its top-1 is checkable), without downloading
weights. The export folder also holds `labels.txt`, `preprocess.yaml` and `metrics.json` (held-out accuracy).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ppdeploy.core.cache import default_root
from ppdeploy.core.lazy import import_paddle
from ppdeploy.source.model import from_layer

log = logging.getLogger("ppdeploy.demo")

LABELS = ("circle", "square", "triangle", "cross")
SIZE = 64
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VERSION = 1  # bump when the recipe changes, so cached exports are rebuilt


def render(label: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One RGB uint8 image of shape `label` at a random place, scale, colour, with noise."""
    import cv2

    bg = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    fg = (bg + rng.integers(90, 166, 3)) % 256  # keep contrast with the background
    color = tuple(int(c) for c in fg)
    cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
    r = int(rng.integers(size // 8, size // 4))
    thick = -1 if rng.random() < 0.5 else int(rng.integers(2, 5))
    if label == 0:
        cv2.circle(img, (int(cx), int(cy)), r, color, thick, cv2.LINE_AA)
    elif label == 1:
        cv2.rectangle(img, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), color, thick, cv2.LINE_AA)
    elif label == 2:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        if thick < 0:
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
        else:
            cv2.polylines(img, [pts], True, color, thick, cv2.LINE_AA)
    else:
        w = max(2, r // 3)
        cv2.rectangle(img, (int(cx - r), int(cy - w)), (int(cx + r), int(cy + w)), color, -1)
        cv2.rectangle(img, (int(cx - w), int(cy - r)), (int(cx + w), int(cy + r)), color, -1)
    noise = rng.normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def to_tensor(images: np.ndarray) -> np.ndarray:
    """NHWC RGB uint8 -> NCHW float32 normalised with the ImageNet mean/std declared in preprocess.yaml."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(LABELS), n)
    images = np.stack([render(int(lb), rng) for lb in labels])
    return images, labels


def build_network():
    nn = import_paddle().nn

    def block(cin, cout):
        return [nn.Conv2D(cin, cout, 3, padding=1), nn.BatchNorm2D(cout), nn.ReLU(), nn.MaxPool2D(2)]

    return nn.Sequential(*block(3, 8), *block(8, 16), *block(16, 32), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
                         nn.Linear(32, len(LABELS)))


def train(steps: int = 300, batch: int = 64, seed: int = 0):
    """Train and return (network in eval mode, ready to export, held-out accuracy)."""
    paddle = import_paddle()

    paddle.seed(seed)
    paddle.set_device("cpu")
    net = build_network()
    opt = paddle.optimizer.Adam(learning_rate=3e-3, parameters=net.parameters())
    images, labels = dataset(steps * batch // 4, seed)  # each sample seen ~4 times
    rng = np.random.default_rng(seed + 1)
    net.train()
    for step in range(steps):
        idx = rng.integers(0, len(labels), batch)
        x = paddle.to_tensor(to_tensor(images[idx]))
        y = paddle.to_tensor(labels[idx].astype("int64"))
        loss = paddle.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
    test_x, test_y = dataset(400, seed + 100)
    net.eval()
    with paddle.no_grad():
        pred = net(paddle.to_tensor(to_tensor(test_x))).numpy().argmax(1)
    accuracy = float((pred == test_y).mean())
    return net, accuracy


def export(out_dir: str | Path, steps: int = 300, seed: int = 0) -> Path:
    """Train (if not already exported here) and save the inference model + labels + preprocess config."""
    out = Path(out_dir)
    marker = out / "metrics.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == VERSION and (out / "inference.pdiparams").exists():
        return out
    paddle = import_paddle()

    net, accuracy = train(steps=steps, seed=seed)
    log.info("shapes classifier trained: held-out accuracy %.3f", accuracy)
    out.mkdir(parents=True, exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, SIZE, SIZE], "float32", "x")]
    net.eval()  # export the inference graph (batch norm on running statistics) without from_layer's warning
    from_layer(net, spec, export_dir=out)
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (out / "preprocess.yaml").write_text(
        f"# how images are turned into the model input x (used by `ppdeploy classify`)\n"
        f"resize_short: {SIZE}\ncrop_size: {SIZE}\nchannel_order: RGB\n"
        f"mean: {list(MEAN)}\nstd: {list(STD)}\nscale: 0.00392156862745098  # 1/255\n"
    )
    marker.write_text(json.dumps({"version": VERSION, "heldout_accuracy": accuracy, "steps": steps, "seed": seed,
                                  "labels": list(LABELS)}, indent=2))
    return out


def default_dir() -> Path:
    return default_root() / "demo" / f"shapes-classifier-v{VERSION}"
