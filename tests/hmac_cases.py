"""The vectors the `hmac` scheme is proved on, as cases that run through the signer (in process)
or through `signing-proxy sign --json` (a subprocess), with the routes of `config/hmac/`.

A case gives the route file, the env holding its credentials, the app's request, the fixed time
and nonce, and a check of the signed request. Both paths produce the same `Signed` view.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy.config import load_config
from proxy.signcmd import parse_time
from proxy.signers import SigningContext, build_signer
from tests.conftest import REPO, VECTORS, load_vectors
from tests.signers.helpers import request_for

HMAC_CONFIGS = REPO / "config" / "hmac"


@dataclass
class Signed:
    url: str
    headers: dict[str, str]  # lower-case names
    body: bytes | None
    string_to_sign: str


@dataclass
class Case:
    id: str
    config: str  # file name in config/hmac
    env: dict[str, str]
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    at: str | None
    nonce: str | None
    check: Callable[[Signed], None]
    public: frozenset[str] = frozenset()  # env values shown in clear (key ids)


def sign_in_process(case: Case, monkeypatch: Any) -> Signed:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    config = load_config(HMAC_CONFIGS / case.config)
    parts = urlsplit(case.url)
    route = next(
        r
        for r in config.routes
        if r.match.host == parts.hostname
        and (r.match.path_prefix is None or parts.path.startswith(r.match.path_prefix))
    )
    signer = build_signer(route.signer)
    headers = {"Host": parts.netloc, **case.headers}
    body = (case.body or b"") if signer.needs_body(case.method) else None
    request = request_for(case.url, case.method, headers, body)
    now_ms = parse_time(case.at) if case.at else 0
    result = signer.sign(request, SigningContext(now_ms=now_ms, nonce=case.nonce))
    out = result.request
    return Signed(
        out.url,
        {k.lower(): v for k, v in out.headers.items()},
        out.body if out.body is not None else case.body,
        result.string_to_sign,
    )


def sign_via_cli(case: Case, tmp_path: Path, *extra: str) -> Signed:
    args = [sys.executable, "-m", "proxy", "sign", "--config", str(HMAC_CONFIGS / case.config)]
    args += ["--json", "-X", case.method, *extra]
    for name, value in case.headers.items():
        args += ["-H", f"{name}: {value}"]
    if case.body is not None:
        body_path = tmp_path / "body.bin"
        body_path.write_bytes(case.body)
        args += ["--data-binary", f"@{body_path}"]
    if case.at is not None:
        args += ["--at", case.at]
    if case.nonce is not None:
        args += ["--nonce", case.nonce]
    args.append(case.url)
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**os.environ, **case.env}
    )
    assert result.returncode == 0, result.stderr
    for value in case.env.values():
        if value not in case.public:
            assert value not in result.stdout, "a secret was printed"
    out = json.loads(result.stdout)
    body = base64.b64decode(out["body_b64"]) if out["body_b64"] is not None else None
    headers = {k.lower(): v for k, v in out["headers"].items()}
    return Signed(out["url"], headers, body, out["string_to_sign"])


def query_pairs(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# -- hmac-apis.json: public APIs --------------------------------------------------------------

_API_ROUTES = {
    "binance": ("binance.yaml", "BINANCE_API_KEY", "BINANCE_SECRET"),
    "kraken": ("kraken.yaml", "KRAKEN_API_KEY", "KRAKEN_SECRET"),
    "alibaba": ("alibaba-rpc.yaml", "ALIBABA_ACCESS_KEY_ID", "ALIBABA_ACCESS_KEY_SECRET"),
    "slack": ("slack.yaml", None, "SLACK_SIGNING_SECRET"),
}


def api_vectors() -> list[dict[str, Any]]:
    data = json.loads((VECTORS / "hmac-apis.json").read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


def api_case(vector: dict[str, Any]) -> Case:
    config, key_var, secret_var = _API_ROUTES[vector["id"].split("-")[0]]
    creds = vector["credentials"]
    env = {secret_var: creds["secret"]}
    if key_var:
        env[key_var] = creds["key_id"]
    request = vector["request"]
    url = (
        vector["upstream"] + request["path"] + (f"?{request['query']}" if request["query"] else "")
    )
    body = request["body"].encode() if request["method"] not in {"GET", "HEAD"} else None
    expect = vector["expect"]

    def check(out: Signed) -> None:
        if "query" in expect:
            assert urlsplit(out.url).query == expect["query"]
        if "query_params" in expect:
            assert dict(query_pairs(out.url)) == expect["query_params"]
            assert len(query_pairs(out.url)) == len(expect["query_params"])
        for name, value in expect.get("headers", {}).items():
            assert out.headers.get(name.lower()) == value, name
        if "body" in expect:
            assert out.body == expect["body"].encode()
        if "string_to_sign" in expect:
            assert out.string_to_sign == expect["string_to_sign"]

    return Case(
        vector["id"], config, env, request["method"], url, dict(request["headers"]), body,
        str(vector["at"]), vector["nonce"], check,
        frozenset({creds["key_id"]} if creds["key_id"] else ()),
    )  # fmt: skip


# -- the vendor vectors, through config/hmac/<vendor>.yaml ------------------------------------

# Vectors whose expected output depends on a rule only the built-in scheme has, and why.
NEEDS_BUILTIN: dict[str, str] = {
    "devresults:case-duplicate-keys": "names equal ignoring case are merged into one parameter "
    "(ASP.NET's NameValueCollection); params() keeps them apart",
    "devresults:bracket-keys-raw": "a repeated name is signed once, its values joined with ',' "
    "(ASP.NET); params() lists each occurrence",
    "devresults:astral-vs-bmp-keys": "names sort by UTF-16 code units (.NET), params(sort=...) "
    "by code points: they differ for U+E000-U+FFFF against astral characters",
    "devo:standalone-token-get": "not HMAC: scheme devo-token sends a static token header",
    "devo:standalone-token-post": "not HMAC: scheme devo-token sends a static token header",
    "devengo:jwt-bearer-fallback": "not HMAC: the deprecated JWT fallback is scheme bearer",
    "jscrambler:default-option-values": "POST: parameters travel in a multipart form, files "
    "signed by MD5; the hmac scheme edits urlencoded forms only (415 otherwise)",
    "jscrambler:post-binary-file": "POST multipart with a file (see default-option-values)",
    "jscrambler:post-no-files": "POST multipart (see default-option-values)",
}
# Of those, the ones the hmac route does sign, differently (the rest are not HMAC, or not
# urlencoded): the test checks the difference is real.
SIGNED_DIFFERENTLY = frozenset(k for k in NEEDS_BUILTIN if k.startswith("devresults:"))

_VENDOR_ROUTES = {
    "devresults": ("devresults.yaml", {"token": "DEVRESULTS_TOKEN", "secret": "DEVRESULTS_SECRET"}),
    "devo": ("devo.yaml", {"api_key": "DEVO_API_KEY", "api_secret": "DEVO_API_SECRET"}),
    "devengo": ("devengo.yaml", {"api_key_id": "DEVENGO_API_KEY_ID", "secret": "DEVENGO_SECRET"}),
    "jscrambler": (
        "jscrambler.yaml",
        {"access_key": "JSCRAMBLER_ACCESS_KEY", "secret_key": "JSCRAMBLER_SECRET_KEY"},
    ),
}
_PUBLIC = {"token", "api_key", "api_key_id", "access_key"}


def _vendor_at(vector: dict[str, Any]) -> str | None:
    time = vector.get("time") or {}
    if "timestamp_s" in time:
        return str(int(time["timestamp_s"]) * 1000)
    for key in ("ms", "timestamp_ms", "timestamp"):
        if key in time:
            return str(time[key])
    return None


def vendor_case(scheme: str, vector: dict[str, Any]) -> Case:
    config, variables = _VENDOR_ROUTES[scheme]
    creds = vector["credentials"]
    env = {var: creds[field] for field, var in variables.items() if field in creds}
    body = None
    if vector.get("body_b64") is not None and not vector.get("body_absent"):
        body = base64.b64decode(vector["body_b64"])
    expected = vector["expected"] or {}

    def check(out: Signed) -> None:
        if "string_to_sign" in expected:
            assert out.string_to_sign == expected["string_to_sign"]
        if "signed_url" in expected:
            want = expected["signed_url"]
            assert urlsplit(out.url).query == urlsplit(want).query
            assert urlsplit(out.url).path == urlsplit(want).path
        for name, value in (expected.get("headers_out") or {}).items():
            assert out.headers.get(name.lower()) == value, name
        if "params_out" in expected:
            assert dict(query_pairs(out.url)) == expected["params_out"]

    return Case(
        f"{scheme}:{vector['name']}", config, env, vector["method"], vector["url"],
        dict(vector.get("headers_in") or {}), body, _vendor_at(vector), vector.get("nonce"),
        check, frozenset(v for k, v in creds.items() if k in _PUBLIC),
    )  # fmt: skip


def vendor_cases() -> list[Case]:
    return [
        vendor_case(scheme, vector)
        for scheme in _VENDOR_ROUTES
        for vector in load_vectors(scheme)
        if vector["expected"] is not None
    ]
