"""The responses the proxy sends: aiohttp's, minus the headers aiohttp adds on its own.

When a response lacks them, aiohttp's `prepare()` adds a `Server` banner naming Python's and
aiohttp's versions and, to a response with a body, `Content-Type: application/octet-stream`.
A relayed response must carry the upstream's headers and no others (a body the upstream left
untyped stays untyped), and the proxy's own answers have no reason to announce its versions.
`Date` is still added when missing, as RFC 9110 (6.6.1) asks of a recipient that forwards a
response; framing headers (`Content-Length`, `Transfer-Encoding`) are the proxy's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import hdrs, web
from multidict import CIMultiDict

_ADDED_BY_AIOHTTP: Final = (hdrs.SERVER, hdrs.CONTENT_TYPE)


class AsGivenStreamResponse(web.StreamResponse):
    """A `web.StreamResponse` that goes out with the headers it was given (plus framing, `Date`)."""

    def __init__(self, *, headers: CIMultiDict[str] | Mapping[str, str], **kwargs: Any) -> None:
        # Noted before aiohttp sees them: `web.Response` types its body while it is built.
        self._not_given = tuple(name for name in _ADDED_BY_AIOHTTP if name not in headers)
        super().__init__(headers=headers, **kwargs)

    async def _prepare_headers(self) -> None:
        # aiohttp's own (private) step of `prepare()` that fills in the headers before they are
        # written: there is no public switch. tests/test_faults.py fails if this stops working.
        await super()._prepare_headers()
        for name in self._not_given:
            self._headers.popall(name, None)


class AsGivenResponse(AsGivenStreamResponse, web.Response):
    """A `web.Response` (the whole body at once) that goes out with the headers it was given."""
