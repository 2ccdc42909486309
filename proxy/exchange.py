"""The per-request record: what happened to one request, for the access log and the metrics.

Created by the handler for each request and filled in as the request moves along; nothing in
it is shared between requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Exchange:
    method: str
    path: str
    started: float
    route: str | None = None
    status: int = 0  # the status answered (0 until there is one)
    # The response's status line and headers went out: from then on a failure can only cut
    # the connection (`ResponseAborted`), never answer an error.
    response_started: bool = False
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_host: str | None = None
    upstream_seconds: float | None = None
    upstream_date: str | None = None  # the upstream's Date header, for the clock-skew check
    aborted: bool = False  # the response started and was then cut off
