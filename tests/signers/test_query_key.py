"""`query-key`: the key replaces the app's parameter in place (names compared decoded), is
appended when absent, and every other query byte is kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from proxy.config import ConfigError, parse_config
from proxy.signers import SigningContext, build_signer
from proxy.signers.query_key import QueryKeyConfig
from tests.signers.helpers import request_for
from tests.support import route, running_proxy, running_upstream

KEY = "k3y/with space&amp=ü"
ENCODED = "k3y%2Fwith%20space%26amp%3D%C3%BC"


def _sign(query: str, name: str = "api_key", value: str = KEY) -> str:
    signer = build_signer(QueryKeyConfig(scheme="query-key", name=name, value=value))
    url = "https://api.example.com/v1/items" + (f"?{query}" if query else "")
    return signer.sign(request_for(url, "GET"), SigningContext(0)).request.query


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", f"api_key={ENCODED}"),
        ("a=1&b=2", f"a=1&b=2&api_key={ENCODED}"),
        ("a=1&api_key=stale&b=2", f"a=1&api_key={ENCODED}&b=2"),  # in place
        ("api%5Fkey=stale&a=%zz", f"api_key={ENCODED}&a=%zz"),  # decoded name; odd bytes kept
        ("api_key&a=1", f"api_key={ENCODED}&a=1"),  # a bare name is a copy too
        ("api_key=1&x=2&api_key=3", f"api_key={ENCODED}&x=2"),  # further copies dropped
        ("API_KEY=1", f"API_KEY=1&api_key={ENCODED}"),  # names are case-sensitive
        ("q=a+b&&c", f"q=a+b&&c&api_key={ENCODED}"),  # empty segments and + kept as sent
    ],
)
def test_the_key_replaces_or_is_appended(query: str, expected: str) -> None:
    assert _sign(query) == expected


def test_a_name_that_needs_encoding_is_matched_decoded() -> None:
    assert _sign("api+key=old&z=1", name="api key", value="v") == "api%20key=v&z=1"


def test_repr_hides_the_key() -> None:
    signer = build_signer(QueryKeyConfig(scheme="query-key", name="api_key", value=KEY))
    assert KEY not in repr(signer)
    assert "api_key" in repr(signer)


def test_config_errors_name_the_key() -> None:
    text = yaml.safe_dump(
        {
            "routes": [
                {
                    "name": "q",
                    "match": {"path_prefix": "/q"},
                    "upstream": "https://api.example.com",
                    "signer": {"scheme": "query-key", "name": "", "value": "v"},
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "routes[0].signer.name" in str(err.value)
    assert "must not be empty" in str(err.value)


def test_end_to_end_and_sign_output_redacts(tmp_path: Path) -> None:
    with running_upstream() as upstream:
        config = {
            "routes": [
                route(
                    "q",
                    upstream.url,
                    {"scheme": "query-key", "name": "api_key", "value": {"env": "QK_VALUE"}},
                    match={"path_prefix": "/q"},
                )
            ]
        }
        with running_proxy(config, tmp_path, env={"QK_VALUE": KEY}) as proxy:
            answer = requests.get(f"{proxy.url}/q/items?api_key=app-sent&x=1", timeout=10)
            assert answer.status_code == 200
            assert upstream.seen[-1].raw_path == f"/items?api_key={ENCODED}&x=1"
            proxy.stop()
            assert ENCODED not in proxy.logs()
            assert KEY not in proxy.logs()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", "--config", str(tmp_path / "config.yaml"), "/q/x"],
        capture_output=True,
        text=True,
        env={"QK_VALUE": KEY, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "api_key=<redacted value>" in result.stdout
    assert ENCODED not in result.stdout
    assert KEY not in result.stdout
