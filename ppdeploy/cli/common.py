"""Arguments shared by the commands that load a model, parsed the same way everywhere."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ppdeploy.backends.registry import BACKENDS
from ppdeploy.core.errors import PPDeployError
from ppdeploy.core.shapes import InputRange, ShapeProfile
from ppdeploy.graph.heads import HEADS
from ppdeploy.precision.registry import PRECISIONS


def add_model_args(p: argparse.ArgumentParser, *, backend_default: str = "auto", precision: bool = True,
                   head: bool = True) -> None:
    p.add_argument("model", help="zoo name (ppocrv4-det, ppocrv4-rec, ppocr-cls), Paddle model dir/file, or .onnx")
    p.add_argument("--backend", "-b", default=backend_default,
                   help=f"auto (fallback chain), one backend, or a comma list: {', '.join(BACKENDS)}")
    if precision:
        p.add_argument("--precision", default="fp32", choices=PRECISIONS.names())
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores available)")
    p.add_argument("--shapes", default=None, metavar="NAME=MIN:OPT:MAX[,NAME=...]",
                   help="shape profile per input, dims joined by x, e.g. x=1x3x48x32:1x3x48x320:8x3x48x1280")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 11; default per route: 14 legacy, 17 PIR)")
    if head:
        p.add_argument("--head", default=None, choices=list(HEADS),
                       help="append an output head to the graph: ctc_greedy = a CTC recognizer returns its best class "
                            "and probability per step instead of the whole softmax")
    p.add_argument("--cache-dir", default=None, help="engine cache (default $PPDEPLOY_CACHE or ~/.cache/ppdeploy)")
    p.add_argument("--rebuild", action="store_true", help="ignore cached conversions/engines and rebuild them")


def parse_dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.lower().replace(",", "x").split("x") if d)
    except ValueError as exc:
        raise PPDeployError(f"bad shape '{text}'", hint="write dims joined by x, e.g. 1x3x48x320") from exc


def parse_named_dims(items: list[str], example: str) -> dict[str, tuple[int, ...]]:
    """Repeated NAME=DIMS flags (e.g. --shape x=3x224x224) -> {name: dims}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        if not sep:
            raise PPDeployError(f"bad --shape '{item}'", hint=f"NAME=DIMS, e.g. {example}")
        shapes[name.strip()] = parse_dims(dims)
    return shapes


def parse_shapes(text: str | None) -> ShapeProfile | None:
    if not text:
        return None
    ranges = {}
    for item in text.split(","):
        name, sep, spec = item.partition("=")
        parts = spec.split(":")
        if not sep or len(parts) not in (1, 3):
            raise PPDeployError(f"bad --shapes entry '{item}'", hint="NAME=MIN:OPT:MAX, e.g. x=1x3x48x32:1x3x48x320:8x3x48x1280")
        dims = [parse_dims(p) for p in parts]
        try:
            ranges[name.strip()] = InputRange(dims[0], dims[len(dims) // 2], dims[-1])
        except ValueError as exc:
            raise PPDeployError(f"bad --shapes entry '{item}': {exc}") from exc
    return ShapeProfile(ranges)


def load_from_args(args: argparse.Namespace, **overrides: Any):
    from ppdeploy.deploy.load import load_model

    kwargs = dict(backend=args.backend, precision=getattr(args, "precision", "fp32"), threads=args.threads,
                  shapes=parse_shapes(args.shapes), opset=args.opset, cache_dir=args.cache_dir,
                  rebuild=getattr(args, "rebuild", False), head=getattr(args, "head", None))
    kwargs.update(overrides)
    from rich.console import Console

    # Conversion and engine builds take seconds on a first run; say what is happening (stderr keeps stdout clean).
    with Console(stderr=True).status(f"preparing {args.model} on {kwargs['backend']} (convert → build, cached)…"):
        return load_model(args.model, **kwargs)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def expand_images(items: Sequence[str]) -> list[Path]:
    """Image files and folders (their images, sorted; not recursive) -> files, in the order given."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PPDeployError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        else:
            files.append(path)
    return files


def error_text(exc: BaseException) -> str:
    """One line for a failed input: our errors by their message, anything else with its type."""
    if isinstance(exc, PPDeployError):
        return " ".join(str(exc).split())
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}".rstrip(": ")


def for_each_input(command: str, items: Iterable[Path], work: Callable[[Path], Any],
                   emit: Callable[[Path, Any], None], emit_error: Callable[[Path, str], None] | None = None) -> int:
    """Run `work` on each input and `emit` its result as soon as it is ready; an input that fails is reported on
    stderr (`ppdeploy COMMAND: error: PATH: reason`, and to `emit_error`, e.g. a JSONL record) and the others go on.
    Returns the exit status: 0, or 2 when any input failed (with a count on stderr when there were several)."""
    failed = total = 0
    for path in items:
        total += 1
        try:
            result = work(path)
        except Exception as exc:  # one bad file must not lose the others' results
            failed += 1
            print(f"ppdeploy {command}: error: {path}: {error_text(exc)}", file=sys.stderr, flush=True)
            if emit_error is not None:
                emit_error(path, error_text(exc))
                sys.stdout.flush()
            continue
        emit(path, result)
        sys.stdout.flush()
    if failed and total > 1:
        print(f"ppdeploy {command}: {failed} of {total} inputs failed", file=sys.stderr)
    return 2 if failed else 0


def print_jsonl(record: dict) -> None:
    """One JSON document per line (JSONL), written at once: a consumer can read results while the rest run."""
    print(json.dumps(record, ensure_ascii=False, default=str), flush=True)
