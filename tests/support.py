"""Real parts for tests: an aiohttp upstream on loopback (in its own thread), and the proxy
either as a `signing-proxy run` subprocess or in-process (its handler behind aiohttp's test
server, driven by aiohttp's test client). Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from prometheus_client import generate_latest

from proxy.app import ProxyHandler, Runtime
from proxy.config import parse_config
from proxy.forward import Forwarder
from proxy.metrics import Metrics
from proxy.routing import RouteTable
from proxy.signers import Signer

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: dict[str, str]
    header_items: list[tuple[str, str]]
    body_len: int
    body_sha256: str
    body: bytes | None  # kept only when small


class Upstream:
    """An aiohttp server in a background thread that records what reaches it.

    The default handler echoes the request as JSON; tests may install others by path prefix.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.ssl_context = ssl_context
        self.seen: list[Seen] = []
        self.handlers: dict[str, Handler] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> Upstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def setup() -> None:
            server = web.Server(self._dispatch, access_log=None, auto_decompress=False)
            self._runner = web.ServerRunner(server)
            await self._runner.setup()
            await web.TCPSite(
                self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context
            ).start()

        self._loop.run_until_complete(setup())
        self._ready.set()
        self._loop.run_forever()

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        for prefix, handler in self.handlers.items():
            if request.path.startswith(prefix):
                return await handler(request)
        return await self.echo(request)

    async def record(self, request: web.BaseRequest) -> Seen:
        digest = hashlib.sha256()
        size = 0
        small = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            digest.update(chunk)
            size += len(chunk)
            if size <= 1 << 20:
                small += chunk
        seen = Seen(
            method=request.method,
            raw_path=request.raw_path,
            headers=dict(request.headers),
            header_items=list(request.headers.items()),
            body_len=size,
            body_sha256=digest.hexdigest(),
            body=bytes(small) if size <= 1 << 20 else None,
        )
        self.seen.append(seen)
        return seen

    async def echo(self, request: web.BaseRequest) -> web.Response:
        seen = await self.record(request)
        return web.json_response(
            {
                "method": seen.method,
                "raw_path": seen.raw_path,
                "headers": seen.header_items,
                "body_len": seen.body_len,
                "body_sha256": seen.body_sha256,
            }
        )


