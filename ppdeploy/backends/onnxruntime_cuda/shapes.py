"""Shape buckets: the few shapes a session per shape should see. Batch sizes padded up to powers of two, optional
axis padding to a multiple (outputs cropped back), and the fixed shapes a CUDA graph needs. Pure numpy."""
from __future__ import annotations

import numpy as np

from ppdeploy.backends.base import BuildOptions
from ppdeploy.core.errors import BuildError
from ppdeploy.core.tensors import IOSpec


def check_cuda_graph_shapes(io: IOSpec, options: BuildOptions) -> None:
    """CUDA graphs replay fixed kernels on fixed buffers: every input shape must be pinned by the model or profile."""
    loose = []
    for spec in io.inputs:
        rng = options.shapes.ranges.get(spec.name) if options.shapes else None
        fixed_by_profile = rng is not None and rng.min == rng.max
        if spec.dynamic and not fixed_by_profile:
            loose.append(spec.describe())
    if loose:
        raise BuildError(f"cuda_graph needs fixed input shapes, but {', '.join(loose)} can vary",
                         hint="give shapes with min == opt == max for these inputs, or turn cuda_graph off")


def batch_bucket(n: int, limit: int | None) -> int:
    """Next power of two >= n, capped at `limit` (the profile's max batch) and never below n."""
    bucket = 1 << max(0, (n - 1).bit_length())
    if limit is not None:
        bucket = min(bucket, limit)
    return max(bucket, n)


def pad_batch(feeds: dict[str, np.ndarray], batchable: set[str], limit: int | None) -> tuple[dict[str, np.ndarray], int]:
    """Zero-pad the batch dim of the batchable inputs up to its bucket; returns (feeds, real batch)."""
    sizes = {a.shape[0] for n, a in feeds.items() if n in batchable}
    if len(sizes) != 1:
        return feeds, -1  # no common batch dim: leave the request alone
    n = sizes.pop()
    target = batch_bucket(n, limit)
    if target == n:
        return feeds, n
    out = {}
    for name, arr in feeds.items():
        if name in batchable:
            padded = np.zeros((target, *arr.shape[1:]), arr.dtype)
            padded[:n] = arr
            out[name] = padded
        else:
            out[name] = arr
    return out, n


def pad_axes(feeds: dict[str, np.ndarray], multiples: dict) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Zero-pad the listed axes of each input up to a multiple; returns (feeds, original shapes of padded inputs)."""
    out, originals = dict(feeds), {}
    for name, axes in (multiples or {}).items():
        arr = feeds.get(name)
        if arr is None:
            continue
        target = list(arr.shape)
        for axis, multiple in axes.items():
            a, m = int(axis), int(multiple)
            target[a] = -(-arr.shape[a] // m) * m
        if tuple(target) != arr.shape:
            padded = np.zeros(target, arr.dtype)
            padded[tuple(slice(0, d) for d in arr.shape)] = arr
            out[name] = padded
            originals[name] = arr.shape
    return out, originals


def crop_outputs(outputs: dict[str, np.ndarray], padded: dict[str, np.ndarray], originals: dict[str, tuple]) -> dict:
    """Undo pad_axes on outputs shaped like a padded input (same rank, the padded extent on that axis)."""
    if not originals:
        return outputs
    out = {}
    for name, value in outputs.items():
        index = [slice(None)] * value.ndim
        for inp, orig in originals.items():
            full = padded[inp].shape
            if value.ndim != len(full):
                continue
            for axis in range(1, value.ndim):
                if full[axis] != orig[axis] and value.shape[axis] == full[axis]:
                    index[axis] = slice(0, orig[axis])
        out[name] = value[tuple(index)]
    return out


def feeds_batch(feeds: dict[str, np.ndarray], batchable: set[str]) -> int:
    return next(a.shape[0] for n, a in feeds.items() if n in batchable)
