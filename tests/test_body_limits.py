"""Body limits that fit the scheme: 10 MiB (`max_body_bytes`) for bodies held in memory, 5 GiB
(`max_spooled_body_bytes`) for bodies hashed as they arrive and spooled to disk, an explicit
`max_body_bytes` capping both; a 413 names the setting to raise."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from proxy.body import WRITE_BATCH, SpooledBody
from proxy.config import parse_config
from proxy.errors import ProxyError
from tests.support import ProxyProcess, Upstream, running_proxy, running_upstream

MIB = 1024 * 1024
GIB = 1024 * MIB


def _s3(name: str, upstream: Upstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": f"/{name}"},
        "upstream": upstream.url,
        "signer": {
            "scheme": "aws-sigv4",
            "service": "s3",
            "region": "eu-west-1",
            "access_key_id": "AKIDEXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        },
        **extra,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with running_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = {
        "routes": [
            _s3("defaults", upstream),
            _s3("capped", upstream, max_body_bytes=MIB),
            _s3("spool-limit", upstream, max_spooled_body_bytes=2 * MIB),
        ]
    }
    with running_proxy(config, tmp_path_factory.mktemp("limits")) as running:
        yield running


def _chunks(data: bytes) -> Iterator[bytes]:  # no Content-Length: the limit is met mid-stream
    for start in range(0, len(data), 256 * 1024):
        yield data[start : start + 256 * 1024]


def test_a_20_mib_s3_put_passes_with_the_defaults(proxy: ProxyProcess, upstream: Upstream) -> None:
    body = bytes(range(256)) * (20 * MIB // 256)
    response = requests.put(f"{proxy.url}/defaults/bucket/key", data=body, timeout=60)
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    sent = dict((name.lower(), value) for name, value in seen["headers"])
    assert sent["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()  # signed, not streamed


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_explicit_max_body_bytes_caps_a_spooled_body(
    proxy: ProxyProcess, declared: bool
) -> None:
    body = b"x" * (2 * MIB)
    data = body if declared else _chunks(body)
    response = requests.put(f"{proxy.url}/capped/bucket/key", data=data, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "body_too_large"
    assert "max_body_bytes" in error["message"]
    assert "max_spooled_body_bytes" not in error["message"]
    _assert_logged(proxy, "capped", "routes[].max_body_bytes")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_413_names_max_spooled_body_bytes(proxy: ProxyProcess, declared: bool) -> None:
    body = b"y" * (3 * MIB)
    data = body if declared else _chunks(body)
    response = requests.put(f"{proxy.url}/spool-limit/bucket/key", data=data, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["route"]) == ("body_too_large", "spool-limit")
    assert "raise max_spooled_body_bytes" in error["message"]
    _assert_logged(proxy, "spool-limit", "routes[].max_spooled_body_bytes")


def _assert_logged(proxy: ProxyProcess, route: str, setting: str) -> None:
    found = [e for e in proxy.events("body_too_large") if e["route"] == route]
    assert found
    assert {e["setting"] for e in found} == {setting}
    assert proxy.request_events(route=route, error="body_too_large")


def _route(**extra: Any) -> Any:
    route = {
        "name": "r",
        "match": {"path_prefix": "/"},
        "upstream": "https://a.example.com",
        "signer": {"scheme": "bearer", "token": "t"},
        **extra,
    }
    return parse_config(yaml.safe_dump({"routes": [route]})).routes[0]


def test_body_limit_rules() -> None:
    defaults = _route()
    assert defaults.body_limit(spooled=False) == (10 * MIB, "max_body_bytes")
    assert defaults.body_limit(spooled=True) == (5 * GIB, "max_spooled_body_bytes")
    capped = _route(max_body_bytes=MIB)
    assert capped.body_limit(spooled=True) == (MIB, "max_body_bytes")
    assert capped.body_limit(spooled=False) == (MIB, "max_body_bytes")
    above = _route(max_body_bytes=8 * GIB, max_spooled_body_bytes=GIB)
    assert above.body_limit(spooled=True) == (GIB, "max_spooled_body_bytes")
    assert above.body_limit(spooled=False) == (8 * GIB, "max_body_bytes")


async def test_a_full_spool_directory_is_a_507_not_a_crash() -> None:
    body = SpooledBody()
    body.close()
    with Path("/dev/full").open("wb", buffering=0) as full:  # every write: ENOSPC
        body._file = full
        with pytest.raises(ProxyError) as raised:
            await body.write(b"z" * WRITE_BATCH)
    assert (raised.value.status, raised.value.code) == (507, "spool_full")
    assert "max_spooled_body_bytes" in raised.value.message
