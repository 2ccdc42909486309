"""Gigabyte bodies in flat memory, measured on the real process (peak RSS, VmHWM).

A streaming route carries 1 GiB up and 1 GiB down; a route whose scheme hashes the body (devo)
takes a 1 GiB signed upload by spooling it to an unlinked temporary file while hashing, and the
temporary file is gone on every path: success, upstream error, client abort.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp import web

from tests.support import ProxyProcess, Upstream, free_port, running_proxy, running_upstream

MIB = 1024 * 1024
GIB = 1024 * MIB
CHUNK = os.urandom(MIB)
API_KEY, API_SECRET = "gig-key", "gig-secret-4b1d"

pytestmark = pytest.mark.slow


def _pattern(total: int) -> Iterator[bytes]:
    for start in range(0, total, len(CHUNK)):
        yield CHUNK[: min(len(CHUNK), total - start)]


def _sha256(total: int) -> str:
    digest = hashlib.sha256()
    for piece in _pattern(total):
        digest.update(piece)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:

        async def download(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse()
            response.content_length = GIB
            await response.prepare(request)
            for piece in _pattern(GIB):
                await response.write(piece)
            await response.write_eof()
            return response

        async def devo_verify(request: web.BaseRequest) -> web.Response:
            # Devo's HMAC over key || body || timestamp, computed as the body streams in.
            mac = hmac.new(API_SECRET.encode(), API_KEY.encode(), hashlib.sha256)
            size = 0
            async for chunk in request.content.iter_chunked(MIB):
                mac.update(chunk)
                size += len(chunk)
            mac.update(request.headers["x-logtrust-timestamp"].encode())
            ok = hmac.compare_digest(mac.hexdigest(), request.headers["x-logtrust-sign"])
            return web.json_response({"verified": ok, "size": size}, status=200 if ok else 401)

        server.handlers["/download"] = download
        server.handlers["/devo"] = devo_verify
        yield server


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def proxy(
    upstream: Upstream, spool_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    devo = {"scheme": "devo", "api_key": API_KEY, "api_secret": API_SECRET}
    config = {
        "routes": [
            {
                "name": "stream",
                "match": {"path_prefix": "/s"},
                "upstream": upstream.url,
                "signer": {"scheme": "bearer", "token": "t"},
            },
            {
                "name": "devo",
                "match": {"path_prefix": "/devo"},
                "upstream": f"{upstream.url}/devo",
                "signer": devo,
                "max_body_bytes": 2 * GIB,
            },
            {
                "name": "devo-dead",
                "match": {"path_prefix": "/dead"},
                "upstream": f"http://127.0.0.1:{free_port()}",
                "signer": devo,
                "max_body_bytes": 2 * GIB,
            },
        ]
    }
    workdir = tmp_path_factory.mktemp("gig")
    with running_proxy(config, workdir, env={"TMPDIR": str(spool_dir)}) as process:
        yield process


def _spooled_files(proxy: ProxyProcess, spool_dir: Path) -> list[str]:
    """The proxy's open files in the spool directory (unlinked ones show as '(deleted)')."""
    assert proxy.process is not None
    found = []
    for fd in Path(f"/proc/{proxy.process.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(spool_dir)):
            found.append(target)
    return found


def _no_spool_left(proxy: ProxyProcess, spool_dir: Path) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not _spooled_files(proxy, spool_dir) and not list(spool_dir.iterdir()):
            return True
        time.sleep(0.1)
    return False


def test_1_gib_upload_streams_in_flat_memory(proxy: ProxyProcess, upstream: Upstream) -> None:
    response = requests.post(f"{proxy.url}/s/up", data=_pattern(GIB), timeout=300)
    assert response.status_code == 200
    assert upstream.seen[-1].body_len == GIB
    assert upstream.seen[-1].body_sha256 == _sha256(GIB)
    peak = proxy.peak_rss_bytes()
    assert peak <= 60 * MIB, f"peak RSS {peak / MIB:.1f} MiB"


def test_1_gib_download_streams_in_flat_memory(proxy: ProxyProcess) -> None:
    digest, size = hashlib.sha256(), 0
    with requests.get(f"{proxy.url}/s/download", stream=True, timeout=300) as response:
        assert response.status_code == 200
        for piece in response.iter_content(MIB):
            digest.update(piece)
            size += len(piece)
    assert size == GIB
    assert digest.hexdigest() == _sha256(GIB)
    peak = proxy.peak_rss_bytes()
    assert peak <= 60 * MIB, f"peak RSS {peak / MIB:.1f} MiB"


def test_1_gib_signed_upload_spools_and_verifies(proxy: ProxyProcess, spool_dir: Path) -> None:
    response = requests.post(f"{proxy.url}/devo/up", data=_pattern(GIB), timeout=600)
    assert response.status_code == 200, response.text
    assert response.json() == {"verified": True, "size": GIB}
    peak = proxy.peak_rss_bytes()
    assert peak <= 100 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
    assert _no_spool_left(proxy, spool_dir)


def test_spool_removed_after_upstream_error(proxy: ProxyProcess, spool_dir: Path) -> None:
    response = requests.post(f"{proxy.url}/dead/up", data=_pattern(8 * MIB), timeout=60)
    assert response.status_code == 502
    assert _no_spool_left(proxy, spool_dir)


def test_spool_removed_after_client_abort(proxy: ProxyProcess, spool_dir: Path) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /devo/up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (64 * MIB)
        )
        for piece in _pattern(8 * MIB):  # past the spool threshold, then gone
            sock.sendall(piece)
        deadline = time.monotonic() + 5
        while not _spooled_files(proxy, spool_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _spooled_files(proxy, spool_dir), "the body was not spooled"
    assert _no_spool_left(proxy, spool_dir)
    assert requests.get(f"{proxy.url}/s/after", timeout=10).status_code == 200
