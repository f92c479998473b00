"""`ppdeploy serve --workers N`: N HTTP worker processes behind one port.

One server process tops out where its per-request Python work fills one GIL, however fast the engine is
(BENCHMARKS.md). With N >= 2 the process `ppdeploy serve` started becomes a supervisor that serves nothing and
never imports an engine library: it binds the port and starts N workers, each a fresh interpreter (never a fork)
running the single-process server's app. Sockets (PPDEPLOY_WORKER_SOCKET): `reuseport` (default), one
SO_REUSEPORT socket per worker, the kernel spreads connections; `shared`, one socket whose workers race to accept.

Engines: each worker loads its own (worker 0 first, so the others load the engine cache), or, for a model with
`engine_process: true`, the supervisor starts one shared engine process per model instance
(ppdeploy.serve.engine_process.SharedEngine) that merges the workers' calls, and restarts one that died.
SIGTERM drains every worker (ppdeploy.serve.runtime.run_app), then the engines close; a worker that dies is
restarted (ppdeploy_worker_restarts_total). Each worker answers its siblings on a private unix socket, so
/metrics, stats and readiness cover the whole server (ServerMetrics.merged).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppdeploy.core.errors import ConfigError
from ppdeploy.serve.app import build_app
from ppdeploy.serve.engine_process import SharedEngine, child_env, exit_text
from ppdeploy.serve.logs import configure_logging
from ppdeploy.serve.metrics import ServerMetrics
from ppdeploy.serve.models import ModelHost, backend_chain, load_model_kwargs
from ppdeploy.serve.runtime import bind_socket, run_app

log = logging.getLogger("ppdeploy.serve")

MAX_WORKERS = 128
SOCKET_MODES = ("reuseport", "shared")
STATE_TIMEOUT_S = 2.0  # a sibling that does not answer within this is left out (and the server is not ready)
POLL_S = 0.2  # how often the supervisor looks at its workers
ENGINE_POLL_S = 0.5  # ... and at the shared engine processes
QUICK_EXIT_S = 10.0  # a worker that dies sooner than this after its start counts as a failed start
GIVE_UP_AFTER = 5  # consecutive failed starts of one worker before the supervisor stops the server
SUPERVISOR_FILE = "supervisor.json"  # the supervisor's own counters, for the workers' merged /metrics
_WORKER_ENTRY = "from ppdeploy.serve.workers import worker_main; raise SystemExit(worker_main())"


def check_workers(workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}",
                          hint="1 (the default) serves from this process; 2 or more start that many HTTP workers")


def socket_mode() -> str:
    mode = os.environ.get("PPDEPLOY_WORKER_SOCKET", "reuseport")
    if mode not in SOCKET_MODES:
        raise ConfigError(f"PPDEPLOY_WORKER_SOCKET must be {' or '.join(SOCKET_MODES)}, got '{mode}'")
    if mode == "reuseport" and not hasattr(socket, "SO_REUSEPORT"):
        return "shared"
    return mode


def uses_shared_engines(configs: list) -> bool:
    return any(c.engine_process and not c.composite for c in configs)


@dataclass
class WorkerSpec:
    """What a worker needs (pickled to its stdin)."""

    index: int
    count: int
    run_dir: str
    configs: list  # ModelConfig
    settings: Any  # ServerSettings with worker_id set
    access_log: bool
    log_level: int
    shared_engines: dict[str, list[dict]]
    supervisor_pid: int
    listen_fd: int  # the listening socket's fd number, the same in the worker (pass_fds)


# ---------------------------------------------------------------------------------------------------------
# In each worker
# ---------------------------------------------------------------------------------------------------------
def worker_main() -> int:
    spec: WorkerSpec = pickle.loads(sys.stdin.buffer.read())
    if not _exit_with_parent(spec.supervisor_pid):
        return 1
    logging.basicConfig(level=spec.log_level, format=f"%(levelname)s %(name)s[w{spec.index}]: %(message)s")
    configure_logging(spec.access_log)

    def host(configs, metrics, options):
        return ModelHost(configs, metrics, dataclasses.replace(options, shared_engines=spec.shared_engines))

    app = build_app(spec.configs, spec.settings, host_class=host)
    handlers, model_host, metrics = app.state.handlers, app.state.host, app.state.metrics

    def state(with_metrics: bool = True) -> dict:
        out = {"worker": spec.index, "pid": os.getpid(), "loaded": model_host.loaded,
               "ready": model_host.ready() and not handlers.draining}
        if with_metrics:
            out["metrics"] = metrics.snapshot()
        return out

    peers = Peers(spec.run_dir, spec.index, spec.count, state)
    handlers.peers = peers
    sock = socket.socket(fileno=spec.listen_fd)
    log.info("worker %d started (pid %d)", spec.index, os.getpid())
    try:
        return run_app(app, sock, spec.settings, on_started=peers.serve)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(peer_path(spec.run_dir, spec.index))
        if os.getppid() != spec.supervisor_pid:  # the supervisor died: nobody else will remove its folder
            shutil.rmtree(spec.run_dir, ignore_errors=True)


def _exit_with_parent(supervisor_pid: int) -> bool:
    """SIGTERM (a drain) when the supervisor dies, however it dies; False if it is already gone."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watcher thread below does it
        def watch() -> None:
            while os.getppid() == supervisor_pid:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
    return os.getppid() == supervisor_pid  # it may have died before prctl took effect


