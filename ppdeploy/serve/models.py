"""What the server holds: loaded tensor models (engine + batcher + metrics) and task pipelines on top of them.

`ModelHost` loads every model of the repository in the background (engines come from the engine cache, so a
restart loads instead of building), one at a time because builds are CPU-heavy. Each model becomes READY or
UNAVAILABLE with the reason; the others serve regardless. The server is ready once every model finished loading
(and, with strict readiness, every one of them is READY) — Triton's behaviour.

Building blocks reused by the Ray Serve variant: `load_engine(cfg)` (config -> runners, with backend fallback
along the config's list) and `build_task(cfg, runners_by_role)` (the config's Task, ppdeploy.tasks.registry.TASKS,
on any runner-like objects). Nothing here knows a task by name: a registered task is served like the built-in ones.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ppdeploy.backends.base import Runner
from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.core.shapes import ShapeProfile
from ppdeploy.core.tensors import IOSpec
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.select import FAILED, USED, Attempt, default_chain, record
from ppdeploy.deploy.trial import describe, trial_inference
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.batcher import (
    BatchedRunner,
    BatcherSettings,
    DynamicBatcher,
    ServingError,
)
from ppdeploy.serve.engine_process.client import connect_engine, load_model_in_process
from ppdeploy.serve.kserve import ProtocolError
from ppdeploy.serve.metrics import ModelMetrics, ServerMetrics
from ppdeploy.source import zoo
from ppdeploy.tasks.base import Task, TaskContext

log = logging.getLogger("ppdeploy.serve")

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"  # Triton's model states


@dataclass
class LoadedEngine:
    runners: list[Runner]  # one per instance
    backend: str
    attempts: list[Any]  # ppdeploy.deploy.select.Attempt records of every backend tried
    seconds: float
    cache_hit: bool | None
    source_dir: Path | None  # folder of the source model (labels.txt / preprocess.yaml live there)

    @property
    def fallbacks(self) -> list[str]:
        """Backends tried before the one used (skipped or failed)."""
        return [a.backend for a in self.attempts if getattr(a, "status", "") != "used"]


def backend_chain(cfg: ModelConfig) -> str | list[str]:
    """The config's preference list as load_model takes it ("auto" inside a list expands to the default order)."""
    if cfg.backends == ["auto"]:
        return "auto"
    out: list[str] = []
    for name in cfg.backends:
        for b in (default_chain() if name == "auto" else (name,)):
            if b not in out:
                out.append(b)
    return out


