"""proxy/http.py: one list of headers the proxy manages, used by the config and the signers."""

from __future__ import annotations

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from proxy.config import ConfigError, parse_config
from proxy.http import (
    HOP_BY_HOP,
    MANAGED_HEADERS,
    are_field_names,
    connection_tokens,
    is_field_name,
    strip_hop_by_hop,
)
from proxy.signers.header import HeaderConfig


def _route(**extra: object) -> str:
    route = {
        "name": "a",
        "match": {"path_prefix": "/a"},
        "upstream": "https://x.example.com",
        "signer": {"scheme": "bearer", "token": "t"},
        **extra,
    }
    return yaml.safe_dump({"routes": [route]})


@pytest.mark.parametrize("name", sorted(MANAGED_HEADERS))
def test_every_managed_header_is_refused_as_a_static_edit(name: str) -> None:
    for edit, path in (
        ({"set": {name.title(): "x"}}, "routes[0].headers.set"),
        ({"remove": [name.upper()]}, "routes[0].headers.remove"),
    ):
        with pytest.raises(ConfigError) as error:
            parse_config(_route(headers=edit))
        [problem] = error.value.problems
        assert (problem.path, "managed by the proxy" in problem.message) == (path, True)


@pytest.mark.parametrize("name", sorted(MANAGED_HEADERS))
def test_every_managed_header_is_refused_by_the_header_signer(name: str) -> None:
    with pytest.raises(ValidationError, match="manages"):
        HeaderConfig(scheme="header", name=name.title(), value="v")


def test_ordinary_headers_are_still_accepted() -> None:
    config = parse_config(_route(headers={"set": {"X-Tenant": "a"}, "remove": ["Cookie"]}))
    assert config.routes[0].headers.set == {"X-Tenant": "a"}
    assert HeaderConfig(scheme="header", name="X-Api-Key", value="v").name == "X-Api-Key"


def test_the_managed_list_covers_framing_routing_and_every_hop_by_hop_header() -> None:
    assert HOP_BY_HOP < MANAGED_HEADERS
    assert {"host", "content-length", "transfer-encoding", "connection", "expect"} <= (
        MANAGED_HEADERS
    )


def test_field_names() -> None:
    assert is_field_name("X-Api_Key.1~")
    assert not is_field_name("Content-Length ")
    assert not is_field_name("")
    assert not is_field_name("a:b")
    assert are_field_names(["A", "b-c"])
    assert not are_field_names(["A", "Content-Length "])


def test_hop_by_hop_headers_and_the_ones_connection_names_are_dropped() -> None:
    headers = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Connection", "keep-alive, X-Drop"),
                ("Keep-Alive", "timeout=5"),
                ("X-Drop", "1"),
                ("Proxy-Authorization", "Basic x"),
                ("TE", "trailers"),
                ("Content-Length", "3"),
                ("X-Keep", "1"),
            ]
        )
    )
    assert connection_tokens(headers) == {"keep-alive", "x-drop"}
    assert list(strip_hop_by_hop(headers).items()) == [("Content-Length", "3"), ("X-Keep", "1")]
    assert list(strip_hop_by_hop(headers, frozenset({"content-length"})).keys()) == ["X-Keep"]
