"""One process of the open-loop load generator (`ppdeploy.bench.load`): sends one pre-encoded HTTP/1.1 request
at each scheduled time over keep-alive connections and records when it was sent and when the answer ended.

Why not a general HTTP client: httpx spends ~1 ms of CPU per request in Python, so one client process tops out
at a few hundred requests/s, below what the server under test can do. Here a request is one `transport.write` of
bytes encoded once, and responses go through httptools' C parser (llhttp, uvicorn's): status, framing
(Content-Length, chunked, or read-to-close) and keep-alive come from it; the body is counted, not kept (a rec
model answers 2 MB), apart from a short prefix for error reports.

gRPC mode (`WorkerJob.protocol == "grpc"`): one grpc.aio channel (HTTP/2, requests multiplexed) calls the method
with the request message serialized once; the reply is not deserialized, only its status kept. A gRPC status maps
to the HTTP code the report counts (RESOURCE_EXHAUSTED 429, INVALID_ARGUMENT 400, ...); DEADLINE_EXCEEDED and
UNAVAILABLE are failures, as a timeout or a refused connection is over HTTP.

Runs as `python -m ppdeploy.bench.load_worker` (stdlib, httptools and optional uvloop only, so it starts fast;
grpcio only in gRPC mode):
  stdin:  pickled WorkerJob, then, once this process has opened its first connections and written b"ready\\n",
          one line with the shared start time (time.monotonic(), which is CLOCK_MONOTONIC: the same clock in
          every process of the machine)
  stdout: b"ready\\n", then the pickled WorkerResult.
"""
from __future__ import annotations

import asyncio
import math
import pickle
import socket
import sys
import time
from dataclasses import dataclass, field

import httptools

KEEP_PREFIX = 200  # bytes of an error response body kept for the report


@dataclass
class WorkerJob:
    host: str
    port: int
    request: bytes  # the whole HTTP/1.1 request: request line, headers, body
    offsets: list[float]  # scheduled send times, seconds after the shared start, ascending
    timeout_s: float
    drain_s: float
    max_in_flight: int
    preconnect: int = 4  # connections opened before the start, so the first arrivals pay no TCP handshake
    protocol: str = "http"  # "grpc": `request` is a serialized protobuf message for the gRPC `method`
    method: str = ""  # gRPC: the full method name, e.g. /inference.GRPCInferenceService/ModelInfer
    metadata: tuple[tuple[str, str], ...] = ()  # gRPC: call metadata (authorization, ...)


# gRPC status -> the HTTP code the report counts; the ones that mean "no answer" raise instead (see _grpc_sender).
GRPC_AS_HTTP = {"OK": 200, "INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400,
                "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
                "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNIMPLEMENTED": 501}


@dataclass
class WorkerResult:
    sent: list[float]  # seconds after start; nan: never sent
    done: list[float]  # nan: no complete response
    status: list[int]  # 0: no response
    errors: dict[int, str] = field(default_factory=dict)  # request index -> reason (failures and HTTP errors)


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; httptools calls back as the response arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.head_done = False
        self.framed = False  # Content-Length or Transfer-Encoding seen; otherwise the body ends with the connection
        self.status = 0
        self.keep_alive = True
        self.prefix = b""

    # -- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the server is broken; drop the connection
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed response: {exc}"))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.head_done and not self.framed:
                self.keep_alive = False
                self._finish()  # a body framed by the end of the connection
            else:
                self._fail(ConnectionError("server closed the connection" + (f": {exc}" if exc else "")))

    # -- httptools callbacks -----------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if len(self.prefix) < KEEP_PREFIX:
            self.prefix += body[:KEEP_PREFIX - len(self.prefix)]

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim response (100 Continue): the real one follows
            self._reset()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- requests ----------------------------------------------------------------------------------------------
    def send(self, request: bytes, timeout_s: float) -> asyncio.Future:
        self.waiter = self.loop.create_future()
        self._timer = self.loop.call_later(timeout_s, self._timeout, timeout_s)
        self.transport.write(request)
        return self.waiter

    def _timeout(self, timeout_s: float) -> None:
        self._fail(TimeoutError(f"no complete response within {timeout_s:g} s"))

    def _finish(self) -> None:
        waiter, status, prefix, keep = self.waiter, self.status, self.prefix, self.keep_alive
        self.waiter = None
        if self._timer is not None:
            self._timer.cancel()
        self._reset()
        if not keep:
            self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, prefix))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if self._timer is not None:
            self._timer.cancel()
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


