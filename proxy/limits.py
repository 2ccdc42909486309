"""Per-route limits: concurrent requests (503 above) and a token-bucket rate (429 above).

The state is per route and lives as long as the config it was built from; a reload starts new
counters (requests still running on the old config finish against the old ones).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from proxy.config import RouteConfig


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


@dataclass(slots=True)
class RouteLimits:
    max_concurrent: int | None
    bucket: TokenBucket | None
    in_flight: int = field(default=0)

    @classmethod
    def for_route(cls, config: RouteConfig) -> RouteLimits:
        rate = config.rate_limit
        bucket = TokenBucket(rate.requests_per_second, rate.burst or 1) if rate else None
        return cls(config.max_concurrent, bucket)

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
