"""`--workers N`: N proxy processes sharing one listening socket, one admin port for all.

The supervisor (this process) validates the config, starts N workers (`signing-proxy run
--worker`, each binding the proxy address with SO_REUSEPORT so the kernel spreads connections),
and serves the admin port itself: `/metrics` merges every worker's metrics through
prometheus-client's multiprocess mode (a shared directory of memory-mapped files), `/readyz`
is ready when every live worker reports ready. A worker that dies is restarted. Signals: SIGHUP
is passed on (each worker reloads), SIGTERM drains (readiness fails, `drain_delay`, then every
worker drains its in-flight requests), SIGINT stops without the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from proxy.admin import admin_runner
from proxy.config import parse_host_port
from proxy.logs import get_logger
from proxy.signals import CLOSE_WAIT_SECONDS, STOP_MARGIN_SECONDS, StopSignals

log = get_logger("signing_proxy")

RESTART_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0)


class Supervisor:
    def __init__(
        self,
        *,
        config_path: str,
        listen: str,
        admin: str,
        workers: int,
        log_format: str,
        shutdown_timeout: float,
        drain_delay: float,
    ) -> None:
        self.config_path = config_path
        self.listen = listen
        self.admin = admin
        self.count = workers
        self.log_format = log_format
        self.shutdown_timeout = shutdown_timeout
        self.drain_delay = drain_delay
        self.metrics_dir = tempfile.mkdtemp(prefix="signing-proxy-metrics-")
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self.processes: dict[int, asyncio.subprocess.Process] = {}  # slot -> process
        self.stopping = False
        self.draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "proxy", "run", "--worker",
            "--config", self.config_path,
            "--listen", self.listen,
            "--log-format", self.log_format,
            "--shutdown-timeout", str(self.shutdown_timeout),
            "--drain-delay", "0",  # the supervisor holds the drain delay for all
        ]  # fmt: skip

    async def _start_process(self) -> asyncio.subprocess.Process:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        return await asyncio.create_subprocess_exec(*self._command(), env=env)

    async def _spawn(self, slot: int) -> None:
        process = await self._start_process()
        self.processes[slot] = process
        log.info("worker_started", slot=slot, pid=process.pid)
        task = asyncio.create_task(self._watch(slot, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, slot: int, process: asyncio.subprocess.Process) -> None:
        """Restart a worker that dies on its own, with backoff."""
        failures = 0
        while True:
            code = await process.wait()
            mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if self.stopping:
                return
            log.error("worker_died", slot=slot, pid=process.pid, exit_code=code)
            await asyncio.sleep(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])
            failures += 1
            if self.stopping:
                return
            process = await self._start_process()
            self.processes[slot] = process
            log.info("worker_restarted", slot=slot, pid=process.pid)

    def is_ready(self) -> bool:
        if self.draining or len(self.processes) < self.count:
            return False
        live = {p.pid for p in self.processes.values() if p.returncode is None}
        if len(live) < self.count:
            return False
        ready: set[int] = set()
        for metric in self.registry.collect():
            if metric.name == "signing_proxy_worker_ready":
                ready |= {int(s.labels["pid"]) for s in metric.samples if s.value == 1}
        return live <= ready

    def _signal_workers(self, signum: int) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def run(self, on_ready: Callable[[], object] | None = None) -> int:
        runner = admin_runner(self.registry, self.is_ready, shutdown_timeout=CLOSE_WAIT_SECONDS)
        with StopSignals(on_hangup=lambda: self._signal_workers(signal.SIGHUP)) as signals:
            try:
                await runner.setup()
                host, port = parse_host_port(self.admin)
                await web.TCPSite(runner, host, port, reuse_address=True).start()
                for slot in range(self.count):
                    await self._spawn(slot)
                log.info(
                    "supervisor_started", workers=self.count, listen=self.listen, admin=self.admin
                )
                if on_ready is not None:
                    on_ready()
                await signals.wait()
                self.draining = True
                delay = signals.drain_delay(self.drain_delay)
                log.info("draining", drain_delay=delay, shutdown_timeout=self.shutdown_timeout)
                await asyncio.sleep(delay)
                return await self._stop_workers()
            finally:
                self.stopping = True
                self._signal_workers(signal.SIGKILL)
                await runner.cleanup()
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
                log.info("stopped")

    async def _stop_workers(self) -> int:
        self.stopping = True
        self._signal_workers(signal.SIGTERM)
        # A worker exits within its timeout plus a moment (ProxyServer.stop); one that does not
        # is killed at half the margin, which leaves the other half for this process to close:
        # the whole stop keeps the bound the pod's grace period is sized for.
        deadline = time.monotonic() + self.shutdown_timeout + STOP_MARGIN_SECONDS / 2
        codes = []
        for process in self.processes.values():
            try:
                remaining = max(0.1, deadline - time.monotonic())
                codes.append(await asyncio.wait_for(process.wait(), remaining))
            except TimeoutError:
                log.error("worker_stop_timeout", pid=process.pid)
                process.kill()
                codes.append(await process.wait())
        return 0 if all(code == 0 for code in codes) else 1
