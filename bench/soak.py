"""Load and soak: many signed requests through a `devo` route, on loopback only.

    .venv/bin/python bench/soak.py                      # the full run: 100,000 at concurrency 200
    .venv/bin/python bench/soak.py --requests 10000 --concurrency 100

Starts an upstream that verifies nothing and answers a small JSON body, runs `signing-proxy run`
in front of it with a `devo` route, sends `--requests` POSTs with a 1 KiB JSON body from
`--concurrency` connections, and reports errors and the proxy's RSS at the warm-up mark (20%)
and at the end. Exits 1 on any error or when RSS grew by `--max-growth-mib` or more after
warm-up. Every loop is bounded by the request count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

BODY = json.dumps({"data": "x" * 1000}).encode()[:1024]
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class SoakResult:
    requests: int
    errors: int
    statuses: dict[int, int]
    rss_warm: int
    rss_end: int
    seconds: float

    @property
    def growth(self) -> int:
        return self.rss_end - self.rss_warm

    def summary(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s "
            f"({self.requests / self.seconds:.0f}/s), errors {self.errors}, "
            f"statuses {self.statuses}, RSS after warm-up {self.rss_warm / MIB:.1f} MiB, "
            f"at the end {self.rss_end / MIB:.1f} MiB (growth {self.growth / MIB:+.1f} MiB)"
        )


async def drive(
    url: str, total: int, concurrency: int, proxy_pid: int, deadline_s: float
) -> SoakResult:
    """Send `total` POSTs from `concurrency` workers; read RSS at 20% and at the end."""
    warm_mark = total // 5
    sent = 0
    failures = 0  # connection errors and timeouts
    statuses: dict[int, int] = {}
    rss_warm = 0
    started = time.monotonic()
    deadline = started + deadline_s
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal sent, failures, rss_warm
            while sent < total and time.monotonic() < deadline:
                sent += 1
                if sent == warm_mark:
                    rss_warm = rss_bytes(proxy_pid)
                try:
                    async with session.post(url, data=BODY, headers=headers) as response:
                        await response.read()
                        statuses[response.status] = statuses.get(response.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    answered = sum(statuses.values())
    not_ok = answered - statuses.get(200, 0)
    cut = total - answered - failures  # requests the deadline never sent count as errors
    return SoakResult(
        requests=answered,
        errors=not_ok + failures + cut,
        statuses=statuses,
        rss_warm=rss_warm,
        rss_end=rss_bytes(proxy_pid),
        seconds=time.monotonic() - started,
    )


def start_upstream(port: int) -> tuple[threading.Thread, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def answer(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    async def serve() -> None:
        runner = web.ServerRunner(web.Server(answer, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the soak upstream did not start")
    return thread, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-growth-mib", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds, at most")
    args = parser.parse_args(argv)

    upstream_port, port, admin = free_port(), free_port(), free_port()
    start_upstream(upstream_port)
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "soak.yaml"
        config.write_text(
            "routes:\n"
            "  - name: devo\n"
            "    match: {path_prefix: /}\n"
            f"    upstream: http://127.0.0.1:{upstream_port}\n"
            "    signer: {scheme: devo, api_key: soak-key, api_secret: soak-secret}\n"
        )
        log = (Path(workdir) / "proxy.log").open("wb")
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
             "--drain-delay", "0"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            result = asyncio.run(
                drive(
                    f"http://127.0.0.1:{port}/soak",
                    args.requests,
                    args.concurrency,
                    proxy.pid,
                    args.deadline,
                )
            )
        finally:
            proxy.terminate()
            proxy.wait(30)
            log.close()
    print(result.summary())
    ok = result.errors == 0 and result.growth < args.max_growth_mib * MIB
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
