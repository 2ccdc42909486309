"""One small adapter per client library, each configured as a forwarding proxy needs it.

Every adapter: no redirects followed, no decompression, no added headers where the library
allows it, the given TLS verification (True, False, or a CA file path) and timeouts (s).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

Headers = Sequence[tuple[str, str]]
Body = AsyncIterator[bytes] | None


@dataclass(frozen=True)
class Settings:
    verify: bool | str = True  # str: CA file
    connect: float = 5.0
    read: float = 30.0
    total: float = 60.0


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]


class Adapter(Protocol):
    name: str

    def stream(
        self, method: str, url: str, headers: Headers, body: Body = None
    ) -> AbstractAsyncContextManager[Reply]: ...

    async def close(self) -> None: ...


async def read_all(reply: Reply) -> bytes:
    return b"".join([chunk async for chunk in reply.chunks])


class AiohttpAdapter:
    """Configured like proxy/forward.py's Forwarder."""

    name = "aiohttp"

    def __init__(self, settings: Settings) -> None:
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=settings.verify)
            if isinstance(settings.verify, str)
            else settings.verify
        )
        self._timeout = aiohttp.ClientTimeout(
            total=settings.total, connect=settings.connect, sock_read=settings.read
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Headers, body: Body = None
    ) -> AsyncIterator[Reply]:
        async with self._session.request(
            method,
            URL(url, encoded=True),
            headers=CIMultiDict(headers),
            data=body,
            allow_redirects=False,
            ssl=self._ssl,
            timeout=self._timeout,
        ) as response:
            yield Reply(
                response.status,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
                response.content.iter_chunked(64 * 1024),
            )

    async def close(self) -> None:
        await self._session.close()


class RnetAdapter:
    name = "rnet"

    def __init__(self, settings: Settings) -> None:
        import rnet

        verify: bool | Path = (
            Path(settings.verify) if isinstance(settings.verify, str) else settings.verify
        )
        # rnet's timeouts are whole seconds (int): sub-second route timeouts cannot be set.
        self._client = rnet.Client(
            allow_redirects=False,
            gzip=False,
            brotli=False,
            deflate=False,
            zstd=False,
            cookie_store=False,
            verify=verify,
            connect_timeout=max(1, round(settings.connect)),
            read_timeout=max(1, round(settings.read)),
            timeout=max(1, round(settings.total)),
        )
        self._rnet = rnet

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Headers, body: Body = None
    ) -> AsyncIterator[Reply]:
        rnet = self._rnet
        header_map = rnet.HeaderMap()
        for key, value in headers:
            header_map.append(key, value)
        kwargs: dict[str, object] = {"headers": header_map}
        if body is not None:
            kwargs["body"] = body
        response = await self._client.request(getattr(rnet.Method, method), url, **kwargs)  # type: ignore[arg-type]
        try:
            pairs = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.items()
            ]
            yield Reply(int(response.status), pairs, _aiter(response.stream()))
        finally:
            await response.close()

    async def close(self) -> None:
        return None


async def _aiter(stream: object) -> AsyncIterator[bytes]:
    async for chunk in stream:  # type: ignore[attr-defined]
        yield bytes(chunk)


class PyreqwestAdapter:
    name = "pyreqwest"

    def __init__(self, settings: Settings) -> None:
        from pyreqwest.client import ClientBuilder

        builder = (
            ClientBuilder()
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .deflate(False)
            .zstd(False)
            .connect_timeout(timedelta(seconds=settings.connect))
            .read_timeout(timedelta(seconds=settings.read))
            .timeout(timedelta(seconds=settings.total))
        )
        if settings.verify is False:
            builder = builder.danger_accept_invalid_certs(True)
        elif isinstance(settings.verify, str):
            builder = builder.add_root_certificate_pem(Path(settings.verify).read_bytes())
        self._client = builder.build()

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Headers, body: Body = None
    ) -> AsyncIterator[Reply]:
        from pyreqwest.http import HeaderMap

        builder = self._client.request(method, url).headers(HeaderMap(list(headers)))
        if body is not None:
            builder = builder.body_stream(body)
        async with builder.build_streamed() as response:
            reader = response.body_reader

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(1 << 30):
                    chunk = await reader.read_chunk()
                    if chunk is None:
                        return
                    yield bytes(chunk)

            yield Reply(response.status, list(response.headers.items()), chunks())

    async def close(self) -> None:
        await self._client.close()


class CurlCffiAdapter:
    name = "curl_cffi"

    def __init__(self, settings: Settings) -> None:
        from curl_cffi.requests import AsyncSession

        self._session = AsyncSession(
            verify=settings.verify,
            timeout=(settings.connect, settings.read),
            allow_redirects=False,
            default_headers=False,
            max_clients=64,
        )

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Headers, body: Body = None
    ) -> AsyncIterator[Reply]:
        response = await self._session.request(
            method,  # type: ignore[arg-type]
            url,
            headers=list(headers),
            content=body,
            stream=True,
            accept_encoding=None,  # else curl adds Accept-Encoding and decodes the body
            quote=False,  # else the path is re-quoted (%7E -> ~)
        )
        try:
            pairs = list(response.headers.multi_items())
            yield Reply(response.status_code, pairs, response.aiter_content())
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._session.close()


FACTORIES = {
    "aiohttp": AiohttpAdapter,
    "rnet": RnetAdapter,
    "pyreqwest": PyreqwestAdapter,
    "curl_cffi": CurlCffiAdapter,
}
