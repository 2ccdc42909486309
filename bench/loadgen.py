"""The fallback load generator, used when wrk is not installed: closed-loop HTTP/1.1 keep-alive.

`--connections` connections each send one request, wait for the whole response, and send the
next, for `--duration` seconds (like wrk). Bare asyncio protocols on uvloop when it is
installed; a request is a precomputed byte string. Prints one JSON object: requests completed in
the window, requests/s, latency percentiles (microseconds), and error counts. A Python load
generator is slower than wrk: with it the numbers say less about the fastest targets.

    python bench/loadgen.py --url http://127.0.0.1:8080/x -c 50 -d 5 [--body-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit


@dataclass
class Stats:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    non_2xx: int = 0
    errors: int = 0  # connect, read and protocol errors
    reconnects: int = 0


class Generator:
    def __init__(self, host: str, port: int, request: bytes, deadline: float) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.deadline = deadline
        self.stats = Stats()
        self.open_connections = 0
        self.all_closed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def running(self) -> bool:
        return time.perf_counter() < self.deadline

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.stats.errors += 1
            if self.running():
                await asyncio.sleep(0.01)  # no busy loop against a dead port
                self.spawn_connect()
            elif self.open_connections == 0:
                self.all_closed.set()

    def spawn_connect(self) -> None:
        task = asyncio.get_running_loop().create_task(self.connect())
        self.tasks.add(task)  # a reference until it is done
        task.add_done_callback(self.tasks.discard)

    def connection_opened(self) -> None:
        self.open_connections += 1

    def connection_closed(self) -> None:
        self.open_connections -= 1
        if self.running():
            self.stats.reconnects += 1
            self.spawn_connect()
        elif self.open_connections == 0:
            self.all_closed.set()


class Connection(asyncio.Protocol):
    def __init__(self, generator: Generator) -> None:
        self.gen = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.gen.connection_opened()
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.waiting = True
        self.sent_at = time.perf_counter()
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        parsed = parse_response(self.buffer)
        if parsed is None:
            return
        status, consumed, close = parsed
        now = time.perf_counter()
        del self.buffer[:consumed]
        self.waiting = False
        stats = self.gen.stats
        if now <= self.gen.deadline:
            stats.latencies.append(now - self.sent_at)
            if not 200 <= status < 300:
                stats.non_2xx += 1
        assert self.transport is not None
        if close or self.buffer:
            self.transport.close()  # reconnects while the run lasts
        elif self.gen.running():
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting and self.gen.running():
            self.gen.stats.errors += 1
        self.gen.connection_closed()


def parse_response(buffer: bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, connection closes) of the first whole response, or None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
    body_start = end + 4
    length_at = head.find(b"\r\ncontent-length:")
    if length_at >= 0:
        value_start = length_at + len(b"\r\ncontent-length:")
        value_end = head.find(b"\r\n", value_start)
        length = int(head[value_start : value_end if value_end >= 0 else len(head)].strip())
        if len(buffer) < body_start + length:
            return None
        return status, body_start + length, close
    if b"\r\ntransfer-encoding: chunked" in head:
        used = _chunked_end(buffer, body_start)
        return None if used < 0 else (status, used, close)
    if status in (204, 304) or 100 <= status < 200:
        return status, body_start, close
    raise ValueError("a response without length framing: not supported")


def _chunked_end(buffer: bytearray, pos: int) -> int:
    """The offset after the chunked body starting at `pos`, or -1 while it is incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return -1
        size = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", pos - 2)
            return -1 if trailer_end < 0 else trailer_end + 4
        if len(buffer) < pos + size + 2:
            return -1
        pos += size + 2


def build_request(
    method: str, host: str, port: int, target: str, body: bytes, content_type: str | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    if body or method in {"POST", "PUT", "PATCH"}:
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def run(
    url: str, connections: int, duration: float, method: str, body: bytes, content_type: str | None
) -> dict[str, Any]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = build_request(method, host, port, target, body, content_type)
    started = time.perf_counter()
    gen = Generator(host, port, request, started + duration)
    for _ in range(connections):
        await gen.connect()
    remaining = gen.deadline - time.perf_counter()
    try:
        await asyncio.wait_for(gen.all_closed.wait(), timeout=max(0.0, remaining) + 10.0)
    except TimeoutError:
        gen.stats.errors += gen.open_connections  # requests that never finished
    elapsed = min(time.perf_counter(), gen.deadline) - started
    ordered = sorted(gen.stats.latencies)
    count = len(ordered)
    return {
        "requests": count,
        "seconds": elapsed,
        "rps": count / elapsed if elapsed > 0 else 0.0,
        "p50_us": percentile(ordered, 0.50) * 1e6,
        "p99_us": percentile(ordered, 0.99) * 1e6,
        "mean_us": (sum(ordered) / count * 1e6) if count else 0.0,
        "non_2xx": gen.stats.non_2xx,
        "errors": gen.stats.errors,
        "reconnects": gen.stats.reconnects,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("-c", "--connections", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("--body-file", help="request body (sent with Content-Length)")
    parser.add_argument("--content-type", default="application/json")
    args = parser.parse_args()
    body = b""
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    coroutine = run(args.url, args.connections, args.duration, args.method, body, args.content_type)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
