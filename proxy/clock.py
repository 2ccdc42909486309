"""Clock skew against each upstream, from its `Date` header.

Most schemes sign a timestamp the server checks (Devengo within 60 s), so a drifting clock
fails every request at once. Each response's `Date` is compared with the local clock; the
difference is a gauge per route, and past 30 s a warning is logged (at most once a minute per
route). `Date` has one-second resolution, so the gauge is good to about a second.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Final

from prometheus_client import CollectorRegistry, Gauge

from proxy.logs import get_logger

log = get_logger("signing_proxy")

WARN_ABOVE_SECONDS: Final = 30.0
WARN_EVERY_SECONDS: Final = 60.0


class ClockSkew:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "signing_proxy_clock_skew_seconds",
            "Local clock minus the upstream's Date header, per route (positive: we are ahead).",
            ["route"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._parsed: tuple[str, float] = ("", 0.0)  # Date changes once a second: parse once
        self._warned: dict[str, float] = {}
        self._seen: dict[str, str] = {}  # route -> the last Date header it was checked with

    def observe(self, route: str, date_header: str) -> None:
        if self._seen.get(route) == date_header:
            return  # checked already this second; the answer cannot change within it
        self._seen[route] = date_header
        upstream = self._parse(date_header)
        if upstream is None:
            return
        now = time.time()
        skew = round(now - upstream)  # whole seconds: the header's resolution
        self.gauge.labels(route).set(skew)
        if (
            abs(skew) > WARN_ABOVE_SECONDS
            and now - self._warned.get(route, 0.0) > WARN_EVERY_SECONDS
        ):
            self._warned[route] = now
            log.warning(
                "clock_skew",
                route=route,
                skew_seconds=skew,
                message="the local clock and the upstream's differ by more than 30 s; "
                "signed timestamps may be refused (check NTP)",
            )

    def _parse(self, header: str) -> float | None:
        if header == self._parsed[0]:
            return self._parsed[1]
        try:
            value = parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        self._parsed = (header, value)
        return value