def load_model_kwargs(cfg: ModelConfig, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What `ppdeploy.deploy.load.load_model` takes besides the source and the backend chain, from a model's config
    (also what the --workers supervisor hands to a shared engine process)."""
    return dict(precision=cfg.precision, shapes=cfg.shape_profile() or None, threads=cfg.threads,
                cache_dir=cache_dir, extra=cfg.backend_options or None, head=cfg.head,
                **({"precision_options": {"keep_fp32": list(cfg.keep_fp32)}} if cfg.keep_fp32 else {}))


def load_engine(cfg: ModelConfig, cache_dir: str | Path | None = None,
                shared: list[dict] | None = None, backends: list[str] | None = None) -> LoadedEngine:
    """Build (or take from the cache) and load `cfg.instance_count` runners of one model.

    `shared` (a worker of `ppdeploy serve --workers N` with engine_process: true): one entry per instance, the
    shared engine process the supervisor started ({"address", "backend", "attempts", "cache_hit", "seconds"}, or
    {"error"} when it could not start); the runners
    connect to those instead of loading anything (ppdeploy.serve.engine_process.client.connect_engine).
    `backends`: the chain to try instead of the config's (a demoted engine's next backends)."""
    if cfg.composite:
        raise ConfigError(f"'{cfg.name}' is a '{cfg.task}' pipeline over other models, not a model with an engine")
    source = cfg.source_path()
    if shared:
        return _connect_engines(cfg, source, shared)
    kwargs = load_model_kwargs(cfg, cache_dir)
    load = load_model
    if cfg.engine_process:
        load = partial(load_model_in_process, label=cfg.name)
    start = time.perf_counter()
    first = load(source, backend=backend_chain(cfg) if backends is None else backends, **kwargs)
    runners = [first.runner]
    try:
        for _ in range(cfg.instance_count - 1):  # the engine is cached now: these only load (and pass a trial)
            runners.append(load(source, backend=[first.backend], **kwargs).runner)
    except BaseException:
        for r in runners:
            r.close()
        raise
    return LoadedEngine(runners, first.backend, list(first.attempts), time.perf_counter() - start, first.cache_hit,
                        _source_dir(source))


def _source_dir(source: str | Path) -> Path:
    path = zoo.resolve(source) if isinstance(source, str) else source  # a zoo name: its folder, or its file
    return path if path.is_dir() else path.parent


def _connect_engines(cfg: ModelConfig, source: str | Path, shared: list[dict]) -> LoadedEngine:
    start = time.perf_counter()
    if "error" in shared[0]:  # the supervisor could not start it
        raise PPDeployError(shared[0]["error"])
    runners: list[Runner] = []
    try:
        for engine in shared:
            runners.append(connect_engine(engine["address"], label=cfg.name, shapes=cfg.shape_profile() or None).runner)
    except BaseException:
        for r in runners:
            r.close()
        raise
    first = shared[0]
    seconds = first.get("seconds", 0.0) + time.perf_counter() - start  # the supervisor's load, then the connects
    return LoadedEngine(runners, first["backend"], list(first.get("attempts") or []), seconds, first.get("cache_hit"),
                        _source_dir(source))


def build_task(cfg: ModelConfig, runners: Mapping[str, Any], *, source_dir: Path | None = None,
               max_pixels: int | None = None) -> Task:
    """The Task of `cfg` on runner-like objects, one per role (ocr: {"det","rec"[,"cls"][,"rec_guard"]};
    classification: {"model"})."""
    task = cfg.task_class
    if task is None:
        raise ConfigError(f"model '{cfg.name}' has no task")
    return task.initialize(runners, cfg.task_options, TaskContext(source_dir, cfg.base_dir, max_pixels))


class EngineDemoted(ServingError):
    """A request that reached an engine found broken at run time: answered 503 while the model reloads."""

    status = 503


class Failover:
    """The engines of one served model behind a switch, so a broken one can be replaced under a running batcher.

    A call that raises anything but a PPDeployError (those are the request's, or already classified, e.g. a dead
    engine process) is checked: the same runner runs its trial input (ppdeploy.deploy.trial). If that fails too,
    the engine is broken: `on_fault(backend, reason)` is called once, this call and every later one answer
    EngineDemoted (503) at once, until `swap` puts the next backend's runners in. If the trial passes, the failure
    was this request's and is raised as it was (a bad request cannot demote a model)."""

    def __init__(self, cfg: ModelConfig, backend: str, on_fault: Callable[[str, str], None]):
        self.cfg, self.backend, self._on_fault = cfg, backend, on_fault
        self.broken: str | None = None
        self.members: list[FailoverRunner] = []
        self._cond = threading.Condition()
        self._active: collections.Counter = collections.Counter()  # id(runner) -> calls inside it now

    def call(self, member: "FailoverRunner", borrowed: bool, feeds) -> dict[str, np.ndarray]:
        with self._cond:
            if self.broken is not None:
                raise self._refusal()
            runner = member.inner
            self._active[id(runner)] += 1
        try:
            return (runner.infer_borrowed if borrowed else runner.infer)(feeds)
        except PPDeployError:
            raise
        except Exception as exc:
            if not self._fails_trial(runner):
                raise
            self._fault(describe(exc))
            raise self._refusal() from exc
        finally:
            with self._cond:
                self._active[id(runner)] -= 1
                self._cond.notify_all()

    def _fails_trial(self, runner: Runner) -> bool:
        try:
            trial_inference(runner, self.cfg.shape_profile() or None)
        except Exception as exc:
            log.warning("model %s: the %s engine also fails its trial input: %s", self.cfg.name, self.backend, exc)
            return True
        return False

    def _fault(self, reason: str) -> None:
        with self._cond:
            if self.broken is not None:
                return
            self.broken = reason
        self._on_fault(self.backend, reason)

    def _refusal(self) -> EngineDemoted:
        return EngineDemoted(f"model '{self.cfg.name}': its {self.backend} engine failed ({self.broken}); it is being "
                             "reloaded on the next backend of its chain, retry shortly")

    def swap(self, runners: list[Runner], backend: str) -> list[Runner]:
        """Put `runners` (one per member) in; return the old ones (close them with close_when_idle)."""
        with self._cond:
            old = [m.inner for m in self.members]
            for member, runner in zip(self.members, runners):
                member.inner = runner
            self.backend, self.broken = backend, None
        return old

    def close_when_idle(self, runners: list[Runner], timeout_s: float = 60.0) -> None:
        """Close `runners` once no call is inside any of them (or after `timeout_s`)."""
        with self._cond:
            self._cond.wait_for(lambda: all(self._active[id(r)] <= 0 for r in runners), timeout_s)
            for r in runners:
                self._active.pop(id(r), None)
        for r in runners:
            try:
                r.close()
            except Exception:  # a broken engine may fail to free itself; it is out of service either way
                log.exception("closing a demoted %s runner of %s failed", self.backend, self.cfg.name)


