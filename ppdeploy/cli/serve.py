"""`ppdeploy serve MODEL` / `ppdeploy serve --repo DIR`: the dynamic-batching KServe v2 (Triton protocol) server.

MODEL is a zoo name, a Paddle model dir or an .onnx file, served with defaults (flags below override them);
`ocr` serves the three PP-OCR models plus the /v1/ocr pipeline over them. A Paddle model dir with a
preprocess.yaml or labels.txt is served as an image classifier on /v1/classify as well.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from ppdeploy.core.errors import BackendUnavailable, ConfigError, PPDeployError
from ppdeploy.core.lazy import install_hint
from ppdeploy.precision.registry import PRECISIONS
from ppdeploy.tasks.registry import TASKS

# The Ray Serve variant is optional in a build; its flags are registered only when its module is there.
RAY_MODULE = "ppdeploy.serve.ray"


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
    g.add_argument("--precision", default="fp32", choices=PRECISIONS.names())
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
    g.add_argument("--task", choices=["none", *TASKS.names()], default=None,
                   help="also serve the model as this task's /v1 route (default: the task that claims the model's "
                        "folder, e.g. classification for one with preprocess.yaml or labels.txt)")
    o = p.add_argument_group("operations")
    o.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                   help="also serve Triton's gRPC protocol (tritonclient.grpc) on this port (0: a free one); "
                        "same models, batching, limits, API key and drain as HTTP")
    o.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit (MiB, gRPC messages too)")
    o.add_argument("--max-image-pixels", type=int, default=50_000_000, help="largest image accepted by task routes")
    o.add_argument("--task-threads", type=int, default=4, help="threads running task pipelines (pre/post-processing)")
    o.add_argument("--max-task-queue", type=int, default=64,
                   help="image requests waiting for a pipeline thread before 429")
    o.add_argument("--max-task-wait", type=float, default=30.0, metavar="SECONDS",
                   help="429 (with Retry-After) when a new image request would wait longer than this for a pipeline "
                        "thread, judged from the recent time per request; 0: no limit")
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
    if importlib.util.find_spec(RAY_MODULE) is not None:  # a spec lookup: imports neither the module nor Ray
        r = p.add_argument_group("Ray Serve (with --ray)")
        r.add_argument("--replicas", type=int, default=None,
                       help="replicas per model deployment (default: config.yaml autoscaling, else 1)")
        r.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved per model replica")
        r.add_argument("--num-gpus-per-replica", type=float, default=0.0,
                       help="Ray GPUs per model replica (fractions share a GPU, e.g. 0.5)")
        r.add_argument("--gateway-replicas", type=int, default=1, help="replicas of the HTTP gateway")
        r.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: start a local one; 'auto' joins a running one)")
    p.set_defaults(handler=run)


def configs_from_args(args) -> list:
    """The model configs the parsed `serve` flags ask for (ppdeploy.repository.resolve)."""
    from ppdeploy.repository.resolve import ServeDefaults, resolve_configs

    defaults = ServeDefaults(
        name=args.name, backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()) or ("auto",),
        precision=args.precision, threads=args.threads, max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms, max_queue_size=args.max_queue_size, timeout_ms=args.timeout_ms,
        instances=args.instances, head=args.head, task=args.task)
    return resolve_configs(args.model, repo=args.repo, defaults=defaults,
                           engine_process=getattr(args, "engine_process", False))


def settings_from_args(args):
    """The server settings of the parsed `serve` flags (API key from $PPDEPLOY_API_KEY unless given)."""
    from ppdeploy.serve.http import settings_from_env

    return settings_from_env(host=args.host, port=args.port, api_key=args.api_key,
                             max_body_bytes=int(args.max_body_mb * (1 << 20)),
                             max_image_pixels=args.max_image_pixels, task_threads=args.task_threads,
                             max_task_queue=args.max_task_queue, max_task_wait_s=args.max_task_wait, strict_readiness=not args.no_strict_readiness,
                             drain_timeout_s=args.drain_timeout, workers=args.workers, grpc_port=args.grpc_port)


def run(args) -> int:
    from ppdeploy.serve.workers import check_workers

    if args.ray and args.workers != 1:
        raise ConfigError("--workers is for the built-in server; with --ray, scale with --replicas (model replicas) "
                          "and --gateway-replicas (HTTP)")
    check_workers(args.workers)
    if args.grpc_port is not None and (args.workers != 1 or args.ray):
        raise ConfigError("--grpc-port is served by the single-process built-in server; drop --workers or --ray")
    if args.grpc_port is not None and not 0 <= args.grpc_port <= 65535:
        raise ConfigError(f"--grpc-port must be a port number (0-65535), got {args.grpc_port}")
    if args.grpc_port is not None and not all(importlib.util.find_spec(m) for m in ("grpc", "tritonclient")):
        raise BackendUnavailable("--grpc-port needs grpcio and Triton's gRPC protos", hint=install_hint("grpc"))
    if args.ray:
        if importlib.util.find_spec(RAY_MODULE) is None:
            raise PPDeployError("the Ray Serve variant is not part of this ppdeploy build")
        ray = importlib.import_module(RAY_MODULE)
        options = ray.RayOptions(replicas=args.replicas, num_cpus_per_replica=args.num_cpus_per_replica,
                                 num_gpus_per_replica=args.num_gpus_per_replica,
                                 gateway_replicas=args.gateway_replicas)
        return int(ray.run(configs_from_args(args), settings_from_args(args), options,
                           address=args.ray_address) or 0)
    from ppdeploy.serve.logs import configure_logging
    from ppdeploy.serve.server import serve

    configs = configs_from_args(args)
    settings = settings_from_args(args)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"ppdeploy serve: warning: listening on {settings.host} without an API key", file=sys.stderr)
    configure_logging(not args.no_access_log)
    return serve(configs, settings)
