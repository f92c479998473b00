"""`ppdeploy convert MODEL -o model.onnx`: Paddle -> checked ONNX (cached)."""
from __future__ import annotations

import shutil
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a Paddle model to a checked, simplified ONNX graph")
    p.add_argument("model", help="zoo name, Paddle model dir (inference.pdmodel or inference.json), or file")
    p.add_argument("-o", "--output", default=None, help="where to copy the ONNX file (default: print cache path)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 11)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--rebuild", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from rich.console import Console

    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.core.cache import EngineCache
    from ppdeploy.source.model import detect

    console = Console(stderr=True)
    source = detect(args.model)
    with console.status(f"converting {source.name} ({source.kind})…"):
        result = to_onnx(source, opset=args.opset, cache=EngineCache(args.cache_dir),
                         simplify=not args.no_simplify, rebuild=args.rebuild)
    target = result.onnx_path
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.onnx_path, target)
    facts = result.facts
    console.print(f"[green]converted[/] {source.name} via {result.route} (paddle2onnx {result.converter_version}), "
                  f"opset {result.opset}, {facts.get('nodes_before', '?')} -> {facts.get('nodes', '?')} nodes"
                  f"{' (cache hit)' if result.cache_hit else ''} in {result.seconds:.1f}s")
    print(target)
    return 0