async def _grpc_sender(job: WorkerJob):
    """(channel, send): send() makes one call of `job.method` with `job.request` and returns (status, detail)."""
    import grpc  # the [grpc] extra; only gRPC runs need it

    channel = grpc.aio.insecure_channel(f"{job.host}:{job.port}", options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    await asyncio.wait_for(channel.channel_ready(), job.timeout_s)
    call = channel.unary_unary(job.method)  # no serializers: bytes out, bytes back, nothing parsed per request
    metadata = tuple(job.metadata) or None

    async def send() -> tuple[int, bytes]:
        try:
            await call(job.request, timeout=job.timeout_s, metadata=metadata)
            return 200, b""
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if code == "DEADLINE_EXCEEDED":
                raise TimeoutError(f"no complete response within {job.timeout_s:g} s") from None
            if code == "UNAVAILABLE":
                raise ConnectionError(f"gRPC UNAVAILABLE: {exc.details()}") from None
            return GRPC_AS_HTTP.get(code, 500), f"gRPC {code}: {exc.details()}".encode()

    return channel, send


async def run_job(job: WorkerJob, start: float | None = None, ready=None) -> WorkerResult:
    """Run one worker's share of the schedule. `start` (time.monotonic()) defaults to right after the
    connections are open; `ready` is called once they are (the process entry point uses it to sync workers)."""
    loop = asyncio.get_running_loop()
    n = len(job.offsets)
    nan = math.nan
    result = WorkerResult([nan] * n, [nan] * n, [0] * n)
    idle: list[_Connection] = []

    async def connect() -> _Connection:
        _, proto = await loop.create_connection(lambda: _Connection(loop), job.host, job.port)
        return proto

    channel = grpc_send = None
    if job.protocol == "grpc":
        try:
            channel, grpc_send = await _grpc_sender(job)
        except (OSError, asyncio.TimeoutError):
            pass  # the requests will meet (and record) the same error
    for _ in range(min(job.preconnect, job.max_in_flight, max(1, n)) if job.protocol == "http" else 0):
        try:
            idle.append(await asyncio.wait_for(connect(), job.timeout_s))
        except (OSError, asyncio.TimeoutError):
            break  # the requests will meet (and record) the same error
    if ready is not None:
        start = await ready()
    if start is None:
        start = time.monotonic()
    in_flight = 0
    clock = time.monotonic

    async def one(i: int) -> None:
        nonlocal in_flight
        result.sent[i] = clock() - start
        conn = None
        try:
            if job.protocol == "grpc":
                if grpc_send is None:
                    raise ConnectionError(f"gRPC channel to {job.host}:{job.port} did not become ready")
                status, prefix = await grpc_send()
                result.done[i] = clock() - start
                result.status[i] = status
                if status >= 400:
                    result.errors[i] = prefix[:200].decode("utf-8", "replace")
                return
            while idle:
                c = idle.pop()
                if not c.closed:
                    conn = c
                    break
            if conn is None:
                conn = await asyncio.wait_for(connect(), job.timeout_s)
            status, prefix = await conn.send(job.request, job.timeout_s)
            result.done[i] = clock() - start
            result.status[i] = status
            if status >= 400:
                result.errors[i] = f"HTTP {status}: {prefix[:160].decode('utf-8', 'replace')}"
            if not conn.closed:
                idle.append(conn)
        except (OSError, asyncio.TimeoutError, TimeoutError, ConnectionError) as exc:
            result.errors[i] = f"{type(exc).__name__}: {exc}"[:200]
            if conn is not None:
                conn.abort()
        finally:
            in_flight -= 1

    tasks = []
    for i, offset in enumerate(job.offsets):
        delay = start + offset - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= job.max_in_flight:
            result.errors[i] = "dropped: client in-flight cap reached"
            continue
        in_flight += 1  # counted here, not in the task, so the cap holds before tasks get to run
        tasks.append(loop.create_task(one(i)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=job.drain_s + job.timeout_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    for c in idle:
        c.abort()
    if channel is not None:
        await channel.close()
    for i in range(n):
        if result.sent[i] == result.sent[i] and result.status[i] == 0 and i not in result.errors:
            result.errors[i] = "did not complete before the drain timeout"
    return result


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def main() -> int:
    # Run as `-m`, this file is __main__; its classes must pickle under their importable name.
    from ppdeploy.bench import load_worker

    job: WorkerJob = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer

    async def ready() -> float:
        out.write(b"ready\n")
        out.flush()
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.readline)
        return float(line)

    # grpc.aio runs its own completion queue against the asyncio loop; uvloop is kept to HTTP, where it was measured.
    loop = asyncio.new_event_loop() if job.protocol == "grpc" else _new_loop()
    try:
        result = loop.run_until_complete(load_worker.run_job(job, ready=ready))
    finally:
        loop.close()
    write_all(out, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()
    return 0


def write_all(out, data: bytes) -> None:
    """Write every byte of `data`. The parent runs this process with PYTHONUNBUFFERED, which makes
    sys.stdout.buffer a raw FileIO: its write() may take only part of a large buffer (seen at 9000 req/s: 65536 of
    79492 bytes into a full pipe) and says so only in its return value, which pickle.dump ignores; the parent then
    read a truncated result."""
    view = memoryview(data).cast("B")
    while view:
        n = out.write(view)
        if n is None:  # a non-blocking file that would block: wait until it takes more
            import select

            select.select([], [out], [])
            continue
        view = view[n:]


if __name__ == "__main__":
    sys.exit(main())