@contextlib.contextmanager
def running_upstream(ssl_context: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    upstream = Upstream(ssl_context).start()
    try:
        yield upstream
    finally:
        upstream.stop()


Behaviour = Callable[["ScriptedUpstream", socket.socket, bytes], None]


class ScriptedUpstream:
    """A TCP server answering by hand: per connection, a thread reads the request head and
    runs `behaviour(server, conn, head)`. What the behaviour observes (the proxy closing the
    connection, a write failing) goes to `events` as `(what, time.monotonic())`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.heads: list[bytes] = []
        self.events: queue.Queue[tuple[str, float]] = queue.Queue()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                self.heads.append(head)
                self.behaviour(self, conn, head)
            except OSError:
                pass

    def drain_events(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def close(self) -> None:
        self._server.close()


@dataclass
class ProxyProcess:
    """`signing-proxy run` in a subprocess, its stderr (the logs) captured to a file."""

    config: dict[str, Any]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    drain_delay: float = 0.0
    write_config: bool = True
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "proxy.log"

    def start(self) -> ProxyProcess:
        config_path = self.workdir / "config.yaml"
        if self.write_config:
            config_path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, **self.env}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "proxy", "run",
                "--config", str(config_path),
                "--listen", f"127.0.0.1:{self.port}",
                "--admin", f"127.0.0.1:{self.admin_port}",
                "--drain-delay", str(self.drain_delay),
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited {self.process.returncode}:\n{self.logs()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.admin_url}/healthz", timeout=1).ok:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"proxy did not start:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._log.close()
        return code

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events written so far, only those named `name` when given."""
        events = [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]
        return events if name is None else [e for e in events if e.get("event") == name]

    def request_events(self, timeout: float = 5, **match: object) -> list[dict[str, Any]]:
        """The access-log events whose fields equal `match`, waiting up to `timeout` for the
        first: a line is written at the end of the event-loop turn that answered, so it can
        reach the log a moment after the client has its response."""
        return self.log_events("request", timeout, **match)

    def log_events(self, event: str, timeout: float = 5, **match: object) -> list[dict[str, Any]]:
        """The JSON log lines of `event` whose fields equal `match`, waiting up to `timeout`
        for the first."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(event) if all(e.get(k) == v for k, v in match.items())]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def peak_rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


@contextlib.contextmanager
def running_proxy(config: dict[str, Any], workdir: Path, **kwargs: Any) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(config, workdir, **kwargs).start()
    try:
        yield proxy
    finally:
        if proxy.process is not None and proxy.process.poll() is None:
            proxy.stop()


def route(name: str, upstream: str, signer: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "upstream": upstream, "signer": signer, **extra}


def one_route_config(upstream_url: str, name: str = "slow") -> dict[str, Any]:
    """A config of one bearer route taking every path to `upstream_url`."""
    signer = {"scheme": "bearer", "token": "t"}
    return {"routes": [route(name, upstream_url, signer, match={"path_prefix": "/"})]}


@dataclass
class Reply:
    status: int
    head: bytes
    body: bytes
    closed: bool = False  # the proxy closed the connection (rather than the client timing out)

    def error_code(self) -> str | None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            code: str = json.loads(self.body)["error"]["code"]
            return code
        return None


def send(port: int, data: bytes, timeout: float = 5) -> Reply:
    """Raw bytes in, the whole reply (up to the proxy closing the connection) out."""
    chunks = []
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if head.startswith(b"HTTP/") and len(parts) > 1 else 0
    return Reply(status, head, body, closed)


class RawUpstream:
    """A plain TCP server that records every byte it receives, connection by connection, and
    answers each request it can frame with `200 ok` (a `TRACE` with the request echoed back, as
    Apache httpd does). For asserting exactly what reached the upstream: the proxy's framing,
    a body, a second request smuggled behind the first.

    Framing is read strictly (RFC 9112): a `Content-Length` of decimal digits, or `chunked`;
    anything else ends the connection after recording it.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._connections: list[bytearray] = []
        self._arrivals: list[bytes] = []  # every chunk received, on any connection, in order
        self.heads: list[bytes] = []  # each request head as received, in order
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        """Everything received so far, on all connections, in the order it arrived."""
        with self._lock:
            return b"".join(self._arrivals)

    @property
    def connections(self) -> list[bytes]:
        """What each connection received, in the order the connections were accepted."""
        with self._lock:
            return [bytes(data) for data in self._connections]

    def mark(self) -> int:
        """A point to compare `received_since` with."""
        return len(self.received)

    def received_since(self, mark: int) -> bytes:
        return self.received[mark:]

    def start(self) -> RawUpstream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)  # so that `stop()` is seen
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            data = bytearray()
            with self._lock:
                self._connections.append(data)
            threading.Thread(target=self._serve, args=(conn, data), daemon=True).start()

    def _serve(self, conn: socket.socket, data: bytearray) -> None:
        buffer = bytearray()

        def read_more() -> bool:
            chunk = conn.recv(65536)
            if chunk:
                with self._lock:
                    data.extend(chunk)
                    self._arrivals.append(chunk)
                buffer.extend(chunk)
            return bool(chunk)

        def take(count: int) -> bytes | None:
            while len(buffer) < count:
                if not read_more():
                    return None
            taken = bytes(buffer[:count])
            del buffer[:count]
            return taken

        def take_line() -> bytes | None:
            while b"\r\n" not in buffer:
                if not read_more():
                    return None
            line, _, rest = bytes(buffer).partition(b"\r\n")
            buffer[:] = rest
            return line

        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not read_more():
                        return
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                buffer[:] = rest
                with self._lock:
                    self.heads.append(head)
                fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
                named = {name.strip().lower(): value.strip() for name, value in fields}
                if b"transfer-encoding" in named:
                    if named[b"transfer-encoding"] != b"chunked":
                        return
                    while True:
                        size_line = take_line()
                        if size_line is None or not re.fullmatch(rb"[0-9a-fA-F]{1,8}", size_line):
                            return
                        size = int(size_line, 16)
                        if take(size + 2) is None:
                            return
                        if size == 0:
                            break
                elif b"content-length" in named:
                    length = named[b"content-length"]
                    if not length.isdigit() or take(int(length)) is None:
                        return
                if head.startswith(b"TRACE "):
                    body = head + b"\r\n\r\n"
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@contextlib.contextmanager
def running_raw_upstream() -> Iterator[RawUpstream]:
    upstream = RawUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@dataclass
class InProcessProxy:
    """The proxy's handler in this process: `client` sends it requests over loopback."""

    client: TestClient[web.Request, web.Application]
    handler: ProxyHandler
    metrics: Metrics

    def scrape(self) -> str:
        """`/metrics` as Prometheus would read it."""
        self.metrics.sync()
        return generate_latest(self.metrics.registry).decode()

    def use_signer(self, signer: Signer[Any], route: int = 0) -> None:
        """Give route `route` this signer, as a reload would (the runtime is swapped)."""
        runtime = self.handler.runtime
        routes = list(runtime.table.routes)
        routes[route] = dataclasses.replace(routes[route], signer=signer)
        self.handler.runtime = dataclasses.replace(runtime, table=RouteTable(routes))


@contextlib.asynccontextmanager
async def in_process_proxy(config: dict[str, Any]) -> AsyncIterator[InProcessProxy]:
    """The request path as `run` builds it (config -> runtime -> handler), without a process."""
    runtime = Runtime.build(parse_config(yaml.safe_dump(config)))
    forwarder = Forwarder()
    await forwarder.start()
    metrics = Metrics()
    handler = ProxyHandler(runtime, forwarder, metrics)
    client: TestClient[web.Request, web.Application] = TestClient(RawTestServer(handler))
    try:
        await client.start_server()
        yield InProcessProxy(client, handler, metrics)
    finally:
        await client.close()
        await forwarder.close()
