"""Ray Serve deployment of a ppdeploy model repository: `ppdeploy serve --ray` or `serve run ppdeploy.serve.ray:app_builder`.

Shape of the Serve application::

    HTTP ─► gateway deployment (ingress)           ─► one deployment per tensor model (det, rec, ...)
            ppdeploy's own Starlette app: /v2 KServe     ppdeploy runners (load_engine: engine cache,
            + /v1 task routes, codec, errors, metrics;   backend fallback) behind Ray Serve's @serve.batch;
            OCR/classify pre/post-processing run here    replicas or autoscaling from each config.yaml

The gateway is the same application `ppdeploy serve` runs (ppdeploy.serve.app.build_app), given a model host
whose "batchers" are Ray deployment handles instead of local engines, so routes, the KServe v2 codec, error
statuses and the task pipelines are identical; only where inference runs differs. Each tensor model scales on
its own (a slow detector can get more replicas than a fast classifier), with Ray's batching per replica.

Ray is optional (`pip install "ppdeploy[ray]"`) and imported only when a Serve application is built.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import ConfigError, InputError, PPDeployError
from ppdeploy.core.tensors import IOSpec, TensorSpec, validate_inputs
from ppdeploy.repository.resolve import resolve_configs
from ppdeploy.serve.app import build_app as build_server_app
from ppdeploy.serve.batcher import (
    BatcherClosed,
    BatchResult,
    BatchTimings,
    InferenceFailed,
    QueueFull,
    RequestTimeout,
)
from ppdeploy.serve.health import wait_until_ready
from ppdeploy.serve.http import ServerSettings
from ppdeploy.serve.merge import Outcome, rows_of, run_merged
from ppdeploy.serve.models import (
    READY,
    UNAVAILABLE,
    LoadedEngine,
    ModelHost,
    load_engine,
)

log = logging.getLogger("ppdeploy.serve.ray")

INSTALL_HINT = 'pip install "ppdeploy[ray]"   (Ray Serve >= 2.30)'
APP_NAME = "ppdeploy"
GATEWAY = "gateway"


def require_ray():
    """Import Ray Serve or say how to get it."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise PPDeployError(f"Ray Serve is not installed ({exc.name or exc})", hint=INSTALL_HINT) from None
    return ray, serve


# -- options -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RayOptions:
    replicas: int | None = None  # fixed replicas per model deployment; None: config.yaml autoscaling, else 1
    num_cpus_per_replica: float = 1.0  # Ray resource request (scheduling), not a thread count
    num_gpus_per_replica: float = 0.0
    gateway_replicas: int = 1
    gateway_num_cpus: float = 0.5
    max_ongoing_requests: int | None = None  # per model replica; None: 2 x max_batch_size, at least 8

    def check(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.num_cpus_per_replica < 0 or self.num_gpus_per_replica < 0 or self.gateway_num_cpus < 0:
            raise ConfigError("CPU/GPU amounts per replica must be >= 0")
        if self.gateway_replicas < 1:
            raise ConfigError(f"gateway replicas must be >= 1, got {self.gateway_replicas}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ConfigError(f"max ongoing requests must be >= 1, got {self.max_ongoing_requests}")


def deployment_name(model: str) -> str:
    return f"model-{model}"


def autoscaling_config(cfg) -> dict | None:
    """Ray's autoscaling_config from the model's config.yaml `autoscaling:` section (None when absent)."""
    scaling = getattr(cfg, "autoscaling", None)
    if scaling is None:
        return None
    return {
        "min_replicas": scaling.min_replicas,
        "initial_replicas": max(scaling.min_replicas, 1),
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
    }


def model_deployment_options(cfg, options: RayOptions) -> dict[str, Any]:
    """`serve.deployment(...)` options for one tensor model."""
    max_ongoing = options.max_ongoing_requests or max(8, 2 * cfg.max_batch_size)
    opts: dict[str, Any] = {
        "name": deployment_name(cfg.name),
        "ray_actor_options": {"num_cpus": options.num_cpus_per_replica, "num_gpus": options.num_gpus_per_replica},
        # Ray batches only requests that are in flight on a replica at once.
        "max_ongoing_requests": max(max_ongoing, cfg.max_batch_size * cfg.instance_count),
        "max_queued_requests": cfg.dynamic_batching.max_queue_size,
    }
    scaling = None if options.replicas is not None else autoscaling_config(cfg)
    if scaling is not None:
        opts["autoscaling_config"] = scaling
    else:
        opts["num_replicas"] = options.replicas or 1
    return opts


# -- the model deployment: runners behind @serve.batch -------------------------------------------------------

def io_to_json(io: IOSpec) -> dict:
    def tensors(items) -> list[dict]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in items]

    return {"inputs": tensors(io.inputs), "outputs": tensors(io.outputs)}


def io_from_json(data: Mapping[str, Any]) -> IOSpec:
    def tensors(items) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

    return IOSpec(tensors(data["inputs"]), tensors(data["outputs"]))


def _shape_key(feeds: Mapping[str, np.ndarray]) -> tuple:
    return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))


