"""`ppdeploy` command line. Each sub-command lives in its own module with `register(subparsers)`;
modules are imported here but import their heavy libraries only inside the handler."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ppdeploy.core.errors import PPDeployError, storage_error

# One module per command group; each defines register(subparsers) adding one or more sub-commands.
COMMAND_MODULES = [
    "quickstart", "convert", "build", "verify", "run", "bench", "cache", "doctor",
    "ocr", "classify", "detect", "eval", "serve", "loadtest", "optimize", "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppdeploy", description="Paddle model -> ONNX -> optimized engine -> service")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ppdeploy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ppdeploy.cli.{name}":
                continue  # command group not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    try:
        return int(args.handler(args) or 0)
    except PPDeployError as exc:
        print(f"ppdeploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        refused = storage_error(exc)  # a read-only or full cache / output folder: the user's to fix
        if refused is None:
            raise
        print(f"ppdeploy {args.command}: error: {refused}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
