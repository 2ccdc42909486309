"""Raw clients for CONNECT tunnels: exact bytes on the wire, so a test controls what is sent
before and after the 200 (which real clients never get wrong, and attackers do), and a
recorder that proves nothing reached a host the proxy must not open a tunnel to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_port


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class TunnelClient:
    """One client connection to the proxy: a CONNECT, then requests through the tunnel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> TunnelClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def connect(
        self, authority: str, headers: dict[str, str] | None = None, extra: bytes = b""
    ) -> Answer:
        """Send `CONNECT authority` (plus `extra` bytes in the same write) and read the answer
        head (and the body of a refusal)."""
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + extra)
        await self.writer.drain()
        return await self.read_answer(connect=True)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        await self.writer.start_tls(context, server_hostname=server_hostname)

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        host: str | None = None,
        version: str = "1.1",
    ) -> Answer:
        """One request (with `Host: host` unless None)."""
        lines = [f"{method} {target} HTTP/{version}"]
        if host:
            lines.append(f"Host: {host}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method in {"POST", "PUT"}:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()
        return await self.read_answer()

    async def read_answer(self, *, connect: bool = False) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if connect and status == 200:
            return Answer(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
            return Answer(status, headers, bytes(body))
        length = int(headers.get("content-length", "0"))
        return Answer(status, headers, await self.reader.readexactly(length))

    async def closed_by_peer(self, timeout: float = 5) -> bool:
        """Whether the proxy closes the connection (EOF or reset) within `timeout`."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        return data == b""

    def close(self) -> None:
        self.writer.close()


def trusting(ca_file: Path | str | None) -> ssl.SSLContext:
    """A client context that trusts `ca_file` only (None: trusts nothing), offering h2 and
    http/1.1 as browsers and Java do."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@dataclass
class RawRecorder:
    """A TCP listener on loopback that records every connection and byte it receives: the
    host a refused CONNECT named, proven untouched."""

    port: int = field(default_factory=free_port)
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)

    @contextlib.contextmanager
    def running(self) -> Iterator[RawRecorder]:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                self.connections += 1
                with conn:
                    conn.settimeout(1)
                    with contextlib.suppress(OSError):
                        while data := conn.recv(65536):
                            self.received += data

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(5)
            listener.close()