def run_grouped(runner: Runner, requests: Sequence[Mapping[str, np.ndarray]], batchable: bool,
                arrived_ns: Sequence[int] | None = None) -> list[dict]:
    """Run one batch of requests on `runner`: requests of the same shape go through one merged call
    (ppdeploy.serve.merge.run_merged: a failing request fails alone). Each result is {"outputs": ...} or
    {"error": message, "status": http_status}.

    With `arrived_ns` (perf_counter_ns when each request reached this replica), the first member of every runner
    call also carries that call's record, {"execution": {"size", "requests", "input_ns", "infer_ns", "output_ns",
    "queue_ns": [one per member]}}: the gateway counts each execution once, from the reply that carries it."""
    results: list[dict | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, feeds in enumerate(requests):
        groups.setdefault(_shape_key(feeds) if batchable else (i,), []).append(i)
    for members in groups.values():
        started = time.perf_counter_ns()
        outcomes = run_merged(runner.infer, [requests[i] for i in members])
        runs: dict[int, Any] = {}
        for i, outcome in zip(members, outcomes):
            results[i] = _reply(outcome)
            if outcome.error is None and outcome.run is not None:
                runs.setdefault(id(outcome.run), outcome.run)
        if arrived_ns is None:
            continue
        for run in runs.values():
            ids = [members[m] for m in run.members]
            began = started if len(ids) == len(members) else run.started_ns  # a re-run alone began later
            results[ids[0]]["execution"] = {"size": run.rows, "requests": len(ids), "input_ns": run.merge_ns,
                                            "infer_ns": run.infer_ns, "output_ns": run.split_ns,
                                            "queue_ns": [max(0, began - arrived_ns[i]) for i in ids]}
    return results  # type: ignore[return-value]


def _reply(outcome: Outcome) -> dict:
    exc = outcome.error
    if exc is None:
        return {"outputs": outcome.outputs}
    if isinstance(exc, InputError):
        return {"error": str(exc), "status": 400}
    return {"error": f"{type(exc).__name__}: {exc}", "status": 500}  # a server-side failure


def _serve_batch(serve, fn, **kwargs):
    """`serve.batch(**kwargs)(fn)`, dropping the options this Ray version lacks (newest first): batch_size_fn
    (counts rows instead of requests) and max_concurrent_batches (one batch per runner)."""
    for optional in ("batch_size_fn", "max_concurrent_batches", None):
        try:
            return serve.batch(**kwargs)(fn)
        except TypeError:
            if optional is None:
                raise
            log.info("this Ray Serve has no serve.batch(%s=...); running without it", optional)
            kwargs.pop(optional)
    raise AssertionError("unreachable")


class ModelReplica:
    """One replica of one tensor model: `cfg.instance_count` runners, fed by Ray Serve's @serve.batch."""

    def __init__(self, cfg, cache_dir: str | None = None):
        from ray import serve

        self.cfg = cfg
        engine = load_engine(cfg, cache_dir)
        self.backend = engine.backend
        self.source_dir = str(engine.source_dir) if engine.source_dir else None
        self.io = engine.runners[0].io
        self.batchable = all(t.shape and t.shape[0] is None for t in self.io.inputs)
        self._free: list[Runner] = list(engine.runners)
        self._pool = concurrent.futures.ThreadPoolExecutor(len(self._free), thread_name_prefix=f"infer-{cfg.name}")
        self._batched = _serve_batch(serve, self._run_batch, max_batch_size=cfg.max_batch_size if self.batchable else 1,
                                     batch_wait_timeout_s=cfg.dynamic_batching.max_queue_delay_ms / 1000.0,
                                     max_concurrent_batches=len(self._free),
                                     batch_size_fn=lambda items: sum(rows_of(f) for f, _ in items))
        log.info("model %s ready on %s in this replica", cfg.name, self.backend)

    def describe(self) -> dict:
        return {"name": self.cfg.name, "backend": self.backend, "io": io_to_json(self.io),
                "source_dir": self.source_dir, "batchable": self.batchable, "pid": os.getpid()}

    async def infer(self, feeds: dict[str, np.ndarray]) -> dict:
        """{"outputs": {...}} or {"error": message, "status": http_status}; never raises for a bad request. The
        first request of each runner call also gets the call's "execution" record (see run_grouped)."""
        return await self._batched((feeds, time.perf_counter_ns()))

    async def _run_batch(self, items: list[tuple[dict[str, np.ndarray], int]]) -> list[dict]:
        runner = self._free.pop()  # max_concurrent_batches = runners, so one is always free here
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, run_grouped, runner, [f for f, _ in items], self.batchable,
                                              [t for _, t in items])
        finally:
            self._free.append(runner)

    def __del__(self):
        for runner in getattr(self, "_free", []):
            runner.close()