def peer_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"worker{index}.sock")


class Peers:
    """A worker's view of its siblings: its own state served on a unix socket, theirs asked for on demand."""

    def __init__(self, run_dir: str, index: int, count: int, local_state: Callable[[bool], dict]):
        self.run_dir, self.index, self.count = run_dir, index, count
        self.local_state = local_state
        self._server: asyncio.AbstractServer | None = None

    async def serve(self) -> None:
        path = peer_path(self.run_dir, self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(self._answer, path)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            what = await reader.readline()  # b"state\n" (everything) or b"ready\n" (no metrics: health checks)
            # Taken on the event loop, where every counter is updated: a consistent snapshot.
            writer.write(json.dumps(self.local_state(what != b"ready\n"), separators=(",", ":")).encode())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _ask(self, index: int, what: bytes = b"state\n") -> dict | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(peer_path(self.run_dir, index)), STATE_TIMEOUT_S)
            try:
                writer.write(what)
                data = await asyncio.wait_for(reader.read(), STATE_TIMEOUT_S)
            finally:
                writer.close()
            return json.loads(data)
        except (OSError, asyncio.TimeoutError, ValueError):
            return None  # restarting, or gone

    async def states(self, with_metrics: bool = True) -> list[dict | None]:
        """This worker's state first, then each sibling's (None: did not answer)."""
        others = [i for i in range(self.count) if i != self.index]
        what = b"state\n" if with_metrics else b"ready\n"
        answers = await asyncio.gather(*(self._ask(i, what) for i in others))
        return [self.local_state(with_metrics), *answers]

    async def all_ready(self) -> bool:
        return all(s is not None and s["ready"] for s in await self.states(with_metrics=False))

    async def merged_metrics(self):

        states = [s for s in await self.states() if s is not None]
        extra = [["ppdeploy_workers_answering", "gauge", "Worker processes whose counts this scrape includes",
                  [["ppdeploy_workers_answering", {}, float(len(states))]]]]
        try:
            extra += json.loads(Path(self.run_dir, SUPERVISOR_FILE).read_text())["families"]
        except (OSError, ValueError, KeyError):
            pass
        return ServerMetrics.merged([s["metrics"] for s in states], extra)


