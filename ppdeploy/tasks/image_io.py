"""Turn whatever the user hands us (path, bytes, PIL image, numpy array) into one HWC BGR uint8 array.

BGR uint8 is what PaddleOCR's own tools feed their preprocessing (they read with cv2.imread), so every task
starts from the same pixels PaddleOCR would see. Decisions made here, once, for every task:

- Files and bytes are decoded with Pillow: PNG, JPEG, BMP, WebP, TIFF, GIF (first frame) ... Plain 8-bit RGB or
  gray PNG and BMP, the usual scans and screenshots, are handed to OpenCV instead once Pillow has read the header:
  the pixels are the same (lossless formats), and it saves the RGB->BGR copy, ~4 ms of a 0.8 MP page.
- EXIF orientation is applied (a phone photo comes out upright, as the user sees it in a viewer).
- Grayscale becomes 3-channel; transparency (RGBA, LA, palette with alpha) is composited onto white, because
  text saved on a transparent background usually has black (0,0,0,0) pixels there, which would hide the text.
- 16-bit images keep their top 8 bits (the same as OpenCV's IMREAD_COLOR); float images are rejected.
- Size limits: an image with a 0-pixel side, or with more than `max_pixels` pixels (default 100 million,
  checked from the header before decoding, so a decompression bomb costs nothing) raises `ImageError`.
  Anything in between is accepted unchanged; the detector resizes it (its long side goes to `limit_side_len`),
  so a 30000x200 strip is processed, not refused.

Numpy arrays follow OpenCV's conventions: HxW or HxWx1 gray, HxWx3 BGR, HxWx4 BGRA.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np

from ppdeploy.core.errors import ImageError
from ppdeploy.core.lazy import lazy_import

cv2 = lazy_import("cv2", install="opencv-python-headless")
Image = lazy_import("PIL.Image", install="pillow")
ImageOps = lazy_import("PIL.ImageOps", install="pillow")

DEFAULT_MAX_PIXELS = 100_000_000

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]  # Any: PIL.Image.Image


def load_image(image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode/convert `image` to a C-contiguous HxWx3 BGR uint8 array. Raises ImageError with the reason."""
    if isinstance(image, np.ndarray):
        return array_to_bgr(image, max_pixels=max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _decode_file(Path(image), max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ImageError("image data is empty (0 bytes)")
        return _decode_bytes(data, "image data", max_pixels)
    if _is_pil_image(image):
        return _pil_to_bgr(image, "PIL image", max_pixels)
    raise ImageError(
        f"unsupported image input type {type(image).__name__}",
        hint="pass a file path, the file's bytes, a PIL.Image or a numpy array (HxWx3 BGR uint8, or gray)",
    )


def _is_pil_image(obj: Any) -> bool:
    return isinstance(obj, Image.Image)


def _decode_file(path: Path, max_pixels: int) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc}") from exc
    if not data:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    return _decode_bytes(data, str(path), max_pixels)


def _decode_bytes(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # Pillow warns above 89 MP; our own max_pixels check decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            f"{what} is not a recognised image ({len(data)} bytes, starts with {data[:8]!r})",
            hint="supported: PNG, JPEG, BMP, WebP, TIFF, GIF",
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    except Exception as exc:  # Pillow raises assorted types for malformed headers
        raise ImageError(f"{what} could not be opened as an image: {exc}") from exc
    decoded = _decode_with_opencv(data, pil, what, max_pixels)
    return decoded if decoded is not None else _pil_to_bgr(pil, what, max_pixels)


def _decode_with_opencv(data: bytes, pil: Any, what: str, max_pixels: int) -> np.ndarray | None:
    """OpenCV's decode where it gives exactly Pillow's pixels, else None (Pillow then decodes, and reports damage).

    Only lossless formats, without alpha (OpenCV would drop it; Pillow composites onto white), without an EXIF
    block (an eXIf chunk may sit after the pixels, where the header read has not seen it) and not animated.
    """
    if pil.format not in ("PNG", "BMP") or pil.mode not in ("RGB", "L") or getattr(pil, "is_animated", False):
        return None
    if b"eXIf" in data:
        return None
    _check_size(pil.width, pil.height, what, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != (pil.height, pil.width):  # truncated/corrupt: Pillow says what is wrong
        return None
    return bgr


def _check_size(width: int, height: int, what: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f}",
            hint="downscale the image first, or raise max_pixels",
        )


def _pil_to_bgr(pil: Any, what: str, max_pixels: int) -> np.ndarray:
    _check_size(pil.width, pil.height, what, max_pixels)
    try:
        if getattr(pil, "n_frames", 1) > 1:
            pil.seek(0)
        pil.load()  # decode now so a truncated file fails here, with its name, not later
        if pil.getexif().get(0x0112, 1) != 1:  # exif_transpose copies the image even when it is upright
            pil = ImageOps.exif_transpose(pil)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, ValueError from plugins
        raise ImageError(f"{what} could not be decoded (truncated or corrupt?): {exc}") from exc

    mode = pil.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(pil)
        # Pillow reports 16-bit gray as I;16 (uint16) or I (int32 holding 0..65535): keep the top 8 bits.
        gray = (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return array_to_bgr(gray, max_pixels=max_pixels)
    if mode == "F":
        raise ImageError(f"{what} is a 32-bit float image; convert it to 8-bit first")
    if mode == "1":
        pil = pil.convert("L")
    elif mode == "P" or mode == "PA":
        pil = pil.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        pil = pil.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...

    arr = np.asarray(pil)
    if pil.mode == "L":
        return array_to_bgr(arr, max_pixels=max_pixels)
    if pil.mode == "LA":
        return _composite_on_white(arr[..., :1].repeat(3, axis=2), arr[..., 1])
    if pil.mode == "RGBA":
        return _composite_on_white(arr[..., 2::-1], arr[..., 3])
    return np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR


def _composite_on_white(bgr: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if alpha.min() == 255:  # fully opaque: skip the arithmetic
        return np.ascontiguousarray(bgr)
    a = alpha.astype(np.float32)[..., None] * (1.0 / 255.0)
    out = bgr.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.ascontiguousarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def array_to_bgr(arr: np.ndarray, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Numpy image (OpenCV conventions) -> HxWx3 BGR uint8. A uint8 BGR input comes back without a copy."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ImageError(f"image array must be HxW (gray) or HxWxC, got shape {arr.shape}")
    height, width = arr.shape[:2]
    _check_size(width, height, f"image array of shape {arr.shape}", max_pixels)
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise ImageError(f"image array has {arr.shape[2]} channels; expected 1 (gray), 3 (BGR) or 4 (BGRA)")

    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageError(
            f"image array has dtype {arr.dtype}; expected uint8 (or uint16/bool)",
            hint="for float images in [0, 1] pass (img * 255).round().astype(numpy.uint8)",
        )

    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if arr.shape[2] == 4:
        return _composite_on_white(arr[..., :3], arr[..., 3])
    return np.ascontiguousarray(arr)
