"""The server's lifecycle: start both ports, reload the config, drain and stop.

Reload (SIGHUP, or a change to the config file or a file it references): parse -> validate ->
build -> swap. The new runtime replaces the old one in a single assignment; a request already
running keeps the runtime it started with. An invalid config is logged problem by problem and
the old one keeps serving.

Drain (SIGTERM, as Kubernetes sends it): `/readyz` fails at once so the endpoint is taken out of
rotation, new connections are still accepted for `drain_delay` seconds (endpoint removal takes a
moment to reach every node), then the listener closes and in-flight requests get
`shutdown_timeout` seconds to finish; those still running then are cut. SIGINT skips the delay
(a person pressed Ctrl-C). From the signal to the process's exit: at most `drain_delay` +
`shutdown_timeout` + `signals.STOP_MARGIN_SECONDS`, which is what a pod's grace period must cover.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import Gauge

from proxy.admin import admin_runner
from proxy.admission import is_loopback
from proxy.aiohttp_internals import HardenedServer
from proxy.app import ProxyHandler, Runtime
from proxy.config import (
    Config,
    ConfigError,
    parse_config,
    parse_host_port,
    read_config_text,
)
from proxy.forward import Forwarder
from proxy.logs import access_log, get_logger, on_parser_refusal
from proxy.metrics import CredentialMetrics, Metrics, ReloadMetrics, worker_ready_gauge
from proxy.reload import ConfigWatcher, fingerprint, watched_files
from proxy.signals import (
    CLOSE_WAIT_SECONDS,
    CUT_WAIT_SECONDS,
    StopSignals,
)
from proxy.startup import build_runtime
from proxy.threads import DaemonThreadPool

log = get_logger("signing_proxy")

RELOAD_POLL_SECONDS = 0.5


GC_YOUNG_THRESHOLD: Final = 7000  # Python's default is 700


def settle_garbage_collector() -> None:
    """Once the proxy serves: take the start-up objects out of the cyclic collector's sight and
    let its young generation grow. For the proxy process only, never a library default.

    After start-up ~50,000 objects (modules, the config model, botocore's data) live as long as
    the process, and every full collection walked them all: 20-35 ms a pause, which doubled p99
    at concurrency 50 (bench/README.md). `gc.freeze()` leaves them to reference counting alone
    (they are not garbage: `gc.collect()` runs first). A request's own objects are freed by
    reference counting too, but with 700 the ~50 requests in flight trip a young collection
    every ~20 requests; at 7000 the collector's share of the CPU fell from ~8% to under 1%.
    Cyclic garbage is still collected, just in larger batches.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def thaw_garbage_collector() -> None:
    """After a config reload: hand the frozen start-up objects back to the collector.

    Frozen objects are never examined again, so a replaced config or credential source that
    holds a reference cycle could never be freed. Once thawed they sit in the oldest
    generation, whose collections the young threshold of 7000 keeps rare. A no-op when
    nothing is frozen (a process that never settled, the test suite).
    """
    if gc.get_freeze_count():
        gc.unfreeze()


class ProxyServer:
    """The proxy port and the admin port, started, reloaded and drained together."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path | None = None,
        listen: str | None = None,
        admin: str | None = None,
        shutdown_timeout: float = 20.0,
        drain_delay: float = 0.0,
        worker: bool = False,
    ) -> None:
        self.config_path = config_path
        self.listen = listen or config.listen
        self.admin = admin or config.admin
        self.shutdown_timeout = shutdown_timeout
        self.drain_delay = drain_delay
        # A worker of `--workers N`: shares the listening socket with its siblings
        # (SO_REUSEPORT); the supervisor owns the admin port and reads this worker's readiness
        # from the shared metrics.
        self.worker = worker
        self.metrics = Metrics(sync_each_turn=worker)
        self.reload_metrics = ReloadMetrics(self.metrics.registry)
        self.credential_metrics = CredentialMetrics(self.metrics.registry)
        self.forwarder = Forwarder()
        source = "<config>" if config_path is None else str(config_path)
        # Raises ConfigError (key path, never a secret) for a setting that cannot be used.
        runtime = build_runtime(config, source, on_refresh_for=self.credential_metrics.callback)
        self.handler = ProxyHandler(runtime, self.forwarder, self.metrics)
        self.draining = False
        self._runners: list[web.BaseRunner] = []
        self._watcher: ConfigWatcher | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unhook_parser_refusals: Callable[[], None] | None = None
        self._web_server: web.Server | None = None

    @property
    def runtime(self) -> Runtime:
        return self.handler.runtime

    def is_ready(self) -> bool:
        return not self.draining and self.runtime.is_ready()

    async def start(self) -> None:
        await self.forwarder.start()
        for route in self.runtime.table.routes:
            await route.signer.start()
        # auto_decompress=False: a gzip request body is signed and forwarded as the bytes the
        # app sent, under its own Content-Encoding, never decoded behind the app's back.
        limits = self.runtime.config.request_limits
        self._unhook_parser_refusals = on_parser_refusal(self.metrics.parser_refusals.inc)
        server = HardenedServer(
            self.handler,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_field_bytes,
            max_headers=limits.max_headers,
            header_timeout=limits.header_timeout,
            on_header_timeout=self.metrics.header_timeouts.inc,
        )
        self._web_server = server
        # stop() waits for the requests itself, within shutdown_timeout: by the time the runner
        # cleans up, nothing is in flight. Its own wait would come twice (once for the handlers,
        # again after cancelling them), doubling the bound.
        proxy_runner = web.ServerRunner(server, shutdown_timeout=CLOSE_WAIT_SECONDS)
        sites: list[tuple[web.BaseRunner, str]] = [(proxy_runner, self.listen)]
        if self.worker:
            self._spawn(self._report_readiness(worker_ready_gauge(self.metrics.registry)))
        else:
            admin = admin_runner(
                self.metrics.registry,
                self.is_ready,
                self.metrics.sync,
                self.runtime_problems,
                shutdown_timeout=CLOSE_WAIT_SECONDS,
            )
            sites.append((admin, self.admin))
        for runner, address in sites:
            await runner.setup()
            self._runners.append(runner)
            host, port = parse_host_port(address)
            site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=self.worker)
            await site.start()
        self.reload_metrics.loaded(reloaded=False)
        self._interception_gauges(self.runtime)
        self._report_client_certs()
        if self.config_path is not None:
            paths = watched_files(self.runtime.config, self.config_path)
            self._watcher = ConfigWatcher(
                paths, lambda: self.reload("file change"), RELOAD_POLL_SECONDS
            )
            self._watcher.start()
        listen_host, _ = parse_host_port(self.listen)
        if not is_loopback(listen_host) and self.runtime.config.access is None:
            log.warning(
                "open_listener",
                listen=self.listen,
                message="listening beyond loopback with no access rules: anyone who can reach "
                "this address can use every route's credentials. Set access.allow_networks "
                "and/or access.proxy_token, or listen on 127.0.0.1.",
            )
        log.info(
            "started",
            listen=self.listen,
            admin=self.admin,
            routes=[route.name for route in self.runtime.table.routes],
        )

    def runtime_problems(self) -> dict[str, str]:
        """Routes whose credentials are not usable yet, and why (for /readyz)."""
        found = {}
        for route in self.runtime.table.routes:
            problem = route.signer.problem()
            if problem is not None:
                found[route.name] = problem
        return found

    def _report_client_certs(self) -> None:
        expiries = {
            route.name: route.options.tls.client_cert_expiry
            for route in self.runtime.table.routes
            if route.options.tls.client_cert_expiry is not None
        }
        self.credential_metrics.set_client_cert_expiries(expiries)

    async def _report_readiness(self, gauge: Gauge) -> None:
        """A worker's report to the supervisor, through the shared metrics files."""
        while True:
            gauge.set(1 if self.is_ready() else 0)
            self.metrics.sync()  # the in-flight gauge
            await asyncio.sleep(0.5)

    async def reload(self, reason: str) -> bool:
        """Load the config file again; swap it in if valid. Returns whether it was applied.

        Never raises: whatever goes wrong is a counted, logged failure that keeps the running
        config, so the file watcher and the SIGHUP handler survive it and apply the next good
        change.
        """
        if self.config_path is None:
            return False
        async with self._reload_lock:
            try:
                return await self._reload(reason, self.config_path)
            except Exception as err:  # a bug of ours: still never the end of reloading
                problem = f"unexpected {type(err).__name__} while reloading"
                return self._reload_failed(reason, [problem])

    async def _reload(self, reason: str, path: str | Path) -> bool:
        source = str(path)
        config: Config | None = None
        try:
            text = await asyncio.to_thread(read_config_text, path)
            config = await asyncio.to_thread(parse_config, text, source)
            runtime = build_runtime(
                config, source, text, self.credential_metrics.callback, previous=self.runtime
            )
        except ConfigError as err:
            if config is not None and self._watcher is not None:
                # Also watch the files the refused config names (a new CA file, say), from
                # their state now: fixing one of them is then a change, like an edit of the
                # config file.
                new = [p for p in watched_files(config, path) if p not in self._watcher.paths]
                baseline = await asyncio.to_thread(fingerprint, new)
                self._watcher.watch([*self._watcher.paths, *new], baseline)
            return self._reload_failed(reason, [str(problem) for problem in err.problems])
        running = _signers(self.runtime)  # routes left unchanged keep theirs, started already
        try:
            for route in runtime.table.routes:
                if id(route.signer) not in running:
                    await route.signer.start()
        except BaseException:  # none does (they only start background work): a bug of ours
            await _close_signers(runtime, keep=running)
            raise
        old, self.handler.runtime = self.handler.runtime, runtime  # the atomic swap
        self._interception_gauges(runtime)
        self._report_client_certs()
        self._warn_on_restart_settings(old.config, config)
        if self._watcher is not None:
            self._watcher.watch(watched_files(config, path))
        self.reload_metrics.loaded(reloaded=True)
        log.info("config_reloaded", reason=reason, routes=[r.name for r in runtime.table.routes])
        await _close_signers(old, keep=_signers(runtime))
        thaw_garbage_collector()
        return True

    def _reload_failed(self, reason: str, problems: list[str]) -> bool:
        self.reload_metrics.failed()
        log.error("config_reload_failed", reason=reason, problems=problems, kept="previous")
        return False

    @staticmethod
    def _warn_on_restart_settings(old: Config, new: Config) -> None:
        for key in ("listen", "admin", "request_limits"):
            configured = getattr(new, key)
            if getattr(old, key) != configured:
                log.warning(
                    "config_restart_needed",
                    key=key,
                    configured=str(configured),
                    message=f"a change of {key} takes effect on restart only",
                )

    def _interception_gauges(self, runtime: Runtime) -> None:
        """The CA's expiry, and each exact intercepted host's leaf (minted at this load)."""
        leaves = runtime.leaves
        if leaves is None:
            return
        from proxy.interception.leaves import normalize_host  # with interception only

        metrics = self.handler.tunnels.metrics
        metrics.ca_expiry.set(leaves.ca.not_after.timestamp())
        for route in runtime.table.routes:
            if route.config.intercept and route.host and not route.wildcard:
                expiry = leaves.not_after(normalize_host(route.host))
                if expiry is not None:
                    metrics.leaf_expiry.labels(route.name).set(expiry)

    async def stop(self) -> None:
        """Close the listener, give in-flight requests `shutdown_timeout` seconds, cut the ones
        still running (logged and counted as `shutdown`), close everything. Returns within
        `shutdown_timeout` + `signals.STOP_MARGIN_SECONDS`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        self.draining = True
        # Tunnels: idle ones close now, busy ones once their request is answered (the TLS
        # close bounded to ~2 s); the in-flight wait below covers their requests.
        self.handler.tunnels.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._watcher is not None:
            await self._watcher.stop()
        if self._runners:
            for site in list(self._runners[0].sites):  # the proxy's listener: nothing new
                await site.stop()
            if self._web_server is not None:
                # Idle keep-alive connections close now, busy ones after their request.
                self._web_server.pre_shutdown()
            await self._finish_in_flight(deadline)
        for runner in self._runners:  # the proxy first; nothing of it is in flight any more
            await runner.cleanup()
        self._runners.clear()
        if self._unhook_parser_refusals is not None:
            self._unhook_parser_refusals()
            self._unhook_parser_refusals = None
        for route in self.runtime.table.routes:
            await route.signer.close()
        await self.forwarder.close()
        self.metrics.sync()  # a worker's last requests reach the supervisor's scrape
        access_log.flush()  # the last turn's lines, before the "stopped" line

    async def _finish_in_flight(self, deadline: float) -> None:
        """Wait until no request is in flight or the deadline passes; then cut the rest."""
        loop = asyncio.get_running_loop()
        in_flight = self.handler.in_flight
        while in_flight and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(set(in_flight), timeout=remaining)
        if not in_flight:
            return
        cut = set(in_flight)
        log.warning(
            "shutdown_cut_requests",
            requests=len(cut),
            shutdown_timeout=self.shutdown_timeout,
            message="requests still running at the shutdown deadline are cut",
        )
        self.handler.cancelled_as = "shutdown"
        for task in cut:
            task.cancel()
        await asyncio.wait(cut, timeout=CUT_WAIT_SECONDS)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def run_until_signalled(self, on_ready: Callable[[], Any] | None = None) -> None:
        # Threads left in a blocking call (a credential fetch, a DNS lookup) must not hold the
        # process after `stopped`: see proxy/threads.py.
        asyncio.get_running_loop().set_default_executor(DaemonThreadPool())
        with StopSignals(on_hangup=lambda: self._spawn(self.reload("SIGHUP"))) as signals:
            try:
                await self.start()
                if on_ready is not None:
                    on_ready()
                await signals.wait()
                self.draining = True  # readiness fails from this moment
                delay = signals.drain_delay(self.drain_delay)
                log.info("draining", drain_delay=delay, shutdown_timeout=self.shutdown_timeout)
                await asyncio.sleep(delay)
            finally:
                await self.stop()
        log.info("stopped")


def _signers(runtime: Runtime) -> set[int]:
    return {id(route.signer) for route in runtime.table.routes}


async def _close_signers(runtime: Runtime, keep: set[int] | None = None) -> None:
    """Stop the background work of a replaced (or refused) config's signers, but those the
    other config kept (`keep`, by identity: unchanged routes share their signer)."""
    for route in runtime.table.routes:
        if keep is not None and id(route.signer) in keep:
            continue
        try:
            await route.signer.close()
        except Exception as err:  # the swap is done: a failure here must not undo the reload
            log.warning("signer_close_failed", route=route.name, error_type=type(err).__name__)
