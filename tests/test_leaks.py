"""Nothing the proxy emits — logs, metrics, error bodies, CLI output — contains a secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests
import yaml
from aiohttp import web

from tests.support import free_port, running_proxy, running_upstream

# Distinctive values: a hit can only be a leak.
SECRETS = {
    "LEAK_BEARER": "leak-bearer-Zq81xT0p",
    "LEAK_DEVO_SECRET": "leak-devo-secret-Hh27Wm",
    "LEAK_DR_SECRET": "leak-devresults-secret-Pp90",
    "LEAK_HEADER": "leak-header-value-Ka44",
    "LEAK_QUERY_KEY": "leak-query-key-Ub62",
}


def _config(upstream_url: str, secret_dir: Path) -> dict[str, object]:
    (secret_dir / "devo-secret").write_text(SECRETS["LEAK_DEVO_SECRET"] + "\n")
    return {
        "routes": [
            {
                "name": "bearer",
                "match": {"path_prefix": "/bearer"},
                "upstream": upstream_url,
                "signer": {"scheme": "bearer", "token": {"env": "LEAK_BEARER"}},
            },
            {
                "name": "devo",
                "match": {"path_prefix": "/devo"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "devo",
                    "api_key": "public-key-id",
                    "api_secret": {"file": str(secret_dir / "devo-secret")},
                },
                "max_body_bytes": 64,
            },
            {
                "name": "devresults",
                "match": {"path_prefix": "/dr"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "devresults",
                    "token": "public-token",
                    "secret": {"env": "LEAK_DR_SECRET"},
                },
            },
            {
                "name": "header",
                "match": {"path_prefix": "/dead"},
                "upstream": f"http://127.0.0.1:{free_port()}",
                "signer": {"scheme": "header", "name": "X-Key", "value": {"env": "LEAK_HEADER"}},
            },
            {
                "name": "query-key",
                "match": {"path_prefix": "/qk"},
                "upstream": upstream_url,
                "signer": {
                    "scheme": "query-key",
                    "name": "key",
                    "value": {"env": "LEAK_QUERY_KEY"},
                },
            },
        ]
    }


def _assert_clean(label: str, text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked into {label}"


def test_nothing_emitted_contains_a_secret(tmp_path: Path) -> None:
    emitted: list[tuple[str, str]] = []
    with running_upstream() as upstream:

        async def quiet(request: web.BaseRequest) -> web.Response:
            await upstream.record(request)  # an echo would reflect the credentials back
            return web.Response(text="ok")

        upstream.handlers["/"] = quiet
        config = _config(upstream.url, tmp_path)
        with running_proxy(config, tmp_path, env=SECRETS) as proxy:
            calls = [
                ("GET", "/bearer/x?q=1", None),
                ("POST", "/devo/x", b'{"a": 1}'),
                ("POST", "/devo/x", b"x" * 200),  # 413
                ("GET", "/dr/x?t=stale&s=stale", None),
                ("GET", "/dead/x", None),  # 502
                ("GET", "/qk/x?key=app&y=1", None),
                ("GET", "/qk/../x?key=app", None),  # 400
                ("GET", "/nowhere", None),  # 403
                ("GET", "/bearer/../x", None),  # 400 (requests keeps it raw)
            ]
            for method, path, body in calls:
                response = requests.request(method, proxy.url + path, data=body, timeout=10)
                emitted.append((f"{method} {path} body", response.text))
                emitted.append((f"{method} {path} headers", repr(dict(response.headers))))
            emitted.append(("metrics", requests.get(proxy.admin_url + "/metrics", timeout=5).text))
            for path in ("/healthz", "/readyz", "/config", "/"):
                emitted.append((path, requests.get(proxy.admin_url + path, timeout=5).text))
            code = proxy.stop()
        assert code == 0
        emitted.append(("logs", proxy.logs()))
        # The upstream did get the credentials: the scan is not vacuous.
        assert any(
            s.headers.get("Authorization") == f"Bearer {SECRETS['LEAK_BEARER']}"
            for s in upstream.seen
        )
        assert any(f"key={SECRETS['LEAK_QUERY_KEY']}" in s.raw_path for s in upstream.seen)

        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {**SECRETS, "PATH": "/usr/bin:/bin"}
        for args in (
            ["check", "--config", str(config_path)],
            ["sign", "--config", str(config_path), "http://127.0.0.1/bearer/x"],
            ["sign", "--config", str(config_path), "--json", "--data", "{}", "http://h/devo/x"],
            ["sign", "--config", str(config_path), "http://h/dr/x?a=1"],
            ["sign", "--config", str(config_path), "--route", "header", "http://h/y"],
            ["sign", "--config", str(config_path), "--json", "http://h/qk/x?key=1"],
        ):
            result = subprocess.run(
                [sys.executable, "-m", "proxy", *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            emitted.append((" ".join(args[:1]), result.stdout + result.stderr))
    assert len(emitted) > 20
    for label, text in emitted:
        _assert_clean(label, text)