def ask_state(run_dir: str, index: int, timeout_s: float = STATE_TIMEOUT_S) -> dict | None:
    """A worker's state without its metrics, from outside its event loop (the supervisor, tests)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(peer_path(run_dir, index))
            s.sendall(b"ready\n")
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------
# The supervisor
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive quick exits
    next_start: float = 0.0


def serve_workers(configs: list, settings, announce: Callable[[str], None] | None = None) -> int:
    """Run `settings.workers` HTTP workers on one port until SIGTERM/SIGINT; returns the exit code."""
    check_workers(settings.workers)
    if settings.workers < 2:
        raise ConfigError("serve_workers needs at least 2 workers (1 is the single-process server)")
    return Supervisor(configs, settings, announce).run()


class Supervisor:
    def __init__(self, configs: list, settings, announce: Callable[[str], None] | None = None):
        self.configs = configs
        self.settings = settings
        self.announce = announce or (lambda m: print(m, file=sys.stderr, flush=True))
        self.mode = socket_mode()
        self.workers = [_Worker(i) for i in range(settings.workers)]
        self.worker_restarts = 0
        self.engines: dict[str, list] = {}  # model -> SharedEngine per instance (mode 2)
        self.shared_engines: dict[str, list[dict]] = {}
        self.engine_restarts: dict[str, int] = {}
        self._signals: list[int] = []
        self._wake = threading.Event()
        self._first_loaded = False
        self._gave_up: str | None = None
        self.run_dir = ""
        self._listener: socket.socket | None = None  # shared mode: the socket; reuseport: holds the port
        self.host = self.port = None

    # -- main loop --------------------------------------------------------------------------------------------
    def run(self) -> int:

        if self.mode == "reuseport" and self.settings.port != 0:
            # SO_REUSEPORT would let this server join another one's group on a port already in use (same user) and
            # split its traffic: a plain bind first fails there as the single-process server does.
            bind_socket(self.settings.host, self.settings.port).close()
        self._listener = bind_socket(self.settings.host, self.settings.port, reuse_port=self.mode == "reuseport")
        self.host, self.port = self._listener.getsockname()[:2]
        base = None if len(tempfile.gettempdir()) < 60 else "/tmp"  # unix socket paths must stay short
        self.run_dir = tempfile.mkdtemp(prefix="ppdeploy-serve-", dir=base)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.announce(f"ppdeploy serve: listening on http://{shown}:{self.port} ({len(self.configs)} model(s) "
                      f"loading, {len(self.workers)} workers, {self.mode} sockets)")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._write_counters()
            if uses_shared_engines(self.configs):
                self._start_engines()
            self._monitor()
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_workers()
            self._close_engines()
            if self._listener is not None:
                self._listener.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, sig, frame) -> None:
        self._signals.append(sig)
        self._wake.set()

    def _monitor(self) -> None:
        last_engine_check = time.monotonic()
        while not self._signals and self._gave_up is None:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    self._on_worker_exit(w, now)
                if w.proc is None and now >= w.next_start and (w.index == 0 or self._first_loaded):
                    self._spawn(w)
            if not self._first_loaded:
                state = ask_state(self.run_dir, 0, 0.5) if self.workers[0].proc is not None else None
                self._first_loaded = bool(state and state["loaded"])
            if self.engines and now - last_engine_check >= ENGINE_POLL_S:
                self._check_engines()
                last_engine_check = time.monotonic()
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _on_worker_exit(self, w: _Worker, now: float) -> None:
        code, pid = w.proc.returncode, w.proc.pid
        w.proc = None
        self.worker_restarts += 1
        self._write_counters()
        if now - w.started_at < QUICK_EXIT_S:
            w.failures += 1
        else:
            w.failures = 0
        if w.failures >= GIVE_UP_AFTER:
            self._gave_up = f"worker {w.index} exited {w.failures} times in a row within {QUICK_EXIT_S:.0f} s of starting"
            log.error("%s (last exit: %s); stopping the server", self._gave_up, exit_text(code))
            return
        delay = 0.0 if w.failures == 0 else min(10.0, 0.25 * 2 ** w.failures)
        w.next_start = now + delay
        log.warning("worker %d (pid %d) exited unexpectedly (%s); starting it again%s", w.index, pid, exit_text(code),
                    f" in {delay:.1f} s" if delay else "")

    def _spawn(self, w: _Worker) -> None:

        sock = (self._listener if self.mode == "shared"
                else bind_socket(self.settings.host, self.port, reuse_port=True))
        spec = WorkerSpec(w.index, len(self.workers), self.run_dir, self.configs,
                          dataclasses.replace(self.settings, worker_id=w.index, port=self.port),
                          logging.getLogger("ppdeploy.access").isEnabledFor(logging.INFO),
                          logging.getLogger().level, self.shared_engines, os.getpid(), sock.fileno())
        env = child_env()
        try:
            # Its own session: a terminal's Ctrl+C reaches the supervisor only, which passes it on as a drain
            # (SIGINT straight from the terminal plus the supervisor's would be two, and a second skips the drain).
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_ENTRY], stdin=subprocess.PIPE,
                                    pass_fds=[sock.fileno()], env=env, start_new_session=True)
            try:
                proc.stdin.write(pickle.dumps(spec))
                proc.stdin.close()
            except OSError:  # it died at once; the monitor sees the exit
                pass
        finally:
            if sock is not self._listener:
                sock.close()  # the worker holds the only copy: its death takes it out of the port's group
        w.proc, w.started_at = proc, time.monotonic()
        log.info("worker %d: pid %d", w.index, proc.pid)

    # -- stopping ---------------------------------------------------------------------------------------------
    def _shutdown(self) -> int:
        if self.mode == "shared" and self._listener is not None:
            self._listener.close()  # with the workers' copies closing, new connections are refused
            self._listener = None
        if not self._signals:  # the supervisor gave up: stop the workers it has
            self._signals.append(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 30.0
        clean = self._gave_up is None
        forwarded = 0
        while any(w.proc is not None for w in self.workers):
            while forwarded < len(self._signals):
                # The first signal, SIGTERM or SIGINT, becomes SIGTERM: a drain, and uvicorn's re-raise of it is a
                # no-op in run_app (a re-raised SIGINT would end the worker in KeyboardInterrupt). A second one
                # becomes SIGINT, which makes uvicorn stop waiting for connections, as a second Ctrl+C does.
                sig = signal.SIGTERM if forwarded == 0 else signal.SIGINT
                forwarded += 1
                for w in self.workers:
                    if w.proc is not None:
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.send_signal(sig)
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    # SIGTERM/SIGINT killed a worker that had not yet installed uvicorn's handlers: it had
                    # accepted nothing, so nothing was lost.
                    if w.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                        log.error("worker %d exited with %s while draining", w.index, exit_text(w.proc.returncode))
                        clean = False
                    w.proc = None
            if time.monotonic() > deadline:
                log.error("workers still running %.0f s after the signal: killing them",
                          self.settings.drain_timeout_s + 30.0)
                clean = False
                break
            self._wake.wait(0.05)
            self._wake.clear()
        return 0 if clean else 1

    def _kill_workers(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            w.proc = None

    # -- shared engines (mode 2) ------------------------------------------------------------------------------
    def _start_engines(self) -> None:

        for cfg in self.configs:
            if not cfg.engine_process or cfg.composite:
                continue
            kwargs = load_model_kwargs(cfg, self.settings.cache_dir)
            engines: list = []
            started = time.perf_counter()
            try:
                for i in range(cfg.instance_count):
                    backend = backend_chain(cfg) if i == 0 else [engines[0].backend]
                    engines.append(SharedEngine.start(cfg.source_path(), backend=backend, label=cfg.name,
                                                      max_batch_size=cfg.max_batch_size, **kwargs))
            except Exception as exc:  # that model is unavailable (its workers say why), the others serve
                for e in engines:
                    e.close()
                reason = " ".join(str(exc).split())[:500] or type(exc).__name__
                log.error("shared engine of %s could not start: %s", cfg.name, reason)
                self.shared_engines[cfg.name] = [{"error": reason}]
                continue
            self.engines[cfg.name] = engines
            self.engine_restarts[cfg.name] = 0
            self.shared_engines[cfg.name] = [
                {"address": e.address, "backend": e.backend, "attempts": list(e.attempts or []), "cache_hit": e.cache_hit,
                 "seconds": time.perf_counter() - started} for e in engines]
            log.info("shared engine of %s: %s", cfg.name, ", ".join(f"pid {e.pid}" for e in engines))
            if self._signals:
                return

    def _check_engines(self) -> None:
        changed = False
        for name, engines in self.engines.items():
            for e in engines:
                before = e.restarts
                try:
                    e.ensure_running()
                except Exception as exc:  # its clients get errors until a later poll manages
                    log.error("shared engine of %s could not be restarted: %s", name, exc)
                if e.restarts != before:
                    log.warning("shared engine of %s died; restarted (pid %s)", name, e.pid)
                    changed = True
            self.engine_restarts[name] = sum(e.restarts for e in engines)
        if changed:
            self._write_counters()

    def _close_engines(self) -> None:
        for engines in self.engines.values():
            for e in engines:
                try:
                    e.close()
                except Exception as exc:
                    log.warning("closing a shared engine failed: %s", exc)
        self.engines = {}

    # -- counters the workers' /metrics include ---------------------------------------------------------------
    def _write_counters(self) -> None:
        restarts_help = "HTTP worker processes started again after one died (ppdeploy serve --workers N)"
        families = [["ppdeploy_worker_restarts", "counter", restarts_help,
                     [["ppdeploy_worker_restarts_total", {}, float(self.worker_restarts)]]]]
        if self.engine_restarts:
            families.append(["ppdeploy_engine_process_restarts", "counter",
                             "Engine processes started again after one died",
                             [["ppdeploy_engine_process_restarts_total", {"model": m}, float(n)]
                              for m, n in self.engine_restarts.items()]])
        path = Path(self.run_dir, SUPERVISOR_FILE)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"families": families}))
        os.replace(tmp, path)


__all__ = ["MAX_WORKERS", "Peers", "Supervisor", "WorkerSpec", "ask_state", "check_workers", "serve_workers",
           "socket_mode", "worker_main"]
