"""Shared by the per-scheme signer tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.signers.base import UpstreamRequest


def request_for(
    url: str,
    method: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> UpstreamRequest:
    """The request a signer is handed, for `method url`: the URL's host, raw path and raw
    query, the headers in the order given."""
    parts = urlsplit(url)
    return UpstreamRequest(
        method=method,
        scheme=parts.scheme,
        host=parts.netloc,
        path=parts.path,
        query=parts.query,
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
        body=body,
    )
