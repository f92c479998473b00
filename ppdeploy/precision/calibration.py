"""Calibration and gate data: a list of model feeds (`dict[input name, ndarray]`) with a content hash.

Samples come from a folder of images fed through the task's own preprocessing (any callable
`image -> dict[str, ndarray]`), from a folder of `.npy` / `.npz` files for raw models, or from arrays.
The hash is taken over the *preprocessed* arrays, so changing the images or the preprocessing changes it,
and renaming or copying the folder does not. Calibration results are cached under that hash.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ppdeploy.core.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
Feeds = dict[str, np.ndarray]
Preprocess = Callable[[Any], Mapping[str, np.ndarray]]


def hash_feeds(samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for feeds in samples:
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        h.update(b"\x00")
    return h.hexdigest()


def load_image(path: Path) -> np.ndarray:
    """BGR uint8 HxWx3, the layout PaddleOCR's preprocessing expects (OpenCV's)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise InputError(f"calibration image {path} could not be decoded")
    return img


@dataclass
class CalibrationSet:
    """Model feeds for calibration and accuracy gates. `source` says where they came from (for reports)."""

    samples: list[Feeds]
    source: str = "arrays"
    _hash: str | None = None

    def __post_init__(self) -> None:
        if not self.samples:
            raise InputError(f"calibration set from {self.source} is empty")
        self.samples = [{k: np.ascontiguousarray(v) for k, v in s.items()} for s in self.samples]

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, samples: Iterable[Mapping[str, np.ndarray]], source: str = "arrays") -> "CalibrationSet":
        return cls([dict(s) for s in samples], source)

    @classmethod
    def from_images(cls, folder: Path | str, preprocess: Preprocess, *, limit: int | None = None,
                    loader: Callable[[Path], Any] = load_image, seed: int = 0) -> "CalibrationSet":
        """Images in `folder` (sorted; a seeded sample of `limit` of them) through `preprocess`.

        `preprocess` returns one feed dict per image; a callable that yields several feeds per image
        (e.g. text-line crops of a page) may return a list of dicts instead.
        """
        folder = Path(folder)
        files = _list_files(folder, IMAGE_SUFFIXES, "images")
        if limit is not None and len(files) > limit:
            files = sorted(random.Random(seed).sample(files, limit))
        samples: list[Feeds] = []
        for path in files:
            out = preprocess(loader(path))
            samples.extend([dict(o) for o in out] if isinstance(out, (list, tuple)) else [dict(out)])
        return cls(samples, f"{folder} ({len(files)} images)")

    @classmethod
    def from_npy(cls, folder: Path | str, input_names: Sequence[str] | None = None, *,
                 limit: int | None = None) -> "CalibrationSet":
        """`.npz` files hold one sample each, keyed by input name; a `.npy` file is one sample of a
        single-input model (its input name given by `input_names`)."""
        folder = Path(folder)
        files = _list_files(folder, (".npy", ".npz"), ".npy/.npz files")
        if limit is not None:
            files = files[:limit]
        samples: list[Feeds] = []
        for path in files:
            try:
                if path.suffix == ".npz":
                    with np.load(path, allow_pickle=False) as z:
                        samples.append({k: z[k] for k in z.files})
                    continue
                arr = np.load(path, allow_pickle=False)
            except Exception as exc:  # numpy raises ValueError/OSError/zipfile errors for bad files
                raise InputError(f"calibration file {path} is not a readable numpy file: {exc}") from exc
            if not input_names or len(input_names) != 1:
                raise InputError(
                    f"{path.name} is a bare .npy but the model has inputs {list(input_names or [])}",
                    hint="save multi-input samples as .npz keyed by input name (numpy.savez(path, **feeds))",
                )
            samples.append({input_names[0]: arr})
        return cls(samples, f"{folder} ({len(files)} files)")

    # --- use ----------------------------------------------------------------------------------
    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = hash_feeds(self.samples)
        return self._hash

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Feeds]:
        return iter(self.samples)

    def split(self, holdout: float = 0.25, *, min_holdout: int = 1, seed: int = 0) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration part, held-out part): disjoint, seeded, so the gate never judges on calibration data.

        With a single sample both parts are that sample (there is nothing to hold out); the report says so.
        """
        n = len(self.samples)
        if n < 2:
            return self, self
        k = min(n - 1, max(min_holdout, int(round(n * holdout))))
        order = list(range(n))
        random.Random(seed).shuffle(order)
        held, calib = sorted(order[:k]), sorted(order[k:])
        return (CalibrationSet([self.samples[i] for i in calib], f"{self.source} [calibration {len(calib)}]"),
                CalibrationSet([self.samples[i] for i in held], f"{self.source} [held out {len(held)}]"))

    def check_inputs(self, input_names: Sequence[str]) -> None:
        want = set(input_names)
        for i, s in enumerate(self.samples):
            if set(s) != want:
                raise InputError(f"calibration sample {i} from {self.source} has inputs {sorted(s)}; "
                                 f"the model takes {sorted(want)}")


def synthetic_set(model_inputs: Sequence[tuple[str, str, tuple[int | None, ...]]], *, count: int = 8,
                  seed: int = 0, dynamic_dim: int = 224) -> CalibrationSet:
    """Seeded random feeds from the IO spec: a last resort for gates when the user gave no data.

    Dynamic batch dims become 1, other dynamic dims `dynamic_dim` (a multiple of 32, which detection
    backbones need). Real data judges far better; reports mark this source as synthetic.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        feeds = {}
        for name, dtype, shape in model_inputs:
            dims = tuple((1 if axis == 0 else dynamic_dim) if d is None else d for axis, d in enumerate(shape))
            if np.dtype(dtype).kind == "f":
                feeds[name] = rng.uniform(-1.0, 1.0, size=dims).astype(dtype)
            else:
                feeds[name] = rng.integers(0, 2, size=dims).astype(dtype)
        samples.append(feeds)
    return CalibrationSet(samples, f"synthetic (seed {seed}, {count} samples)")


def _list_files(folder: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"calibration folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"no {what} in {folder}", hint=f"expected files ending in {', '.join(suffixes)}")
    return files
