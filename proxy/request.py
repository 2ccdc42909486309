"""The app's request made into the request to sign: its body read first when the route's scheme
signs it (held in memory, or spooled to disk past `spool_threshold_bytes`), hop-by-hop headers
dropped, the route's header edits applied, `Host` and the path mapped onto the upstream's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.body import SpooledBody, body_too_large
from proxy.config import RouteConfig
from proxy.errors import ProxyError
from proxy.forward import CHUNK_SIZE
from proxy.http import HOP_BY_HOP, connection_tokens
from proxy.logs import body_refusal_reason
from proxy.routing import RouteMatch
from proxy.signers import BodyDigest, UpstreamRequest


async def read_request(request: web.BaseRequest, match: RouteMatch, query: str) -> UpstreamRequest:
    """The request to sign. Its body is read first when the route's scheme signs it; otherwise
    it streams upstream later. A spooled body is closed by whoever holds the result."""
    signer = match.route.signer
    if not signer.needs_body(request.method):
        await send_continue(request)
        # A streamed body's Content-Length is the number the parser read, written by the
        # proxy (admission refused every spelling but plain decimal), never the client's text.
        return prepare_upstream(
            match, request.method, query, request.headers, None, streamed=request.content_length
        )
    body = await read_body(request, match.route.config, signer.new_body_digest())
    if body.spooled is None:
        return prepare_upstream(match, request.method, query, request.headers, body.data)
    try:
        return prepare_upstream(
            match,
            request.method,
            query,
            request.headers,
            None,
            spooled=body.spooled,
            body_digest=body.digest,
        )
    except BaseException:
        body.spooled.close()
        raise


def prepare_upstream(
    match: RouteMatch,
    method: str,
    query: str,
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    body: bytes | None,
    *,
    spooled: SpooledBody | None = None,
    body_digest: BodyDigest | None = None,
    streamed: int | None = None,
) -> UpstreamRequest:
    """The request to sign: the app's request minus hop-by-hop headers, with the route's static
    header edits, `Host` set to the upstream's, `Content-Length` set to the size of a body read
    for signing (`body`, or `spooled` with the `body_digest` fed as it was read) or to the
    declared length of a body that streams (`streamed`), and the path
    mapped onto the upstream's. One pass over the app's headers, which keep their order."""
    route = match.route
    edited = route.edited_headers
    named = connection_tokens(headers)
    if body is not None:
        length: str | None = str(len(body))
    elif spooled is not None:
        length = str(spooled.size)
    else:
        length = None if streamed is None else str(streamed)
    out: CIMultiDict[str] = CIMultiDict()
    host_done = length_done = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "host":
            if not host_done:
                out.add(name, route.upstream_host)
                host_done = True
            continue
        if (
            lowered in HOP_BY_HOP
            or lowered in edited
            or lowered.startswith("proxy-")
            or (named and lowered in named)
        ):
            continue
        if length is not None and lowered == "content-length":
            if value != length or length_done:  # the body we send decides its length
                continue
            length_done = True
        out.add(name, value)
    out.extend(route.config.headers.set)
    if not host_done:
        out.add("Host", route.upstream_host)
    if length is not None and not length_done:
        out.add("Content-Length", length)
    return UpstreamRequest(
        method=method,
        scheme=route.upstream_scheme,
        host=route.upstream_host,
        path=match.path,
        query=query,
        headers=CIMultiDictProxy(out),
        body=body,
        body_digest=body_digest,
        spooled=spooled,
    )


@dataclass(slots=True)
class ReadBody:
    """A body read for signing: `data` in memory, or `spooled` to disk with its `digest`."""

    data: bytes | None
    spooled: SpooledBody | None = None
    digest: BodyDigest | None = None


async def read_body(
    request: web.BaseRequest, route: RouteConfig, digest: BodyDigest | None
) -> ReadBody:
    """The whole request body, refusing (413) anything over the route's limit (`body_limit`).

    Past `spool_threshold_bytes`, when the scheme can hash incrementally (`digest`), the body
    goes to a temporary file while `digest` is fed, so memory stays flat whatever the size.
    """
    limit, setting = route.body_limit(spooled=digest is not None)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise body_too_large(route.name, limit, setting)
    await send_continue(request)
    if declared is not None and (digest is None or declared <= route.spool_threshold_bytes):
        return ReadBody(await _read_declared(request, declared))
    memory = bytearray()
    spooled: SpooledBody | None = None
    size = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK_SIZE):
            size += len(chunk)
            if size > limit:
                raise body_too_large(route.name, limit, setting)
            if spooled is not None:
                digest.update(chunk)  # type: ignore[union-attr]
                await spooled.write(chunk)
                continue
            memory += chunk
            if digest is not None and size > route.spool_threshold_bytes:
                spooled = SpooledBody()
                digest.update(bytes(memory))
                await spooled.write(memory)
                memory = bytearray()
        if spooled is not None:
            await spooled.finish()
    except (HttpProcessingError, web.RequestPayloadError) as err:
        if spooled is not None:
            spooled.close()
        raise _malformed(err) from None
    except BaseException:
        if spooled is not None:
            spooled.close()
        raise
    if spooled is not None:
        return ReadBody(None, spooled, digest)
    return ReadBody(bytes(memory))


async def _read_declared(request: web.BaseRequest, length: int) -> bytes:
    """A body of known length, under the spool threshold: one read, no per-chunk loop."""
    if length == 0:
        return b""  # aiohttp's reader for "no body" refuses even a read of 0 bytes
    try:
        return await request.content.readexactly(length)
    except asyncio.IncompleteReadError as err:
        message = f"the request body ended after {len(err.partial)} of its {length} bytes"
        raise ProxyError(400, "invalid_body", message) from None
    except (HttpProcessingError, web.RequestPayloadError) as err:
        raise _malformed(err) from None


def _malformed(err: HttpProcessingError | web.RequestPayloadError) -> ProxyError:
    # The parser's message can quote the body's bytes: its reason only, as logged.
    reason = body_refusal_reason(err)
    return ProxyError(400, "invalid_body", f"the request body is malformed: {reason}")


async def send_continue(request: web.BaseRequest) -> None:
    # The low-level server does not answer `Expect: 100-continue`; clients such as curl then
    # stall a second before each large upload. We take the body, so say so.
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
