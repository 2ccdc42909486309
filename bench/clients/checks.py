"""Capability checks for one client library against bench/clients/upstream.py.

Run: .venv/bin/python bench/clients/checks.py LIB [--port 18080 --tls-port 18443 --dir DIR]
Prints one JSON object: {check: [passed, note]}. Every check is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from adapters import FACTORIES, Adapter, Headers, Settings, read_all

Result = tuple[bool, str]
MIB = 1024 * 1024


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def upstream_stats(base: str, path: str = "/stats") -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(base + path) as response:
        return await response.json(content_type=None) if path == "/stats" else {}


async def echo(lib: Adapter, url: str, headers: Headers, body: AsyncIterator[bytes] | None) -> dict:  # type: ignore[type-arg]
    async with lib.stream("POST" if body else "GET", url, headers, body) as reply:
        return json.loads(await read_all(reply))


def extras(sent: Headers, received: list[list[str]]) -> list[str]:
    names = {k.lower() for k, _ in sent} | {"host"}
    return [f"{k}: {v}" for k, v in received if k.lower() not in names]


async def check_body(lib: Adapter, base: str, chunked: bool) -> Result:
    n, size, gap = 4, 256 * 1024, 0.4
    finished: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(n):
            if i:
                await asyncio.sleep(gap)
            if i == n - 1:  # a client that knows the length need not poll past the last chunk
                finished.append(time.time())
            yield b"b" * size

    sent: list[tuple[str, str]] = [("X-Test", "body")]
    if not chunked:
        sent.append(("Content-Length", str(n * size)))
    got = await echo(lib, base + "/echo", sent, body())
    names = {k.lower(): v for k, v in got["headers"]}
    streamed = got["first_byte"] is not None and got["first_byte"] < finished[0] - gap
    framing = names.get("transfer-encoding") == "chunked" if chunked else "content-length" in names
    ok = got["size"] == n * size and streamed and framing
    lead = finished[0] - (got["first_byte"] or finished[0])
    note = (
        f"size={got['size']} first byte {lead:.2f}s before body end; "
        f"TE={names.get('transfer-encoding')} CL={names.get('content-length')}; "
        f"added: {extras(sent, got['headers']) or 'none'}"
    )
    return ok, note


async def check_big(lib: Adapter, base: str) -> Result:
    before = rss_mib()
    total = 0
    async with lib.stream("GET", base + "/big?mib=200", []) as reply:
        async for chunk in reply.chunks:
            total += len(chunk)
            break
        await asyncio.sleep(3.0)  # a slow reader: the upstream must stop writing
        paused_sent = (await upstream_stats(base))["big_sent"]
        paused_rss = rss_mib() - before
        peak = paused_rss
        deadline = time.monotonic() + 120
        async for chunk in reply.chunks:
            total += len(chunk)
            if total % (8 * MIB) < len(chunk):
                peak = max(peak, rss_mib() - before)
                await asyncio.sleep(0.01)
            if time.monotonic() > deadline:
                return False, f"too slow: {total / MIB:.0f} MiB in 120 s"
    ok = total == 200 * MIB and paused_sent < 48 * MIB and peak < 100
    note = (
        f"got {total / MIB:.0f} MiB; upstream had sent {paused_sent / MIB:.1f} MiB while the "
        f"reader paused 3 s; RSS +{paused_rss:.0f} MiB paused, peak +{peak:.0f} MiB"
    )
    return ok, note


async def check_pool(lib: Adapter, base: str) -> Result:
    await upstream_stats(base, "/reset")
    for _ in range(20):
        async with lib.stream("GET", base + "/small", []) as reply:
            await read_all(reply)
    sequential = (await upstream_stats(base))["connections"]

    async def one() -> None:
        async with lib.stream("GET", base + "/small", []) as reply:
            await read_all(reply)

    for _ in range(5):
        await asyncio.gather(*(one() for _ in range(10)))
    concurrent = (await upstream_stats(base))["connections"]
    ok = sequential == 1 and concurrent <= 11
    return ok, f"20 sequential -> {sequential} conn; then 5x10 concurrent -> {concurrent} total"


async def expect_error(lib: Adapter, url: str, limit: float) -> Result:
    started = time.monotonic()
    try:
        async with lib.stream("GET", url, []) as reply:
            await read_all(reply)
    except Exception as exc:
        took = time.monotonic() - started
        return took < limit, f"{type(exc).__name__} after {took:.1f}s"
    return False, f"no error after {time.monotonic() - started:.1f}s"


async def check_timeouts(name: str, base: str) -> Result:
    # A full accept queue on loopback: SYNs are dropped, so connect() hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.2)
    notes = []
    oks = []
    lib = FACTORIES[name](Settings(connect=1, read=1, total=30))
    try:
        for label, url in [
            ("connect", f"http://127.0.0.1:{port}/"),
            ("read-head", base + "/slow?s=5"),
            ("read-body", base + "/stall"),
        ]:
            ok, note = await expect_error(lib, url, 3.5)
            oks.append(ok)
            notes.append(f"{label}: {note}")
    finally:
        await lib.close()
        for s in [*fillers, listener]:
            s.close()
    lib = FACTORIES[name](Settings(connect=1, read=10, total=2))
    try:
        ok, note = await expect_error(lib, base + "/slow?s=8", 4.5)
        oks.append(ok)
        notes.append(f"total: {note}")
    finally:
        await lib.close()
    return all(oks), "; ".join(notes)


async def check_tls(name: str, tls: str, ca: str) -> Result:
    notes = []
    oks = []
    for label, verify, want in [
        ("custom CA", ca, True),
        ("system CAs", True, False),
        ("verify off", False, True),
    ]:
        lib = FACTORIES[name](Settings(verify=verify))
        try:
            async with lib.stream("GET", tls + "/small", []) as reply:
                await read_all(reply)
            got, note = True, f"{reply.status}"
        except Exception as exc:
            got, note = False, type(exc).__name__
        finally:
            await lib.close()
        oks.append(got == want)
        notes.append(f"{label}: {note}")
    return all(oks), "; ".join(notes)


async def check_gzip(lib: Adapter, base: str) -> Result:
    async with lib.stream("GET", base + "/gzip", [("Accept-Encoding", "gzip")]) as reply:
        body = await read_all(reply)
        encoding = dict((k.lower(), v) for k, v in reply.headers).get("content-encoding")
    raw = body[:2] == b"\x1f\x8b" and gzip.decompress(body) == b"hello gzip " * 100
    return raw and encoding == "gzip", f"{len(body)} bytes, gzip magic={raw}, CE={encoding}"


async def check_headers(lib: Adapter, base: str) -> Result:
    sent = [
        ("X-Zeta", "1"),
        ("x-alpha", "2"),
        ("X-Dup", "one"),
        ("Authorization", "AWS4-HMAC-SHA256 sig"),
        ("X-Dup", "two"),
        ("X-Amz-Date", "20260101T000000Z"),
    ]
    path = "/a%2Fb?x=%7E&y=a+b"
    got = await echo(lib, base + path, sent, None)
    mine = [(k, v) for k, v in got["headers"] if k.lower() in {n.lower() for n, _ in sent}]
    order = [(k.lower(), v) for k, v in mine] == [(k.lower(), v) for k, v in sent]
    case = mine == sent
    added = extras(sent, got["headers"])
    ok = order and not added and got["raw_path"] == path
    note = (
        f"path {got['raw_path']!r}; order+dups kept={order}; name case kept={case}; "
        f"added: {added or 'none'}; received: {[k for k, _ in got['headers']]}"
    )
    return ok, note


async def check_redirect(lib: Adapter, base: str) -> Result:
    async with lib.stream("GET", base + "/redirect", []) as reply:
        await read_all(reply)
        location = dict((k.lower(), v) for k, v in reply.headers).get("location")
    return reply.status == 302, f"status {reply.status}, Location {location}"


async def guarded(label: str, coro: Awaitable[Result], results: dict[str, Result]) -> None:
    try:
        results[label] = await asyncio.wait_for(coro, 180)
    except Exception as exc:
        results[label] = (False, f"{type(exc).__name__}: {str(exc)[:300]}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("lib", choices=sorted(FACTORIES))
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--tls-port", type=int, default=18443)
    parser.add_argument("--dir", default="/tmp/clients-bench")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    tls = f"https://127.0.0.1:{args.tls_port}"
    results: dict[str, Result] = {}
    lib = FACTORIES[args.lib](Settings())
    plan: list[tuple[str, Callable[[], Awaitable[Result]]]] = [
        ("1a body stream, Content-Length", lambda: check_body(lib, base, chunked=False)),
        ("1b body stream, chunked", lambda: check_body(lib, base, chunked=True)),
        ("2 response stream + backpressure", lambda: check_big(lib, base)),
        ("3 keep-alive pool", lambda: check_pool(lib, base)),
        ("4 timeouts", lambda: check_timeouts(args.lib, base)),
        ("5 TLS", lambda: check_tls(args.lib, tls, f"{args.dir}/ca.pem")),
        ("6 no decompression", lambda: check_gzip(lib, base)),
        ("7 headers + raw path", lambda: check_headers(lib, base)),
        ("8 redirects not followed", lambda: check_redirect(lib, base)),
    ]
    try:
        for label, make in plan:
            await guarded(label, make(), results)
    finally:
        await lib.close()
    print(json.dumps({"lib": args.lib, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