# -- the gateway: ppdeploy's server app over Ray handles ---------------------------------------------------

class RayModelBatcher:
    """Stands where `ppdeploy.serve.batcher.DynamicBatcher` stands in the server (same duck type: `io`, `loop`,
    `max_rows`, `batch_axis`, `infer`, `drain`, `close`), forwarding each request to the model's Ray deployment.

    Metrics are the replicas' own figures: each runner call's rows, compute stages and its requests' queue time
    (from reaching the replica to the call starting; the hop from the gateway is not in it) go to `observer.on_batch`
    once, from the reply that carries the call's record. `drain` refuses new requests and waits for those sent."""

    def __init__(self, cfg, handle, info: Mapping[str, Any], observer: Any = None):
        self.cfg = cfg
        self._observer = observer
        self._closing = False
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self.name = cfg.name
        self.io = io_from_json(info["io"])
        self._handle = handle
        self._shapes = cfg.shape_profile()
        self.batch_axis = bool(info["batchable"])
        self.max_rows = cfg.max_batch_size if self.batch_axis else 1
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def accepting(self) -> bool:
        return not self._closing and self.loop is not None

    @property
    def queue_depth(self) -> int:
        return self._in_flight

    def check(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = validate_inputs(self.io, feeds, self._shapes)
        rows = {n: a.shape[0] for n, a in feeds.items() if a.ndim}
        if len(set(rows.values())) > 1:
            raise InputError(f"inputs disagree on the batch size (dim 0): {rows}")
        if self.batch_axis and rows and max(rows.values()) > self.max_rows:
            raise InputError(f"batch of {max(rows.values())} exceeds max_batch_size {self.max_rows} of model "
                             f"'{self.name}'", hint="split the request, or raise max_batch_size in config.yaml")
        return feeds

    async def infer(self, feeds: Mapping[str, np.ndarray], *, timeout_ms: float | None = None,
                    disconnected: Any = None):

        if disconnected is not None and asyncio.iscoroutine(disconnected):
            disconnected.close()  # Ray cancels nothing on client disconnect; don't leave the coroutine unawaited
        if self._closing or self.loop is None:
            raise BatcherClosed(f"model '{self.name}' is not accepting requests (server shutting down)")
        checked = self.check(feeds)
        timeout_ms = self.cfg.dynamic_batching.default_timeout_ms if timeout_ms is None else timeout_ms
        self._in_flight += 1
        self._idle.clear()
        try:
            reply = await self._send(checked, timeout_ms)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        execution = reply.get("execution")
        timings = None
        if execution is not None:
            timings = BatchTimings(execution["size"], execution["requests"], execution["input_ns"],
                                   execution["infer_ns"], execution["output_ns"])
            if self._observer is not None:
                self._observer.on_batch(timings, execution["queue_ns"])
        if "error" in reply:
            if reply.get("status") == 400:
                raise InputError(reply["error"])
            raise InferenceFailed(f"model '{self.name}': {reply['error']}")
        queue_ns = execution["queue_ns"][0] if execution else 0
        return BatchResult(reply["outputs"], queue_ns, timings or BatchTimings(rows_of(checked), 1, 0, 0, 0))

    async def _send(self, checked: dict[str, np.ndarray], timeout_ms: float) -> dict:
        from ray.serve.exceptions import BackPressureError

        response = self._handle.infer.remote(checked)
        try:
            if timeout_ms and timeout_ms > 0:
                return await asyncio.wait_for(_await(response), timeout_ms / 1000.0)
            return await response
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestTimeout(f"model '{self.name}' did not answer within {timeout_ms:g} ms") from None
        except BackPressureError:
            raise QueueFull(f"model '{self.name}' is at its queue limit on every replica", 1) from None

    async def drain(self) -> None:
        """Stop accepting; return once every request already sent to the replicas has its answer."""
        self._closing = True
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        """Drain; the replicas themselves belong to Ray Serve (`serve.shutdown` stops them)."""
        await self.drain()


async def _await(response):
    return await response


def ray_model_host_class(app_name: str):
    """A `ppdeploy.serve.models.ModelHost` whose tensor models are Ray deployments of application `app_name`."""
    class RayModelHost(ModelHost):
        async def _load_model(self, loop, model) -> None:
            from ray import serve

            cfg = model.cfg
            try:
                handle = serve.get_deployment_handle(deployment_name(cfg.name), app_name=app_name)
                info = await handle.describe.remote()
                batcher = RayModelBatcher(cfg, handle, info, observer=model.metrics)
                await batcher.start()
            except Exception as exc:  # the model is unavailable; the gateway keeps serving the others
                model.state, model.reason = UNAVAILABLE, f"Ray deployment of '{cfg.name}': {exc}"
                log.error("model %s is unavailable: %s", cfg.name, model.reason)
                return
            source_dir = Path(info["source_dir"]) if info.get("source_dir") else None
            model.engine = LoadedEngine([], info["backend"], [], 0.0, None, source_dir)
            model.batcher = batcher
            model.state = READY
            model.metrics.set_ready(True)

    return RayModelHost


class GatewayASGI:
    """ASGI app of a gateway replica. It is pickled into every replica and builds ppdeploy's server app there on
    the first ASGI event (the lifespan startup), so model handles are resolved inside the replica; a plain
    object rather than a builder function keeps this working on Ray versions without ingress builders."""

    def __init__(self, configs: list, settings, app_name: str):
        self.configs = configs
        self.settings = settings
        self.app_name = app_name
        self._app = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_app": None}

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from ray import serve

            # The name the app was deployed under (`serve run` calls it "default"), not the one we would choose.
            app_name = serve.get_replica_context().app_name or self.app_name
            self._app = build_server_app(self.configs, self.settings, host_class=ray_model_host_class(app_name))
        await self._app(scope, receive, _picklable(send))


def _picklable(send):
    """Ray pickles every ASGI message a replica sends to its proxy; the app's zero-copy response bodies are
    memoryviews, which cannot be pickled, so they become bytes here (one copy, on the Ray path only)."""

    async def send_bytes(message) -> None:
        body = message.get("body")
        if isinstance(body, memoryview):
            message = {**message, "body": body.tobytes()}
        await send(message)

    return send_bytes


class GatewayReplica:
    """The ingress deployment's class; its routes are GatewayASGI's. It takes the model deployments as
    arguments only so that binding it deploys them."""

    def __init__(self, *model_deployments: Any):
        self.model_count = len(model_deployments)


# -- building the application ------------------------------------------------------------------------------

def build_app(configs: list, options: RayOptions | None = None, settings=None, *, app_name: str = APP_NAME,
              cache_dir: str | None = None):
    """The Serve application (`serve.run(build_app(...))`) for these model configs."""
    _, serve = require_ray()
    options = options or RayOptions()
    options.check()
    if not configs:
        raise ConfigError("nothing to serve: no model configs")
    settings = settings or ServerSettings()
    models = []
    for cfg in configs:
        if cfg.composite:
            continue  # pipelines run in the gateway over the model deployments
        deployment = serve.deployment(ModelReplica, **model_deployment_options(cfg, options))
        models.append(deployment.bind(cfg, cache_dir))
    ingress = serve.ingress(GatewayASGI(list(configs), settings, app_name))(GatewayReplica)
    # A bounded queue in front of the gateway: past it Ray answers 503 at once instead of letting requests wait
    # until clients time out (which, under overload, wastes the work done for them).
    queue = max(c.dynamic_batching.max_queue_size for c in configs)
    gateway = serve.deployment(ingress, name=GATEWAY, num_replicas=options.gateway_replicas,
                               ray_actor_options={"num_cpus": options.gateway_num_cpus},
                               max_ongoing_requests=max(64, settings.task_threads * 4), max_queued_requests=queue)
    return gateway.bind(*models)


def app_builder(args: Mapping[str, Any]):
    """For `serve run ppdeploy.serve.ray:app_builder repo=./models replicas=2` (or a Serve config file):
    args are `repo` (model repository) or `model` (zoo name / path / 'ocr'), and the RayOptions fields."""
    args = dict(args)
    unknown = set(args) - {"repo", "model", *(f.name for f in dataclasses.fields(RayOptions))}
    if unknown:
        raise ConfigError(f"unknown argument(s) {sorted(unknown)} for ppdeploy's Ray Serve app")
    configs = resolve_configs(args.pop("model", None), repo=args.pop("repo", None))
    fields = {f.name: f.type for f in dataclasses.fields(RayOptions)}
    typed = {k: (float(v) if "float" in str(fields[k]) else int(v)) for k, v in args.items()}
    return build_app(configs, RayOptions(**typed))


def start(configs: list, options: RayOptions, settings, *, address: str | None = None, num_cpus: int | None = None,
          app_name: str = APP_NAME, timeout_s: float = 600.0) -> str:
    """Start (or join) Ray, deploy, and wait until every model is loaded. Returns the base URL."""
    ray, serve = require_ray()
    application = build_app(configs, options, settings, app_name=app_name)
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application, name=app_name, route_prefix="/", blocking=False)
    url = f"http://{settings.host}:{settings.port}"
    _wait_ready(url, timeout_s)
    return url


