"""What the server holds: loaded tensor models (engine + batcher + metrics) and task pipelines on top of them.

`ModelHost` loads every model of the repository in the background (engines come from the engine cache, so a
restart loads instead of building), one at a time because builds are CPU-heavy. Each model becomes READY or
UNAVAILABLE with the reason; the others serve regardless. The server is ready once every model finished loading
(and, with strict readiness, every one of them is READY) — Triton's behaviour.

Building blocks reused by the Ray Serve variant: `load_engine(cfg)` (config -> runners, with backend fallback
along the config's list) and `build_task(cfg, runners_by_stage)` (task pipeline on any runner-like objects).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.backends.base import IOSpec, Runner
from ppdeploy.core.errors import ConfigError, PPDeployError
from ppdeploy.serve.batcher import BatchedRunner, BatcherSettings, DynamicBatcher
from ppdeploy.repository.config import ModelConfig
from ppdeploy.serve.metrics import ModelMetrics, ServerMetrics

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
    from ppdeploy.deploy.select import DEFAULT_CHAIN

    out: list[str] = []
    for name in cfg.backends:
        for b in (DEFAULT_CHAIN if name == "auto" else (name,)):
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
                shared: list[dict] | None = None) -> LoadedEngine:
    """Build (or take from the cache) and load `cfg.instance_count` runners of one model.

    `shared` (a worker of `ppdeploy serve --workers N` with engine_process: true): one entry per instance, the
    shared engine process the supervisor started ({"address", "backend", "attempts", "cache_hit", "seconds"}, or
    {"error"} when it could not start); the runners
    connect to those instead of loading anything (ppdeploy.serve.engine_process.connect_engine)."""
    from ppdeploy.deploy.load import load_model

    if cfg.task == "ocr":
        raise ConfigError(f"'{cfg.name}' is an OCR pipeline, not a model with an engine")
    source = cfg.source_path()
    if shared:
        return _connect_engines(cfg, source, shared)
    kwargs = load_model_kwargs(cfg, cache_dir)
    load = load_model
    if cfg.engine_process:
        from functools import partial

        from ppdeploy.serve.engine_process import load_model_in_process

        load = partial(load_model_in_process, label=cfg.name)
    start = time.perf_counter()
    first = load(source, backend=backend_chain(cfg), **kwargs)
    runners = [first.runner]
    try:
        for _ in range(cfg.instance_count - 1):  # the engine is cached now: these only load
            runners.append(load(source, backend=[first.backend], **kwargs).runner)
    except BaseException:
        for r in runners:
            r.close()
        raise
    return LoadedEngine(runners, first.backend, list(first.attempts), time.perf_counter() - start, first.cache_hit,
                        _source_dir(source))


def _source_dir(source: str | Path) -> Path:
    if isinstance(source, str):  # a zoo name
        from ppdeploy.source import zoo

        return zoo.model_dir(source)
    return source if source.is_dir() else source.parent


def _connect_engines(cfg: ModelConfig, source: str | Path, shared: list[dict]) -> LoadedEngine:
    from ppdeploy.serve.engine_process import connect_engine

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
               max_pixels: int | None = None):
    """The task pipeline of `cfg` on runner-like objects: {"det","rec"[,"cls"]} for ocr, {"model"} for classification."""
    options = dict(cfg.task_options)
    if cfg.task == "ocr":
        from ppdeploy.tasks.ocr.pipeline import OCR

        if max_pixels is not None:
            options.setdefault("max_pixels", max_pixels)
        return OCR.from_runners(det=runners["det"], rec=runners["rec"], cls=runners.get("cls"),
                                use_cls=runners.get("cls") is not None, rec_guard=runners.get("rec_guard"), **options)
    if cfg.task == "classification":
        from ppdeploy.tasks.classification.task import LABELS_FILE, PREPROCESS_FILE, Classifier

        if source_dir is not None:
            if "labels" not in options and (source_dir / LABELS_FILE).is_file():
                options["labels"] = source_dir / LABELS_FILE
            if "preprocess" not in options and (source_dir / PREPROCESS_FILE).is_file():
                options["preprocess"] = source_dir / PREPROCESS_FILE
        for key in ("labels", "preprocess"):  # relative paths in config.yaml are relative to its folder
            if isinstance(options.get(key), str) and not Path(options[key]).is_absolute():
                options[key] = cfg.base_dir / options[key]
        if max_pixels is not None:
            options.setdefault("max_pixels", max_pixels)
        return Classifier.from_runner(runners["model"], **options)
    raise ConfigError(f"model '{cfg.name}' has no task")


@dataclass
class ServedModel:
    """A tensor model served on /v2 (and, for task: classification, on /v1/classify too)."""

    cfg: ModelConfig
    metrics: ModelMetrics
    state: str = LOADING
    reason: str = ""
    engine: LoadedEngine | None = None
    batcher: DynamicBatcher | None = None
    labels: list[str] | None = None  # class names, for Triton's classification extension

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def io(self) -> IOSpec:
        assert self.batcher is not None
        return self.batcher.io


@dataclass
class TaskService:
    """An image-in, JSON-out pipeline: /v1/ocr or /v1/classify."""

    cfg: ModelConfig
    kind: str  # "ocr" | "classification"
    state: str = LOADING
    reason: str = ""
    pipeline: Any = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def run(self, image: bytes, max_pixels: int) -> dict:
        """Decode and run (blocking: call from a worker thread). ImageError for anything that is not an image
        within `max_pixels`."""
        from ppdeploy.tasks.image_io import load_image

        start = time.perf_counter()
        bgr = load_image(image, max_pixels=max_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        if self.kind == "ocr":
            result = self.pipeline.predict_bgr(bgr)
        else:
            result = self.pipeline.predict(bgr)
        out = {"model": self.name, **result.to_dict()}
        timings = out.get("timings_ms")
        if isinstance(timings, dict):
            timings["decode"] = round(decode_ms, 3)
            if "total" in timings:
                timings["total"] = round(timings["total"] + decode_ms, 3)
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
            if cfg.task == "ocr":
                self.tasks[cfg.name] = TaskService(cfg, "ocr")
                continue
            self.models[cfg.name] = ServedModel(cfg, metrics.model(cfg.name, cfg.version))
            self.models[cfg.name].metrics.set_ready(False)
            if cfg.task == "classification":
                self.tasks[cfg.name] = TaskService(cfg, "classification")
        self.loaded = False
        self._load_task: asyncio.Task | None = None
        self._load_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self.task_pool = concurrent.futures.ThreadPoolExecutor(options.task_threads, thread_name_prefix="task")

    # -- readiness ------------------------------------------------------------------------------------------
    def ready(self) -> bool:
        if not self.loaded:
            return False
        states = [m.state for m in self.models.values()] + [t.state for t in self.tasks.values()]
        if self.options.strict_readiness:
            return all(s == READY for s in states)
        return any(s == READY for s in states)

    def task_of(self, kind: str, name: str | None) -> TaskService:
        from ppdeploy.serve.kserve import ProtocolError

        candidates = {n: t for n, t in self.tasks.items() if t.kind == kind}
        if name is None:
            if len(candidates) == 1:
                return next(iter(candidates.values()))
            if not candidates:
                raise ModelNotFound(f"this server has no {kind} model")
            raise ProtocolError(f"this server has several {kind} models ({', '.join(sorted(candidates))}); "
                                f"name one: /v1/{'ocr' if kind == 'ocr' else 'classify'}/NAME")
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
        model.batcher = DynamicBatcher(cfg.name, engine.runners, BatcherSettings.from_config(cfg),
                                       shapes=cfg.shape_profile(), observer=model.metrics)
        await model.batcher.start()
        model.state = READY
        model.metrics.set_ready(True)
        log.info("model %s ready on %s (%.1f s, cache %s, instances %d)", cfg.name, engine.backend, engine.seconds,
                 "hit" if engine.cache_hit else "miss", len(engine.runners))

    def _build_task(self, task: TaskService) -> None:
        cfg = task.cfg
        try:
            if task.kind == "ocr":
                runners = {}
                for stage, ref in cfg.pipeline.items():
                    model = self.models[ref]
                    if model.state != READY:
                        raise PPDeployError(f"stage {stage} model '{ref}' is unavailable: {model.reason}")
                    runners[stage] = BatchedRunner(model.batcher)
                task.pipeline = build_task(cfg, runners, max_pixels=self.options.max_image_pixels)
            else:
                model = self.models[cfg.name]
                if model.state != READY:
                    raise PPDeployError(f"model '{cfg.name}' is unavailable: {model.reason}")
                task.pipeline = build_task(cfg, {"model": BatchedRunner(model.batcher)},
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
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] if text else type(exc).__name__


__all__ = ["HostOptions", "LOADING", "LoadedEngine", "ModelHost", "ModelNotFound", "ModelNotReady", "READY",
           "ServedModel", "TaskService", "UNAVAILABLE", "backend_chain", "build_task", "load_engine"]
