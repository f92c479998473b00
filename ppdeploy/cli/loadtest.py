"""`ppdeploy loadtest URL`: open-loop Poisson/constant load against a ppdeploy (or any KServe v2) server, over
HTTP or Triton's gRPC protocol, with tensors in the request or in system shared memory."""
from __future__ import annotations

import os
from pathlib import Path

from ppdeploy.core.errors import PPDeployError


def register(sub) -> None:
    p = sub.add_parser("loadtest", help="open-loop HTTP/gRPC load test (Poisson or constant arrivals), latency vs load",
                       description="Examples:\n"
                                   "  ppdeploy loadtest http://127.0.0.1:8000 --kind ocr --rate 2 --duration 20\n"
                                   "  ppdeploy loadtest http://127.0.0.1:8000 --model rec --sweep 10,20,40,80 --duration 10\n"
                                   "  ppdeploy loadtest http://127.0.0.1:8000 --model rec --protocol grpc --grpc-port 8001 "
                                   "--rate 50\n"
                                   "  ppdeploy loadtest http://127.0.0.1:8000 --model det --shape x=3x960x960 --shm --rate 20",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000 (loopback only unless --allow-remote)")
    p.add_argument("--kind", choices=["v2", "ocr", "classify"], default="v2",
                   help="v2: KServe v2 infer on --model; ocr/classify: POST an image to /v1/ocr or /v1/classify")
    p.add_argument("--model", default=None, help="model name (required for v2; optional route suffix for ocr/classify)")
    p.add_argument("--rate", type=float, default=None, help="offered requests per second")
    p.add_argument("--sweep", default=None, help="comma list of offered rates, run one after another (overrides --rate)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate (default %(default)s)")
    p.add_argument("--distribution", choices=["poisson", "constant"], default="poisson")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson schedule")
    p.add_argument("--image", default=None, help="ocr/classify: image file to send (default: a synthetic page)")
    p.add_argument("--input", default=None, help="v2: .npy file to send as the model's single input")
    p.add_argument("--batch", type=int, default=1, help="v2: batch size of generated inputs")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="v2: per-sample shape for dynamic inputs, e.g. x=3x48x320")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http",
                   help="v2: send KServe v2 over HTTP (binary tensors) or Triton's gRPC protocol (raw contents); the "
                        "URL still serves metadata and shared-memory registration")
    p.add_argument("--grpc-port", type=int, default=8001, help="--protocol grpc: the server's gRPC port (serve --grpc-port)")
    p.add_argument("--shm", action="store_true",
                   help="v2: put the inputs in system shared memory once and send requests that name the region "
                        "(client and server on one machine)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to wait for stragglers after the last arrival")
    p.add_argument("--max-in-flight", type=int, default=512, help="client-side cap on outstanding requests")
    p.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per rate")
    p.add_argument("--api-key", default=os.environ.get("PPDEPLOY_API_KEY"), help="bearer key (default $PPDEPLOY_API_KEY)")
    p.add_argument("--allow-remote", action="store_true", help="allow a target that is not a loopback address")
    p.add_argument("--out", default="loadtest-results", help="folder for JSON, PNG plot and markdown (default %(default)s)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from contextlib import nullcontext
    from urllib.parse import urlsplit

    import numpy as np

    from ppdeploy.bench import environment, report
    from ppdeploy.bench.load import (
        LoadSettings,
        SharedMemoryInputs,
        ensure_loopback,
        fetch_v2_inputs,
        grpc_v2_request,
        image_request,
        load_image_bytes,
        run_load,
        v2_request,
    )
    from ppdeploy.bench.suite import write_load_run
    from ppdeploy.cli.common import parse_named_dims

    ensure_loopback(args.url, args.allow_remote)
    if args.sweep:
        try:
            rates = [float(r) for r in args.sweep.split(",") if r.strip()]
        except ValueError as exc:
            raise PPDeployError(f"--sweep takes comma-separated numbers, got '{args.sweep}'") from exc
    elif args.rate is not None:
        rates = [args.rate]
    else:
        raise PPDeployError("give --rate R or --sweep r1,r2,...")
    base = args.url.rstrip("/")
    if args.kind != "v2" and (args.protocol != "http" or args.shm):
        raise PPDeployError("--protocol grpc and --shm are for --kind v2 (the /v1 image routes are HTTP only)")
    if not 0 < args.grpc_port < 65536:
        raise PPDeployError(f"--grpc-port must be a port number (1-65535), got {args.grpc_port}")
    auth = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    shm = None
    if args.kind == "v2":
        if not args.model:
            raise PPDeployError("--kind v2 needs --model NAME (see GET /v2/repository/index)")
        if args.input:
            try:
                arr = np.load(args.input)
            except (OSError, ValueError) as exc:
                raise PPDeployError(f"cannot read {args.input}: {exc}") from exc
            meta = fetch_v2_inputs(base, args.model, 1, args.timeout, {})
            if len(meta) != 1:
                raise PPDeployError(f"--input gives one array but the model has inputs {sorted(meta)}")
            inputs = {next(iter(meta)): arr}
        else:
            inputs = fetch_v2_inputs(base, args.model, args.batch, args.timeout,
                                     parse_named_dims(args.shape, "x=3x48x320"))
        shm = SharedMemoryInputs(base, inputs, headers=auth, timeout_s=args.timeout) if args.shm else None
    else:
        if args.image:
            path = Path(args.image)
        else:
            from ppdeploy.bench.pages import synthetic_pages
            from ppdeploy.bench.suite import _pages_dir

            path = synthetic_pages(_pages_dir(), 1).images[0]
        template = image_request(args.kind, load_image_bytes(path), path.name, args.model)
    if args.kind != "v2":
        template.headers.update(auth)
    target = f"grpc://{urlsplit(base).hostname}:{args.grpc_port}" if args.protocol == "grpc" else base
    settings = LoadSettings(timeout_s=args.timeout, drain_s=args.drain, max_in_flight=args.max_in_flight,
                            max_requests=args.max_requests, seed=args.seed, allow_remote=args.allow_remote)

    def show(r) -> None:
        lat = r.latency_ms or {}
        print(f"offered {r.offered_rate:g}/s: achieved {r.achieved_rps:.2f}/s, ok {r.ok}/{r.scheduled}, "
              f"429 {r.http_429}, errors {r.http_errors + r.failures}, dropped {r.dropped}, "
              f"p50 {lat.get('p50', float('nan')):.1f} ms p99 {lat.get('p99', float('nan')):.1f} ms", flush=True)

    with shm or nullcontext():
        if args.kind == "v2":
            template = grpc_v2_request(args.model, inputs, shm) if args.protocol == "grpc" else \
                v2_request(args.model, inputs, shm=shm)
            template.headers.update(auth)
        results = run_load(target, template, rates, args.duration, args.distribution, settings, on_rate=show)
    meta = {"target": target, "request": template.describe, "distribution": args.distribution,
            "duration_s": args.duration, "rates": rates, "settings": settings.__dict__}
    files = write_load_run(results, meta, environment.describe(), Path(args.out))
    print()
    print(report.load_markdown([r.to_dict(False) for r in results]))
    print(f"\nwrote {', '.join(str(p) for p in files.values())}")
    return 0 if any(r.ok for r in results) else 1
