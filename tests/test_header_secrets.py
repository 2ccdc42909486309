"""Secrets that go into a header are header-safe: a control character (C0 but tab, and DEL) in
one is a config error naming its key, never its value, at load and at reload. Once it passed
`check` and failed every request as aiohttp's plain-text 500.

Which fields are header-bound is declared on the field (`HeaderSecretValue`); the tests below
check that declaration against what each scheme really sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import AccessConfig, ConfigError, parse_config
from proxy.secrets import Secret, is_header_bound, resolve_header_secret
from proxy.signers import BUILTIN_SCHEMES, SIGNERS, SigningContext, build_signer
from tests.signers.helpers import request_for

pytestmark = pytest.mark.smoke  # also run on the lowest dependency versions (.ci/run)

# A route's signer block per scheme, every secret distinctive, so it can be found where it goes.
SAMPLES: dict[str, dict[str, Any]] = {
    "bearer": {"token": "sample-bearer-token"},
    "header": {"name": "X-Api-Key", "value": "sample-header-value"},
    "devresults": {"token": "sample-dr-token", "secret": "sample-dr-secret"},
    "devo": {"api_key": "sample-devo-key", "api_secret": "sample-devo-secret"},
    "devo-token": {"token": "sample-devo-token"},
    "jscrambler": {"access_key": "SAMPLEJSACCESS", "secret_key": "SAMPLEJSSECRET"},
    "devengo": {"api_key_id": "sample-devengo-id", "secret": "sample-devengo-secret"},
    "aws-sigv4": {
        "service": "execute-api",
        "region": "eu-west-1",
        "access_key_id": "AKIDSAMPLEAWSKEY",
        "secret_access_key": "sample-aws-secret",
        "session_token": "sample-aws-session-token",
    },
    "http-message-signatures": {
        "key_id": "sample-9421-key-id",
        "algorithm": "hmac-sha256",
        "key": "sample-9421-hmac-key",
        "components": ["@method", "@path"],
    },
    "hmac": {
        "key_id": "sample-hmac-key-id",
        "secret": "sample-hmac-secret",
        "vars": {"ts": {"now": "epoch_ms"}},
        "sign": {"algorithm": "hmac-sha256", "key": "{secret}", "message": "{method}{path}{ts}"},
        "after_sign": {"headers": {"Authorization": "HMAC {key_id}:{signature}"}},
    },
    "http-signatures-cavage": {
        "key_id": "sample-cavage-key-id",
        "algorithm": "hmac-sha256",
        "key": "sample-cavage-hmac-key",
    },
    "query-key": {"name": "api_key", "value": "sample-query-key"},
    # Its secrets go to the token endpoint (base64 in Basic, or form fields), never upstream.
    "oauth2-client-credentials": {
        "token_url": "https://auth.example.com/token",
        "client_id": "sample-oauth-client-id",
        "client_secret": "sample-oauth-client-secret",
    },
}


def _route(scheme: str, signer: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "r",
        "match": {"path_prefix": "/"},
        "upstream": "https://api.example.com",
        "signer": {"scheme": scheme, **signer},
    }


def _header_bound_fields(model: type[Any]) -> list[str]:
    return [name for name, field in model.model_fields.items() if is_header_bound(field)]


CASES = [
    (scheme, name)
    for scheme in sorted(BUILTIN_SCHEMES)
    for name in _header_bound_fields(SIGNERS[scheme].config_model)
]


def test_every_scheme_has_a_sample() -> None:
    """A new scheme needs a sample here, so its header-bound secrets are checked too (plugin
    schemes, installed apart, mark theirs with the same `HeaderSecretValue`)."""
    assert set(SAMPLES) == set(BUILTIN_SCHEMES)


@pytest.mark.parametrize("scheme", list(SAMPLES))
def test_a_secret_is_header_bound_exactly_when_it_is_sent_in_a_header(scheme: str) -> None:
    config = parse_config(yaml.safe_dump({"routes": [_route(scheme, SAMPLES[scheme])]}))
    signer_config = config.routes[0].signer
    signer = build_signer(signer_config, route="r")
    sent: list[str] = []
    for method, body in (("GET", None), ("POST", b"a=1")):
        headers = {"Host": "api.example.com"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Content-Length"] = str(len(body))  # as the proxy sets it before signing
        request = request_for("https://api.example.com/x?q=1", method, headers, body)
        if body is None and signer.needs_body(method):
            request = request.replace(body=b"")
        # What `sign` shows: the request itself, or with a fetched token a placeholder for it.
        ctx = SigningContext(1_700_000_000_000, "nonce")
        signed = signer.sign_for_display(request, ctx).request
        sent += signed.headers.values()
    secrets = {
        name: value.reveal()
        for name in type(signer_config).model_fields
        if isinstance(value := getattr(signer_config, name), Secret)
    }
    assert secrets, "the sample has no secret"
    in_headers = sorted(name for name, value in secrets.items() if any(value in h for h in sent))
    assert in_headers == sorted(_header_bound_fields(type(signer_config)))


def test_the_proxy_token_is_header_bound() -> None:
    # Compared with the client's Proxy-Authorization: with a control character it never matches.
    assert _header_bound_fields(AccessConfig) == ["proxy_token"]


@pytest.mark.parametrize(("scheme", "field"), CASES, ids=[f"{s}.{f}" for s, f in CASES])
def test_a_newline_inside_a_file_secret_is_a_config_error_naming_the_key(
    scheme: str, field: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("first-line-Vq3\nsecond-line-Lp8\n")  # one trailing newline is fine
    signer = {**SAMPLES[scheme], field: {"file": str(secret_file)}}
    text = yaml.safe_dump({"routes": [_route(scheme, signer)]}, sort_keys=False)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    problems = caught.value.problems
    assert [p.path for p in problems] == [f"routes[0].signer.{field}"]
    assert "control character (U+000A)" in problems[0].message
    assert "HTTP header" in problems[0].message
    assert "first-line" not in str(caught.value)
    assert "second-line" not in str(caught.value)
    secret_file.write_text("first-line-Vq3\n")
    parse_config(text, "c.yaml")  # the same file, one line: accepted


def test_a_control_character_in_the_proxy_token_is_a_config_error() -> None:
    text = yaml.safe_dump(
        {
            "access": {"proxy_token": "tok\x7fen-Hs2"},
            "routes": [_route("bearer", SAMPLES["bearer"])],
        }
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert [p.path for p in caught.value.problems] == ["access.proxy_token"]
    assert "U+007F" in str(caught.value)
    assert "Hs2" not in str(caught.value)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\n", "\r", "\x1b", "\x1f", "\x7f"])
def test_control_characters_are_refused(char: str) -> None:
    with pytest.raises(ValueError, match=f"U\\+{ord(char):04X}"):
        resolve_header_secret(f"abc{char}def")


@pytest.mark.parametrize("value", ["a\tb", "plain", "ünïcødé", "a b"])
def test_tab_and_printable_text_are_accepted(value: str) -> None:
    assert resolve_header_secret(value).reveal() == value
