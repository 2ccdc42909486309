"""The `hmac` scheme's language, rule by rule (README "The hmac scheme"), on the signer directly.

Each expected signature is computed here with hashlib/hmac from the message the rule says is
signed, so a test fails if the message, the key or the encoding is off.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.signers import SigningContext, build_signer
from proxy.signers.hmac import HmacConfig, HmacSigner
from proxy.signers.hmac.signer import FormBodyRequired, UnplaceableHeader
from proxy.signers.hmac.template import parse_template
from tests.signers.helpers import request_for

NOW = 1_456_231_584_123  # 2016-02-23T12:46:24.123Z
SECRET = "s3cr3t-hmac-value"


def signer(**spec: Any) -> HmacSigner:
    spec.setdefault("secret", SECRET)
    spec.setdefault("sign", {"algorithm": "hmac-sha256", "message": "{method}"})
    config = HmacConfig.model_validate({"scheme": "hmac", **spec})
    built = build_signer(config)
    assert isinstance(built, HmacSigner)
    return built


def message_of(spec: dict[str, Any], url: str = "https://api.example.com/p", **kw: Any) -> str:
    """The string to sign for `spec.sign.message` on one request."""
    result = signer(**spec).sign(_request(url, **kw), SigningContext(NOW, kw.get("nonce")))
    return result.string_to_sign


def _request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    **_: Any,
) -> Any:
    return request_for(url, method, headers, body)


def render(template: str, url: str = "https://api.example.com/p", **kw: Any) -> str:
    spec = {"sign": {"algorithm": "hmac-sha256", "message": template}, **kw.pop("spec", {})}
    return message_of(spec, url, **kw)


def mac(message: bytes, key: bytes = SECRET.encode(), digest: Any = hashlib.sha256) -> bytes:
    return hmac.new(key, message, digest).digest()


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com/a/b?x=1", "api.example.com|443|api.example.com|https"),
        ("http://api.example.com/a/b?x=1", "api.example.com|80|api.example.com|http"),
        ("https://api.example.com:8443/a/b?x=1", "api.example.com|8443|api.example.com:8443|https"),
        ("http://[::1]:8080/a/b?x=1", "[::1]|8080|[::1]:8080|http"),
    ],
)
def test_host_never_has_a_port_and_port_is_explicit_or_default(url: str, expected: str) -> None:
    assert render("{host}|{port}|{authority}|{scheme}", url) == expected


def test_request_names() -> None:
    url = "https://api.example.com:443/a%20b/c?x=1&y=%C3%A9"
    out = render("{method} {path} {query} {target} {url}", url, method="DELETE")
    assert out == (
        "DELETE /a%20b/c x=1&y=%C3%A9 /a%20b/c?x=1&y=%C3%A9 https://api.example.com/a%20b/c?x=1&y=%C3%A9"
    )
    assert render("{target}|{url}", "https://h.example/p") == "/p|https://h.example/p"


def test_headers_query_and_form_params() -> None:
    url = "https://api.example.com/p?a=1&b=x+y%21&a=2&e=%FF"
    headers = {"X-Multi": "one", "Content-Type": "application/x-www-form-urlencoded"}
    spec = {"sign": {"algorithm": "hmac-sha256", "message": (
        "{header:x-multi}|{header:X-None}|{query_param:a}|{query_param:b}|{query_param:zz}|"
        "{query_param:e}|{form_param:f}|{form_param:g}"
    )}}  # fmt: skip
    request = request_for(url, "POST", [*headers.items(), ("X-Multi", "two")], b"f=%E2%82%AC+1&f=2")
    out = signer(**spec).sign(request, SigningContext(NOW)).string_to_sign
    # Headers joined with ", "; form rules: + is a space, %XX UTF-8 (bad bytes: U+FFFD);
    # the first value; empty when absent.
    assert out == "one, two||1|x y!||\ufffd|€ 1|"


def test_form_params_are_read_only_from_urlencoded_bodies() -> None:
    spec = {"sign": {"algorithm": "hmac-sha256", "message": "[{form_param:a}]"}}
    request = request_for("https://h.example/p", "POST", {"Content-Type": "text/plain"}, b"a=1")
    assert signer(**spec).sign(request, SigningContext(NOW)).string_to_sign == "[]"


def test_literal_braces_and_escapes() -> None:
    assert render('{{"a": {method}}}') == '{"a": GET}'
    assert parse_template("}}{{") == parse_template("}}{{")


def test_body_is_the_bytes_sent() -> None:
    spec = {"sign": {"algorithm": "hmac-sha256", "message": "{body}"}}
    body = b"\x00\xffraw"
    result = signer(**spec).sign(
        request_for("https://h.example/", "POST", {}, body), SigningContext(NOW)
    )
    assert result.request.headers.get("X-Sig") is None
    assert result.string_to_sign == body.decode("utf-8", "backslashreplace")


# -- vars -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("epoch_s", "1456231584"),
        ("epoch_ms", "1456231584123"),
        ("iso8601", "2016-02-23T12:46:24Z"),
        ("iso8601_ms", "2016-02-23T12:46:24.123Z"),
        ("iso8601_basic", "20160223T124624Z"),
        ("iso8601_noz", "2016-02-23T12:46:24"),
        ("rfc1123", "Tue, 23 Feb 2016 12:46:24 GMT"),
    ],
)
def test_now_formats(fmt: str, expected: str) -> None:
    assert render("{t}", spec={"vars": {"t": {"now": fmt}}}) == expected


def test_nonce_is_used_verbatim_for_every_random_var() -> None:
    spec = {"vars": {k: {"random": k} for k in ("uuid4", "hex8", "hex16", "hex32", "hex64")}}
    out = render("{uuid4}|{hex8}|{hex16}|{hex32}|{hex64}", spec=spec, nonce="n-1")
    assert out == "|".join(["n-1"] * 5)


def test_random_vars_are_fresh_and_hex_n_means_n_characters() -> None:
    spec = {"vars": {k: {"random": k} for k in ("uuid4", "hex8", "hex16", "hex32", "hex64")}}
    first = render("{uuid4}|{hex8}|{hex16}|{hex32}|{hex64}", spec=spec).split("|")
    second = render("{uuid4}|{hex8}|{hex16}|{hex32}|{hex64}", spec=spec).split("|")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", first[0]
    )
    assert [len(v) for v in first[1:]] == [8, 16, 32, 64]
    assert all(re.fullmatch("[0-9a-f]+", v) for v in first[1:])
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_template_vars_see_the_request_after_before_sign_with_digest_and_encode() -> None:
    spec = {
        "vars": {
            "n": {"now": "epoch_s"},
            "inner": {"template": "{body}", "digest": "sha256", "encode": "hex"},
            "raw": {"template": "{form_param:n}{inner}", "digest": "md5"},
            "res": {"template": "{path}", "remove_prefix": "/v3"},
        },
        "before_sign": {"form": {"n": "{n}"}},
        "sign": {"algorithm": "hmac-sha256", "message": "{inner}|{raw|hex}|{res}"},
    }
    request = request_for("https://h.example/v3/x", "POST", {}, b"")
    result = signer(**spec).sign(request, SigningContext(NOW))
    body = b"n=1456231584"
    inner = hashlib.sha256(body).hexdigest()
    raw = hashlib.md5(b"1456231584" + inner.encode()).hexdigest()
    assert result.request.body == body
    assert result.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert result.request.headers["Content-Length"] == str(len(body))
    assert result.string_to_sign == f"{inner}|{raw}|/x"


# -- filters, encodings, algorithms -----------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("upper", "A B\u00c9"),
        ("lower", "a b\u00e9"),
        ("trim|upper", "A B\u00c9"),
        ("md5|hex", hashlib.md5(b" a b\xc3\xa9 ").hexdigest()),
        ("sha1|hex", hashlib.sha1(b" a b\xc3\xa9 ").hexdigest()),
        ("sha256|hex", hashlib.sha256(b" a b\xc3\xa9 ").hexdigest()),
        ("sha512|hex", hashlib.sha512(b" a b\xc3\xa9 ").hexdigest()),
        ("b64", base64.b64encode(b" a b\xc3\xa9 ").decode()),
        ("b64|b64decode", " a b\u00e9 "),
        ("hex|hexdecode", " a b\u00e9 "),
        ("pct", "%20a%20b%C3%A9%20"),
    ],
)
def test_filters_apply_left_to_right(filters: str, expected: str) -> None:
    spec = {"vars": {"v": {"template": " a B\u00e9 "}}}
    if filters.startswith(("trim", "upper")):
        assert render(f"{{v|{filters}}}", spec=spec).strip() == expected.strip()
    elif filters == "lower":
        assert render("{v|lower}", spec=spec) == " a b\u00e9 "
    else:
        out = render(f"{{v|{filters}}}", spec={"vars": {"v": {"template": " a b\u00e9 "}}})
        assert out == expected


def test_b64url_keeps_padding_and_pct_keeps_unreserved() -> None:
    spec = {"vars": {"v": {"template": "\u00ff\u00fe"}}}
    assert (
        render("{v|b64url}", spec=spec)
        == base64.urlsafe_b64encode("\u00ff\u00fe".encode()).decode()
    )
    assert render("{v|b64url}", spec=spec).endswith("=")
    assert render("{{~-._ /+}}") == "{~-._ /+}"
    spec = {"vars": {"v": {"template": "~-._ /+*"}}}
    assert render("{v|pct}", spec=spec) == "~-._%20%2F%2B%2A"


@pytest.mark.parametrize(
    ("encode", "encoder"),
    [
        ("hex", lambda d: d.hex()),
        ("base64", lambda d: base64.b64encode(d).decode()),
        ("base64url", lambda d: base64.urlsafe_b64encode(d).decode()),
        ("base64url_nopad", lambda d: base64.urlsafe_b64encode(d).decode().rstrip("=")),
    ],
)
@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_algorithms_and_encodings(encode: str, encoder: Any, algorithm: str) -> None:
    spec = {
        "key_id": "kid",
        "sign": {
            "algorithm": f"hmac-{algorithm}",
            "key": "{secret}&{key_id}",
            "message": "m{method}",
            "encode": encode,
        },
        "after_sign": {"headers": {"X-Sig": "{signature}"}},
    }
    out = signer(**spec).sign(request_for("https://h.example/", "GET"), SigningContext(NOW))
    digest = mac(b"mGET", f"{SECRET}&kid".encode(), getattr(hashlib, algorithm))
    assert out.request.headers["X-Sig"] == encoder(digest)


def test_defaults_key_is_the_secret_and_encoding_is_hex() -> None:
    spec = {"after_sign": {"headers": {"X-Sig": "{signature}"}}}
    out = signer(**spec).sign(request_for("https://h.example/", "GET"), SigningContext(NOW))
    assert out.request.headers["X-Sig"] == mac(b"GET").hex()


def test_a_key_that_reads_the_request_is_made_per_request() -> None:
    spec = {
        "vars": {"d": {"now": "epoch_s"}},
        "sign": {"algorithm": "hmac-sha256", "key": "{secret}{d}", "message": "x"},
        "after_sign": {"headers": {"X-Sig": "{signature}"}},
    }
    out = signer(**spec).sign(request_for("https://h.example/", "GET"), SigningContext(NOW))
    assert out.request.headers["X-Sig"] == mac(b"x", f"{SECRET}1456231584".encode()).hex()


# -- params() ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("params()", "B=3&a=1&a=0&b=x%20y&c%3Dd=%C3%A9&flag="),
        ("params(sort=name_ci)", "a=1&a=0&b=x%20y&B=3&c%3Dd=%C3%A9&flag="),
        ("params(sort=none)", "b=x%20y&a=1&B=3&c%3Dd=%C3%A9&a=0&flag="),
        ("params(sort=none, encode=as_sent)", "b=x+y&a=1&B=3&c%3dd=%C3%A9&a=0&flag="),
        ("params(sort=none, encode=none)", "b=x y&a=1&B=3&c=d=\u00e9&a=0&flag="),
        (
            'params(kv=":", sep="\\n", exclude=[a, "c=d"], trailing_sep=true)',
            "B:3\nb:x%20y\nflag:\n",
        ),
        (
            'params(kv="|", sep="|", trailing_sep=true, encode=none, sort=name)',
            "B|3|a|1|a|0|b|x y|c=d|\u00e9|flag||",
        ),
    ],
)
def test_params(call: str, expected: str) -> None:
    url = "https://h.example/p?b=x+y&a=1&&B=3&c%3dd=%C3%A9&a=0&flag"
    assert render("{" + call + "}", url) == expected


def test_params_from_form_and_query_plus_form() -> None:
    spec = {
        "sign": {
            "algorithm": "hmac-sha256",
            "message": "{params(from=form)}|{params(from=query+form, sort=none)}",
        }
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    request = request_for("https://h.example/p?q=1", "POST", headers, b"z=2&a=3")
    out = signer(**spec).sign(request, SigningContext(NOW)).string_to_sign
    assert out == "a=3&z=2|q=1&z=2&a=3"


# -- strip and placements ---------------------------------------------------------------------


def test_strip_headers_any_case_and_query_params_by_exact_decoded_name() -> None:
    spec = {
        "strip": ["authorization", "sig nature"],
        "sign": {"algorithm": "hmac-sha256", "message": "{query}|{header:Authorization}"},
    }
    url = "https://h.example/p?sig+nature=1&Sig%20nature=2&sig%20nature=3&a=1"
    request = request_for(url, "GET", [("AUTHORIZATION", "stale"), ("Authorization", "stale2")])
    out = signer(**spec).sign(request, SigningContext(NOW))
    assert out.string_to_sign == "Sig%20nature=2&a=1|"
    assert "Authorization" not in out.request.headers


def test_placements_replace_the_first_in_place_drop_the_rest_and_append_new_ones() -> None:
    spec = {
        "key_id": "k y",
        "vars": {"ts": {"now": "epoch_s"}},
        "before_sign": {"query": {"ts": "{ts}", "new one": "{key_id}/é", "a": "A"}},
        "sign": {"algorithm": "hmac-sha256", "message": "{query}"},
        "after_sign": {"query": {"a": "{signature}", "z": "~"}},
    }
    url = "https://h.example/p?a=1&ts=old&b=2&a=3&ts=older"
    out = signer(**spec).sign(request_for(url, "GET"), SigningContext(NOW))
    signed = "a=A&ts=1456231584&b=2&new%20one=k%20y%2F%C3%A9"
    assert out.string_to_sign == signed
    sig = mac(signed.encode()).hex()
    assert out.request.query == f"a={sig}&ts=1456231584&b=2&new%20one=k%20y%2F%C3%A9&z=~"


def test_before_sign_sees_the_stripped_request_and_drawn_vars_only() -> None:
    spec = {
        "key_id": "kid",
        "vars": {"n": {"random": "hex16"}},
        "strip": ["X-Old"],
        "before_sign": {"headers": {"X-Copy": "[{header:X-Old}]{n}{key_id}", "X-Old": "new"}},
        "sign": {"algorithm": "hmac-sha256", "message": "{header:X-Copy}|{header:X-Old}"},
    }
    request = request_for("https://h.example/p", "GET", {"X-Old": "stale"})
    out = signer(**spec).sign(request, SigningContext(NOW, "N"))
    assert out.string_to_sign == "[]Nkid|new"


def test_form_on_an_empty_body_gets_the_urlencoded_type() -> None:
    spec = {
        "before_sign": {"form": {"nonce": "1"}},
        "sign": {"algorithm": "hmac-sha256", "message": "{body}"},
    }
    request = request_for("https://h.example/p", "POST", {"Content-Type": "application/json"}, b"")
    out = signer(**spec).sign(request, SigningContext(NOW))
    assert out.request.body == b"nonce=1"
    assert out.request.headers.getall("Content-Type") == ["application/x-www-form-urlencoded"]


def test_form_on_another_body_is_refused() -> None:
    spec = {"before_sign": {"form": {"nonce": "1"}}}
    for headers in ({"Content-Type": "application/json"}, {}):
        request = request_for("https://h.example/p", "POST", headers, b'{"a": 1}')
        with pytest.raises(FormBodyRequired, match="urlencoded"):
            signer(**spec).sign(request, SigningContext(NOW))


def test_header_values_from_the_request_must_be_one_line_of_text() -> None:
    spec = {"vars": {"v": {"template": "{body}"}}, "after_sign": {"headers": {"X-V": "{v}"}}}
    for body, words in (
        (b"a\r\nb", "not one line"),
        (b"a\x01", "not one line"),
        (b"\xff", "UTF-8"),
    ):
        request = request_for("https://h.example/p", "POST", {}, body)
        with pytest.raises(UnplaceableHeader, match=words) as caught:
            signer(**spec).sign(request, SigningContext(NOW))
        assert (caught.value.status, caught.value.code) == (400, "invalid_header")
    request = request_for("https://h.example/p", "POST", {}, "tab\there \u00e9".encode())
    assert signer(**spec).sign(request, SigningContext(NOW)).request.headers["X-V"] == "tab\there é"


# -- the body policy, purity, secrecy ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needs"),
    [
        (
            {"sign": {"algorithm": "hmac-sha256", "message": "{method}{path}{query}{header:A}"}},
            False,
        ),
        ({"sign": {"algorithm": "hmac-sha256", "message": "{body|sha256|hex}"}}, True),
        ({"sign": {"algorithm": "hmac-sha256", "message": "{form_param:a}"}}, True),
        ({"sign": {"algorithm": "hmac-sha256", "message": "{params(from=form)}"}}, True),
        ({"sign": {"algorithm": "hmac-sha256", "message": "{params(from=query+form)}"}}, True),
        ({"vars": {"b": {"template": "{body}"}}}, True),
        ({"before_sign": {"form": {"a": "1"}}}, True),
        ({"after_sign": {"headers": {"X": "{body|md5|hex}"}}}, True),
    ],
)
def test_the_body_is_read_exactly_when_a_template_reads_it(
    spec: dict[str, Any], needs: bool
) -> None:
    assert signer(**spec).needs_body("GET") is needs


def test_signing_is_pure() -> None:
    spec = {"vars": {"n": {"random": "uuid4"}}, "after_sign": {"headers": {"X": "{n}{signature}"}}}
    s = signer(**spec)
    before = dict(vars(s)) if hasattr(s, "__dict__") else {}
    request = request_for("https://h.example/p", "GET")
    first = s.sign(request, SigningContext(NOW, "fixed"))
    assert s.sign(request, SigningContext(NOW, "fixed")).request == first.request
    assert (dict(vars(s)) if hasattr(s, "__dict__") else {}) == before
    assert request.headers.get("X") is None  # the input request is untouched


def test_repr_and_errors_hold_no_secret() -> None:
    s = signer(
        key_id="kid-value",
        sign={"algorithm": "hmac-sha256", "message": "x", "key": "{secret|upper}"},
    )
    assert SECRET not in repr(s)
    assert "kid-value" not in repr(s)
    plan = repr(s._plan)  # the compiled plan holds the key: its repr must not show it
    assert "key=Compiled(" in plan
    assert SECRET.upper() not in plan
    assert SECRET not in plan
    config = HmacConfig.model_validate(
        {"scheme": "hmac", "secret": SECRET, "sign": {"algorithm": "hmac-sha1", "message": "x"}}
    )
    assert SECRET not in repr(config)
    assert SECRET not in str(config.model_dump())
    with pytest.raises(ValueError, match="built-in") as caught:
        signer(vars={"path": {"now": "epoch_s"}})
    assert SECRET not in str(caught.value)


# -- load-time rejection, with the key path ---------------------------------------------------


def _config(signer_block: dict[str, Any]) -> str:
    route = {
        "name": "r",
        "match": {"host": "api.example.com"},
        "signer": {"scheme": "hmac", "secret": SECRET, **signer_block},
    }
    return yaml.safe_dump({"routes": [route]}, sort_keys=False)


SIGN = {"algorithm": "hmac-sha256", "message": "{method}"}


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        (
            {"sign": SIGN, "after_sign": {"headers": {"Authorization": "HMAC {secret}"}}},
            "after_sign.headers.Authorization",
            "{secret} is only allowed in sign.key",
        ),
        (
            {"sign": {**SIGN, "message": "{method}{secret}"}},
            "sign.message",
            "{secret} is only allowed",
        ),
        ({"vars": {"v": {"template": "{secret}"}}, "sign": SIGN}, "vars.v.template", "{secret}"),
        (
            {"sign": {**SIGN, "message": "{signature}"}},
            "sign.message",
            "{signature} is only allowed in after_sign",
        ),
        (
            {"sign": SIGN, "before_sign": {"query": {"s": "{signature}"}}},
            "before_sign.query.s",
            "{signature}",
        ),
        ({"sign": {**SIGN, "message": "{nope}"}}, "sign.message", "unknown name {nope}"),
        ({"sign": {**SIGN, "message": "{method|rot13}"}}, "sign.message", "unknown filter |rot13"),
        ({"sign": {**SIGN, "message": "{sorted(a=1)}"}}, "sign.message", "unknown function sorted"),
        (
            {"sign": {**SIGN, "message": "{params(order=name)}"}},
            "sign.message",
            "unknown argument order",
        ),
        ({"sign": {**SIGN, "message": "{params(sort=random)}"}}, "sign.message", "sort=random"),
        (
            {"sign": {**SIGN, "message": "{params(trailing_sep=yes)}"}},
            "sign.message",
            "true or false",
        ),
        ({"sign": {**SIGN, "message": "{header}"}}, "sign.message", "needs a name"),
        ({"sign": {**SIGN, "message": "{method:x}"}}, "sign.message", "take ':'"),
        ({"sign": {**SIGN, "message": "a}b"}}, "sign.message", "lone '}'"),
        ({"sign": {**SIGN, "message": "{method"}}, "sign.message", "unclosed"),
        ({"sign": {**SIGN, "message": "{key_id}"}}, "sign.message", "no key_id"),
        ({"sign": {**SIGN, "key": "a-key-in-clear"}}, "sign.key", "must use {secret}"),
        ({"vars": {"path": {"now": "epoch_s"}}, "sign": SIGN}, "vars.path", "built-in name"),
        ({"vars": {"body": {"template": "x"}}, "sign": SIGN}, "vars.body", "may not shadow"),
        ({"vars": {"a-b": {"now": "epoch_s"}}, "sign": SIGN}, "vars.a-b", "var name"),
        (
            {
                "vars": {"t": {"template": "{method}"}},
                "sign": SIGN,
                "before_sign": {"headers": {"X": "{t}"}},
            },
            "before_sign.headers.X",
            "rendered after before_sign",
        ),
        (
            {"vars": {"a": {"template": "{b}"}, "b": {"template": "x"}}, "sign": SIGN},
            "vars.a.template",
            "defined later",
        ),
        (
            {"vars": {"a": {"now": "epoch_s", "random": "uuid4"}}, "sign": SIGN},
            "vars.a",
            "exactly one",
        ),
        ({"vars": {"a": {"now": "epoch_us"}}, "sign": SIGN}, "vars.a.now", "epoch_ms"),
        ({"vars": {"a": {"random": "hex7"}}, "sign": SIGN}, "vars.a.random", "hex16"),
        ({"sign": {**SIGN, "algorithm": "hmac-md5"}}, "sign.algorithm", "hmac-sha256"),
        ({"sign": {**SIGN, "encode": "base32"}}, "sign.encode", "base64url_nopad"),
        ({"sign": {**SIGN, "key": "{secret|hexdecode}"}}, "sign.key", "not valid hex"),
        (
            {"sign": SIGN, "after_sign": {"headers": {"Content-Length": "1"}}},
            "after_sign.headers",
            "managed",
        ),
        (
            {"sign": SIGN, "after_sign": {"cookies": {"a": "1"}}},
            "after_sign.cookies",
            "unknown key",
        ),
        ({"sign": {"message": "x"}}, "sign.algorithm", "required"),
        (
            {
                "vars": {"d": {"template": "{body}", "digest": "sha256"}},
                "sign": SIGN,
                "after_sign": {"headers": {"X-D": "{d}"}},
            },
            "after_sign.headers.X-D",
            "raw bytes",
        ),
        (
            {"sign": SIGN, "after_sign": {"headers": {"X-D": "{body|md5}"}}},
            "after_sign.headers.X-D",
            "raw bytes",
        ),
        (
            {"sign": SIGN, "after_sign": {"headers": {"X-D": "a\u0001b"}}},
            "after_sign.headers.X-D",
            "U+0001",
        ),
        (
            {"key_id": "a\nb", "sign": SIGN, "before_sign": {"headers": {"X-K": "{key_id}"}}},
            "key_id",
            "U+000A",
        ),
    ],
)
def test_rejected_at_load_with_the_key_path(block: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(block))
    problems = caught.value.problems
    assert [p.path for p in problems] == [f"routes[0].signer.{path}"]
    assert words in problems[0].message
    assert problems[0].line > 4
    assert SECRET not in str(caught.value)


def test_a_route_file_parses_to_the_same_plan_twice() -> None:
    text = _config({"sign": SIGN, "after_sign": {"headers": {"X": "{signature}"}}})
    assert parse_config(text) == parse_config(text)
