"""`ppdeploy cache ls|clear|path`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("cache", help="list or clear the engine cache")
    p.add_argument("action", choices=["ls", "clear", "path"])
    p.add_argument("--kind", default=None, help="only this kind of entry (onnx, precision, engine, ...)")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ppdeploy.core.cache import EngineCache

    cache = EngineCache(args.cache_dir)
    if args.action == "path":
        print(cache.root)
        return 0
    if args.action == "clear":
        n = cache.clear(args.kind)
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {cache.root}")
        return 0
    entries = [e for e in cache.entries() if args.kind in (None, e.kind)]
    if not entries:
        print(f"cache {cache.root} is empty")
        return 0
    print(f"{'kind':<10}{'key':<34}{'size':>10}  {'created':<25}{'state':<8}label")
    for e in entries:
        state = "ok" if e.valid else "BROKEN"
        print(f"{e.kind:<10}{e.key:<34}{e.size / 2**20:>8.1f}M  {e.created:<25}{state:<8}{e.label}"
              + (f"  ({e.problem})" if e.problem else ""))
    return 0