class FailoverRunner(Runner):
    """One instance of a served model as the batcher sees it: the current engine's runner, through its Failover."""

    backend = "failover"

    def __init__(self, inner: Runner, failover: Failover):
        self.inner = inner
        self._failover = failover
        failover.members.append(self)
        super().__init__(inner.io, None)

    @property
    def last_timings(self) -> dict[str, float]:  # type: ignore[override]
        return self.inner.last_timings

    @last_timings.setter
    def last_timings(self, value: dict[str, float]) -> None:
        pass  # the engine's own runner keeps them

    def infer(self, feeds) -> dict[str, np.ndarray]:
        return self._failover.call(self, False, feeds)

    def infer_borrowed(self, feeds) -> dict[str, np.ndarray]:
        return self._failover.call(self, True, feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.infer(feeds)

    def close(self) -> None:
        self.inner.close()


class ProfiledBatchedRunner(BatchedRunner):
    """A BatchedRunner that knows its model's shape profile (`shapes`), so a task can size its inputs to it (OCR
    rec squeezes an unusually wide line to the profile's widest instead of sending a request that gets a 400)."""

    def __init__(self, batcher: DynamicBatcher, shapes: ShapeProfile | None):
        super().__init__(batcher)
        self._profile = shapes or ShapeProfile()  # not _shapes: the batcher checks each chunk of a call itself

    @property
    def shapes(self) -> ShapeProfile:
        return self._profile


@dataclass
class ServedModel:
    """A tensor model served on /v2 (and, with a task such as classification, on /v1/<route> too)."""

    cfg: ModelConfig
    metrics: ModelMetrics
    state: str = LOADING
    reason: str = ""
    engine: LoadedEngine | None = None
    batcher: DynamicBatcher | None = None
    labels: list[str] | None = None  # class names, for Triton's classification extension
    failover: Failover | None = None  # what demotes the engine when it breaks at run time

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def io(self) -> IOSpec:
        assert self.batcher is not None
        return self.batcher.io


@dataclass
class TaskService:
    """A request-in, JSON-out task (/v1/<route>): the config's Task class and, once built, its instance."""

    cfg: ModelConfig
    task: type[Task]
    state: str = LOADING
    reason: str = ""
    pipeline: Task | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def run(self, body: bytes, content_type: str, max_pixels: int) -> dict:
        """Decode, execute and encode one request (blocking: call from a worker thread). InputError (ImageError for
        images) for a body the task cannot take; the answer's timings_ms get this decode's time."""
        start = time.perf_counter()
        item = self.task.decode(body, content_type, max_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        [result] = self.pipeline.execute([item])
        out = {"model": self.name, **self.pipeline.encode(result)}
        timings = out.get("timings_ms")
        if isinstance(timings, dict):
            before = timings.get("decode", 0.0)  # the task's own decode of an already-decoded input
            timings["decode"] = round(decode_ms, 3)
            if "total" in timings:
                timings["total"] = round(timings["total"] - before + decode_ms, 3)
        return out


@dataclass
class HostOptions:
    cache_dir: str | Path | None = None
    strict_readiness: bool = True
    max_image_pixels: int = 50_000_000
    task_threads: int = 4
    # model name -> its shared engine processes (one per instance), set in the workers of --workers N when models
    # have engine_process: true (see load_engine's `shared`)
    shared_engines: dict[str, list[dict]] = field(default_factory=dict)


class ModelHost:
    def __init__(self, configs: list[ModelConfig], metrics: ServerMetrics, options: HostOptions = HostOptions()):
        self.options = options
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        self.tasks: dict[str, TaskService] = {}
        for cfg in configs:
            task = cfg.task_class
            if task is not None:
                self.tasks[cfg.name] = TaskService(cfg, task)
            if cfg.composite:
                continue  # its roles are the other models of the repository
            self.models[cfg.name] = ServedModel(cfg, metrics.model(cfg.name, cfg.version))
            self.models[cfg.name].metrics.set_ready(False)
        self.loaded = False
        self._load_task: asyncio.Task | None = None
        self._load_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._demotions: set[asyncio.Future] = set()  # running reloads (a reference keeps each alive)
        self._demotion_counter = metrics.engine_demotions
        self.task_pool = concurrent.futures.ThreadPoolExecutor(options.task_threads, thread_name_prefix="task")

    # -- readiness ------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        if not self.loaded:
            return False
        states = [m.state for m in self.models.values()] + [t.state for t in self.tasks.values()]
        if self.options.strict_readiness:
            return all(s == READY for s in states)
        return any(s == READY for s in states)

    def tensor_model(self, name: str, version: str | None = None, need_ready: bool = True) -> ServedModel:
        """The /v2 model `name` (at `version`, if given), or ModelNotFound / ModelNotReady saying why not. HTTP and
        gRPC both look models up here, so both answer with the same words."""
        model = self.models.get(name)
        if model is None:
            if name in self.tasks:
                raise ModelNotFound(f"'{name}' is a task pipeline, not a tensor model; POST to "
                                    f"/v1/{self.tasks[name].task.route}/{name}")
            raise ModelNotFound(f"unknown model '{name}'" + (f"; this server has {', '.join(sorted(self.models))}"
                                                          if self.models else ""))
        if version and version != model.cfg.version:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (available: {model.cfg.version})")
        if need_ready and model.state != READY:
            why = "is still loading" if model.state == LOADING else f"is unavailable: {model.reason}"
            raise ModelNotReady(f"model '{name}' {why}")
        return model

    def task_of(self, task: type[Task], name: str | None) -> TaskService:
        """The service of `task` named `name` (None: the only one there is)."""
        kind = task.name
        candidates = {n: t for n, t in self.tasks.items() if t.task.name == kind}
        if name is None:
            if len(candidates) == 1:
                return next(iter(candidates.values()))
            if not candidates:
                raise ModelNotFound(f"this server has no {kind} model")
            raise ProtocolError(f"this server has several {kind} models ({', '.join(sorted(candidates))}); "
                                f"name one: /v1/{task.route}/NAME")
        if name not in candidates:
            raise ModelNotFound(f"no {kind} model named '{name}' (have: {', '.join(sorted(candidates)) or 'none'})")
        return candidates[name]

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load_all(), name="load-models")

    async def wait_loaded(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load_all(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for model in self.models.values():
                await self._load_model(loop, model)
                _restore_signal_handlers()
            for task in self.tasks.values():
                self._build_task(task)
        finally:
            self.loaded = True
            log.info("models loaded: %s", ", ".join(f"{n}={m.state}" for n, m in {**self.models, **self.tasks}.items()))

    async def _load_model(self, loop, model: ServedModel) -> None:
        cfg = model.cfg
        try:
            engine = await loop.run_in_executor(self._load_pool, load_engine, cfg, self.options.cache_dir,
                                                self.options.shared_engines.get(cfg.name))
        except Exception as exc:  # any failure makes this model unavailable, never the server
            model.state, model.reason = UNAVAILABLE, _one_line(exc)
            self._count_failed(cfg.name, exc)
            if not isinstance(exc, PPDeployError):
                log.exception("loading model %s failed", cfg.name)
            else:
                log.error("model %s is unavailable: %s", cfg.name, model.reason)
            return
        model.engine = engine
        for runner in engine.runners:  # engine_process: true (a shared engine's restarts the supervisor counts)
            if cfg.name in self.options.shared_engines:
                runner.on_call = model.metrics.on_engine_call
            elif hasattr(runner, "on_restart"):
                runner.on_restart = self.metrics.engine_process_restarts.labels(cfg.name).inc
        model.metrics.record_load(engine.backend, engine.seconds, engine.cache_hit, engine.fallbacks)
        runners = engine.runners
        if cfg.name not in self.options.shared_engines:  # a shared engine is the supervisor's to restart
            model.failover = Failover(cfg, engine.backend, partial(self._on_engine_fault, loop, model))
            runners = [FailoverRunner(r, model.failover) for r in runners]
        model.batcher = DynamicBatcher(cfg.name, runners, BatcherSettings.from_config(cfg),
                                       shapes=cfg.shape_profile(), observer=model.metrics)
        await model.batcher.start()
        model.state = READY
        model.metrics.set_ready(True)
        log.info("model %s ready on %s (%.1f s, cache %s, instances %d)", cfg.name, engine.backend, engine.seconds,
                 "hit" if engine.cache_hit else "miss", len(engine.runners))

    def _count_failed(self, model: str, exc: BaseException) -> None:
        """Count in the fallback metric every backend a failed load tried (load_model's error carries them)."""
        for attempt in getattr(exc, "attempts", ()):
            if attempt.status != USED:
                self.metrics.fallbacks.labels(model, attempt.backend).inc()

    # -- run-time demotion -----------------------------------------------------------------------------------
    def _on_engine_fault(self, loop: asyncio.AbstractEventLoop, model: ServedModel, backend: str, reason: str) -> None:
        """Called once per fault, from the thread whose call found the engine broken."""
        def start() -> None:
            task = asyncio.ensure_future(self._demote(model, backend, reason))
            self._demotions.add(task)
            task.add_done_callback(self._demotions.discard)

        loop.call_soon_threadsafe(start)

    async def _demote(self, model: ServedModel, backend: str, reason: str) -> None:
        """Take `model` off its broken engine and reload it on the backends after `backend` in its chain."""
        cfg, loop = model.cfg, asyncio.get_running_loop()
        fault = Attempt(backend, FAILED, f"engine failed at run time: {reason}")
        record(fault)
        self.metrics.fallbacks.labels(cfg.name, backend).inc()
        self._demotion_counter.labels(cfg.name, backend).inc()
        chain = backend_chain(cfg)
        chain = list(default_chain()) if chain == "auto" else chain
        rest = chain[chain.index(backend) + 1:] if backend in chain else []
        model.state, model.reason = LOADING, f"engine on {backend} failed at run time ({reason}); reloading"
        model.metrics.set_ready(False)
        log.error("model %s: the %s engine failed at run time (%s); reloading on %s", cfg.name, backend, reason,
                  ", ".join(rest) or "nothing (no backend left)")
        try:
            if not rest:
                raise PPDeployError(f"no backend after {backend} in the chain of '{cfg.name}'")
            engine = await loop.run_in_executor(self._load_pool, load_engine, cfg, self.options.cache_dir, None, rest)
        except Exception as exc:
            self._count_failed(cfg.name, exc)
            model.state = UNAVAILABLE
            model.reason = f"engine on {backend} failed at run time ({reason}); no other backend loads: {_one_line(exc)}"
            log.error("model %s is unavailable: %s", cfg.name, model.reason)
            return
        old = model.failover.swap(engine.runners, engine.backend)
        await loop.run_in_executor(self._load_pool, model.failover.close_when_idle, old)
        engine.attempts = [*(model.engine.attempts if model.engine else []), fault, *engine.attempts]
        model.engine = engine
        model.metrics.record_load(engine.backend, engine.seconds, engine.cache_hit, [])
        model.state, model.reason = READY, ""
        model.metrics.set_ready(True)
        log.warning("model %s serves again, on %s", cfg.name, engine.backend)

    def _build_task(self, task: TaskService) -> None:
        cfg = task.cfg
        try:
            if cfg.composite:
                runners = {}
                for stage, ref in cfg.pipeline.items():
                    model = self.models[ref]
                    if model.state != READY:
                        raise PPDeployError(f"stage {stage} model '{ref}' is unavailable: {model.reason}")
                    runners[stage] = ProfiledBatchedRunner(model.batcher, model.cfg.shape_profile())
                task.pipeline = build_task(cfg, runners, max_pixels=self.options.max_image_pixels)
            else:
                model = self.models[cfg.name]
                if model.state != READY:
                    raise PPDeployError(f"model '{cfg.name}' is unavailable: {model.reason}")
                task.pipeline = build_task(cfg, {task.task.roles[0]: ProfiledBatchedRunner(model.batcher,
                                                                                         cfg.shape_profile())},
                                           source_dir=model.engine.source_dir if model.engine else None,
                                           max_pixels=self.options.max_image_pixels)
                model.labels = getattr(task.pipeline, "labels", None)
            task.state = READY
        except Exception as exc:
            task.state, task.reason = UNAVAILABLE, _one_line(exc)
            if not isinstance(exc, PPDeployError):
                log.exception("building task %s failed", cfg.name)
            else:
                log.error("task %s is unavailable: %s", cfg.name, task.reason)

    async def close(self) -> None:
        """Drain every batcher (answers everything queued and running), then free engines and threads."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            try:
                await self._load_task
            except (asyncio.CancelledError, Exception):
                pass
        for reload in list(self._demotions):
            reload.cancel()
        self.task_pool.shutdown(wait=True)
        for model in self.models.values():
            if model.batcher is not None:
                await model.batcher.close()
        self._load_pool.shutdown(wait=False, cancel_futures=True)


class ModelNotFound(PPDeployError):
    status = 404


class ModelNotReady(PPDeployError):
    status = 503


def _restore_signal_handlers() -> None:
    """Re-arm Python's handlers for SIGTERM/SIGINT at the C level.

    Importing Paddle (which loading a model may do, in a worker thread) installs Paddle's own C++ handlers,
    which print a traceback and kill the process on SIGTERM: the server would die instead of draining.
    Setting the Python handler again puts Python's (and so uvicorn's) handling back in place.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] if text else type(exc).__name__


__all__ = ["EngineDemoted", "Failover", "FailoverRunner", "HostOptions", "LOADING", "LoadedEngine", "ModelHost", "ModelNotFound", "ModelNotReady", "READY",
           "ProfiledBatchedRunner", "ServedModel", "TaskService", "UNAVAILABLE", "backend_chain", "build_task", "load_engine"]
