"""Per-route limits: concurrent requests (503 above), a token-bucket rate (429 above), and the
upstream connections the route may hold at once (a request waits for one, then 503).

The state is per route and lives as long as the config it was built from; a reload starts new
counters (requests still running on the old config finish against the old ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from proxy.config import RouteConfig
from proxy.errors import ProxyError


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self, now: float | None = None) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class UpstreamSlots:
    """At most `size` upstream exchanges of one route at once, each holding a connection from
    its start to the end of the relayed response. Clients that send their bodies slowly hold
    their upstream connections as long: without a cap they could take every connection (and
    file descriptor) the process has, for every route. A request waits up to `wait` seconds
    (the route's connect timeout) for a slot, then gets `503 upstream_connections_exhausted`."""

    def __init__(self, size: int, wait: float) -> None:
        self.size = size
        self._wait = wait
        self._free = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        try:
            if self._free.locked():  # else the acquire is immediate: no timer needed
                async with asyncio.timeout(self._wait):
                    await self._free.acquire()
            else:
                await self._free.acquire()
        except TimeoutError:
            raise ProxyError(
                503,
                "upstream_connections_exhausted",
                f"this route's {self.size} upstream connections (max_upstream_connections) "
                "are all in use",
            ) from None
        try:
            yield
        finally:
            self._free.release()


@dataclass(slots=True)
class RouteLimits:
    max_concurrent: int | None
    bucket: TokenBucket | None
    upstream: UpstreamSlots
    in_flight: int = field(default=0)

    @classmethod
    def for_route(cls, config: RouteConfig) -> RouteLimits:
        rate = config.rate_limit
        bucket = TokenBucket(rate.requests_per_second, rate.burst or 1) if rate else None
        slots = UpstreamSlots(config.max_upstream_connections, config.timeout.connect)
        return cls(config.max_concurrent, bucket, slots)

    def retry_after(self) -> int | None:
        """None when the rate allows this request, else whole seconds for `Retry-After`."""
        if self.bucket is None:
            return None
        wait = self.bucket.take()
        return max(1, math.ceil(wait)) if wait else None

    def try_enter(self) -> bool:
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
