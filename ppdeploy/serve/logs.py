"""Logging of a serving process: the JSON access log and the server's own log.

`configure_logging` runs in `ppdeploy serve` and in each worker of `--workers N` (ppdeploy.serve.workers), so
every process logs alike.
"""
from __future__ import annotations

import logging
import os
import sys

ACCESS_LOGGER = "ppdeploy.access"
SERVE_LOGGER = "ppdeploy.serve"


def configure_logging(access: bool) -> None:
    """`access`: write the access log (one JSON object per line) to stderr, apart from the human-readable log.
    The server's log shows INFO unless logging is set quieter already or PPDEPLOY_QUIET is set."""
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.propagate = False
    logger.handlers.clear()
    if access:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.WARNING)
    serve_log = logging.getLogger(SERVE_LOGGER)
    if serve_log.getEffectiveLevel() > logging.INFO and os.environ.get("PPDEPLOY_QUIET") is None:
        serve_log.setLevel(logging.INFO)


__all__ = ["configure_logging"]
