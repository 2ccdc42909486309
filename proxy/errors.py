"""How a request fails: before its response started, the proxy answers an HTTP status and
`{"error": {"code", "message", "route"}}` (`ProxyError`); after, it can only cut the connection
(`ResponseAborted`)."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.responses import AsGivenResponse


class ProxyError(Exception):
    """An error the proxy answers itself. `message` is shown to the client: never a secret."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.close = close  # the connection cannot carry another request (a body left unread)


class ResponseAborted(Exception):
    """The response had started when the upstream or the client failed: the client connection
    is cut so the client sees an incomplete response, never a truncated one that looks whole."""


def error_response(
    status: int,
    code: str,
    message: str,
    route: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, str | None] = {"code": code, "message": message}
    if route is not None:
        body["route"] = route
    return AsGivenResponse(
        status=status,
        body=orjson.dumps({"error": body}),
        headers={
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )
