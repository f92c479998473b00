"""`ppdeploy serve MODEL` / `ppdeploy serve --repo DIR`: the dynamic-batching KServe v2 (Triton protocol) server.

MODEL is a zoo name, a Paddle model dir or an .onnx file, served with defaults (flags below override them);
`ocr` serves the three PP-OCR models plus the /v1/ocr pipeline over them. A Paddle model dir with a
preprocess.yaml or labels.txt is served as an image classifier on /v1/classify as well.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

from ppdeploy.core.errors import ConfigError, PPDeployError

OCR_BUNDLE = "ocr"


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP (KServe v2 / Triton protocol, dynamic batching)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="zoo name, Paddle model dir, .onnx file, or 'ocr' (det+cls+rec+pipeline)")
    p.add_argument("--repo", help="model repository: one folder per model with a config.yaml")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--api-key", default=None,
                   help="require this key on every route but health (default: $PPDEPLOY_API_KEY, if set)")
    g = p.add_argument_group("single-model defaults (ignored with --repo)")
    g.add_argument("--name", help="model name on the API (default: derived from MODEL)")
    g.add_argument("--backend", default="auto", help="backend or comma-separated preference list (default auto)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"])
    g.add_argument("--threads", type=int, default=None, help="CPU threads per model instance")
    g.add_argument("--max-batch-size", type=int, default=8)
    g.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                   help="wait this long for a batch to fill (0: batch what queues while the model is busy)")
    g.add_argument("--max-queue-size", type=int, default=256, help="queued requests before 429")
    g.add_argument("--timeout-ms", type=float, default=0.0, help="default per-request queue timeout (0: none)")
    g.add_argument("--instances", type=int, default=1, help="model instances (runners) per model")
    g.add_argument("--head", choices=["ctc_greedy"], default=None,
                   help="output head for a CTC recognizer (with 'ocr': its rec): best class + probability per step "
                        "instead of the whole softmax, ~2200x less to copy back and send (ppdeploy.graph.heads)")
    g.add_argument("--task", choices=["none", "classification"], default=None,
                   help="also serve the model as a task route (default: classification when the folder has "
                        "preprocess.yaml or labels.txt)")
    o = p.add_argument_group("operations")
    o.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit (MiB)")
    o.add_argument("--max-image-pixels", type=int, default=50_000_000, help="largest image accepted by task routes")
    o.add_argument("--task-threads", type=int, default=4, help="threads running task pipelines (pre/post-processing)")
    o.add_argument("--max-task-queue", type=int, default=64,
                   help="image requests waiting for a pipeline thread before 429")
    o.add_argument("--engine-process", action="store_true",
                   help="run each model instance's engine in its own process, fed through shared memory (with "
                        "--repo: every model, as if its config set engine_process: true)")
    o.add_argument("--workers", type=int, default=1,
                   help="HTTP worker processes on the port (default 1: this process serves). More help when one "
                        "process's Python work per request is the limit; with engine_process models they share "
                        "one engine process per model instance")
    o.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight requests on SIGTERM")
    o.add_argument("--no-strict-readiness", action="store_true",
                   help="report ready once loading ends even if some model is unavailable")
    o.add_argument("--no-access-log", action="store_true", help="do not write the JSON access log to stderr")
    o.add_argument("--ray", action="store_true", help="serve with Ray Serve instead (needs ppdeploy[ray])")
    if importlib.util.find_spec("ppdeploy.serve.ray") is not None:  # imports no Ray: flags only
        from ppdeploy.serve.ray import add_arguments as add_ray_arguments

        add_ray_arguments(p.add_argument_group("Ray Serve (with --ray)"))
    p.set_defaults(handler=run)


def configs_from_args(args) -> list:
    configs = _configs_from_args(args)
    if getattr(args, "engine_process", False):
        for cfg in configs:
            if cfg.task != "ocr":  # a pipeline has no engine of its own
                cfg.engine_process = True
    return configs


def _configs_from_args(args) -> list:
    from ppdeploy.repository.config import ModelConfig, check_references, load_repository

    if args.repo and args.model:
        raise ConfigError("give either MODEL or --repo, not both")
    if args.repo:
        return load_repository(args.repo)
    if not args.model:
        raise ConfigError("nothing to serve", hint="ppdeploy serve ppocrv4-rec   or   ppdeploy serve --repo DIR")
    backends = [b.strip() for b in args.backend.split(",") if b.strip()] or ["auto"]
    common = dict(backends=backends, precision=args.precision, threads=args.threads,
                  max_batch_size=args.max_batch_size, instance_count=args.instances,
                  dynamic_batching={"max_queue_delay_ms": args.max_queue_delay_ms,
                                    "max_queue_size": args.max_queue_size, "default_timeout_ms": args.timeout_ms})
    if args.model == OCR_BUNDLE:
        stages = {"det": "ppocrv4-det", "cls": "ppocr-cls", "rec": "ppocrv4-rec"}
        configs = [ModelConfig.for_source(src, name=src, **common, head=args.head if stage == "rec" else None)
                   for stage, src in stages.items()]
        configs.append(ModelConfig(name=args.name or "ocr", task="ocr", pipeline=stages))
        errors = check_references(configs)
        if errors:
            raise ConfigError("\n".join(errors))
        return configs
    from ppdeploy.source import zoo

    if args.model not in zoo.MODELS and not Path(args.model).exists():
        raise ConfigError(f"'{args.model}' is neither a bundled model ({', '.join(zoo.MODELS)}, {OCR_BUNDLE}) nor an "
                          f"existing path")
    task = args.task
    if task is None:
        folder = Path(args.model)
        task = "classification" if folder.is_dir() and any(
            (folder / f).is_file() for f in ("preprocess.yaml", "labels.txt")) else "none"
    source = args.model if args.model in zoo.MODELS else str(Path(args.model).resolve())
    return [ModelConfig.for_source(source, name=args.name, task=task, head=args.head, **common)]


def run(args) -> int:
    from ppdeploy.serve.workers import check_workers

    if args.ray and args.workers != 1:
        raise ConfigError("--workers is for the built-in server; with --ray, scale with --replicas (model replicas) "
                          "and --gateway-replicas (HTTP)")
    check_workers(args.workers)
    if args.ray:
        if importlib.util.find_spec("ppdeploy.serve.ray") is None:
            raise PPDeployError("the Ray Serve variant is not part of this ppdeploy build")
        return int(importlib.import_module("ppdeploy.serve.ray").main(args) or 0)
    from ppdeploy.serve.app import settings_from_env
    from ppdeploy.serve.server import serve

    configs = configs_from_args(args)
    settings = settings_from_env(host=args.host, port=args.port, api_key=args.api_key,
                                 max_body_bytes=int(args.max_body_mb * (1 << 20)),
                                 max_image_pixels=args.max_image_pixels, task_threads=args.task_threads,
                                 max_task_queue=args.max_task_queue,
                                 strict_readiness=not args.no_strict_readiness, drain_timeout_s=args.drain_timeout,
                                 workers=args.workers)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"ppdeploy serve: warning: listening on {settings.host} without an API key", file=sys.stderr)
    configure_logging(not args.no_access_log)
    return serve(configs, settings)


def configure_logging(access: bool) -> None:
    """Also called in each worker of --workers N (ppdeploy.serve.workers), so every worker logs alike."""
    # The access log is one JSON object per line on stderr, separate from the human-readable log.
    logger = logging.getLogger("ppdeploy.access")
    logger.propagate = False
    logger.handlers.clear()
    if access:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.WARNING)
    serve_log = logging.getLogger("ppdeploy.serve")
    if serve_log.getEffectiveLevel() > logging.INFO and os.environ.get("PPDEPLOY_QUIET") is None:
        serve_log.setLevel(logging.INFO)