def _wait_ready(url: str, timeout_s: float) -> None:
    """Serve reports the app RUNNING once replicas are constructed; the gateway loads model info after that."""
    if not wait_until_ready(url, timeout_s):
        raise PPDeployError(f"the Ray Serve app at {url} was not ready within {timeout_s:.0f} s",
                            hint="check the replica logs (ray logs / the Ray dashboard)")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run(configs: list, settings: ServerSettings, options: RayOptions, *, address: str | None = None) -> int:
    """`ppdeploy serve --ray ...`: deploy on Ray Serve and block until Ctrl-C or SIGTERM, then shut Serve down.
    `address`: the Ray cluster to join (None: start a local one). Port 0 picks a free port."""
    ray, serve = require_ray()
    if not settings.port:  # Serve's proxy needs a real port number
        settings = dataclasses.replace(settings, port=_free_port(settings.host))
    try:
        url = start(configs, options, settings, address=address)
        # `docker stop` / systemd: shut Serve and Ray down as on Ctrl-C. Set after ray.init, which installs a
        # SIGTERM handler of its own that aborts the process (leaving the cluster's processes behind).
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"ppdeploy on Ray Serve: {url}  (models: {', '.join(c.name for c in configs)}); Ctrl-C stops it",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    return 0


__all__ = ["GatewayASGI", "ModelReplica", "RayModelBatcher", "RayOptions", "app_builder", "build_app",
           "model_deployment_options", "require_ray", "run", "run_grouped", "start"]
