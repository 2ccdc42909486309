"""aws-sigv4: behaviour rules, config, host detection, botocore agreement, concurrency, secrets."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import TypeAdapter, ValidationError

from proxy.signers import SIGNERS, AnySignerConfig, build_signer
from proxy.signers import aws_credentials as creds_module
from proxy.signers.aws_canonical import (
    EMPTY_PAYLOAD_SHA256,
    UNSIGNED_PAYLOAD,
    canonical_query,
    canonical_uri,
    parse_query,
    remove_dot_segments,
)
from proxy.signers.aws_credentials import (
    AwsCredentials,
    CredentialsUnavailableError,
    StaticCredentialSource,
)
from proxy.signers.aws_endpoints import detect_service_region
from proxy.signers.aws_sigv4 import AwsSigV4Config, AwsSigV4Signer
from proxy.signers.base import SigningContext, SignResult, UpstreamRequest
from tests.signers.helpers import request_for
from tests.verifiers.aws_sigv4 import botocore_recompute, signature_of, signed_header_names

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token//////////+abc=="
AMZ_DATE = "20150830T123600Z"
NOW_S = calendar.timegm(time.strptime(AMZ_DATE, "%Y%m%dT%H%M%SZ"))
CTX = SigningContext(now_ms=NOW_S * 1000 + 123, nonce="")


def config(**fields: Any) -> AwsSigV4Config:
    raw: dict[str, Any] = {
        "scheme": "aws-sigv4",
        "service": "service",
        "region": "us-east-1",
        "access_key_id": AKID,
        "secret_access_key": SECRET,
    }
    raw.update(fields)
    return AwsSigV4Config.model_validate({k: v for k, v in raw.items() if v is not None})


def signer(**fields: Any) -> AwsSigV4Signer:
    return AwsSigV4Signer(config(**fields))


def request(
    url: str = "https://example.amazonaws.com/",
    method: str = "GET",
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    body: bytes | None = b"",
) -> UpstreamRequest:
    return request_for(url, method, headers, body)


def creq_lines(result: SignResult) -> list[str]:
    return result.details["canonical_request"].split("\n")


def verify_with_botocore(
    result: SignResult, *, service: str, region: str = "us-east-1", token: str | None = None
) -> None:
    again = botocore_recompute(
        result.request,
        access_key=AKID,
        secret_key=SECRET,
        token=token,
        region=region,
        service=service,
        amz_date=AMZ_DATE,
    )
    assert again.string_to_sign == result.string_to_sign
    assert again.signature == signature_of(result.request)


# -- rules --------------------------------------------------------------------------------------


def test_incoming_auth_headers_are_replaced_never_duplicated() -> None:
    incoming = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=APPKEY/...",
        "X-Amz-Date": "19990101T000000Z",
        "X-Amz-Security-Token": "app-token",
        "X-Amz-Content-Sha256": "app-hash",
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
    }
    result = signer(session_token=TOKEN).sign(request(headers=incoming), CTX)
    out = result.request.headers
    assert out.getall("X-Amz-Date") == [AMZ_DATE]
    assert out.getall("X-Amz-Security-Token") == [TOKEN]
    assert "X-Amz-Content-Sha256" not in out  # not S3, payload signed
    assert len(out.getall("Authorization")) == 1
    assert "APPKEY" not in out["Authorization"]
    assert out["X-Amz-Target"] == "DynamoDB_20120810.ListTables"
    assert signed_header_names(result.request) == [
        "host",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-target",
    ]
    verify_with_botocore(result, service="service", token=TOKEN)


def test_default_signed_set_and_never_signed_headers() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
        ("X-Amz-Meta-A", "1"),
        ("X-Custom", "listed"),
        ("X-Other", "not listed"),
        ("User-Agent", "legacy-app/1.0"),
        ("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("Tracestate", "a=b"),
        ("Baggage", "k=v"),
        ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
        ("X-B3-TraceId", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("Expect", "100-continue"),
        ("Connection", "keep-alive, X-Conn-Scoped"),
        ("X-Conn-Scoped", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ]
    result = signer(signed_headers=["X-Custom", "x-conn-scoped"]).sign(
        request(headers=headers, method="POST", body=b"{}"), CTX
    )
    assert signed_header_names(result.request) == [
        "content-md5",
        "content-type",
        "host",
        "x-amz-date",
        "x-amz-meta-a",
        "x-custom",
    ]
    verify_with_botocore(result, service="service")


@pytest.mark.parametrize(
    "name", ["Connection", "traceparent", "X-Amzn-Trace-Id", "authorization", "proxy-foo", "TE"]
)
def test_signed_headers_refuses_hop_by_hop_and_tracing(name: str) -> None:
    with pytest.raises(ValidationError, match="cannot be signed"):
        config(signed_headers=[name])


def test_host_is_the_dialled_host_without_default_port() -> None:
    for url, host in [
        ("https://sqs.us-east-1.amazonaws.com:443/", "sqs.us-east-1.amazonaws.com"),
        ("http://localhost:80/", "localhost"),
        ("http://localhost:4566/", "localhost:4566"),
        ("https://[::1]:443/", "[::1]"),
        ("https://[::1]:8443/", "[::1]:8443"),
    ]:
        result = signer().sign(request(url, headers={"Host": "proxy.local:8080"}), CTX)
        assert result.request.headers.getall("Host") == [host]
        assert f"host:{host}" in creq_lines(result)


def test_sign_host_is_signed_and_sent() -> None:
    s = signer(sign_host="search-logs-abc.eu-west-1.es.amazonaws.com")
    result = s.sign(request("https://10.0.0.7:9200/_search"), CTX)
    assert result.request.headers["Host"] == "search-logs-abc.eu-west-1.es.amazonaws.com"
    assert result.request.host == "10.0.0.7:9200"  # still dialled
    verify_with_botocore(result, service="service")


def test_non_s3_path_normalised_and_double_encoded() -> None:
    # What a client sends for suite get-utf8 (/ሴ) and get-space (/example space/).
    cases = {
        "/%E1%88%B4": "/%25E1%2588%25B4",
        "/example%20space/": "/example%2520space/",
        "/foo/./bar/../baz": "/foo/baz",
        "//a//b//": "/a/b/",
        "/a%2Fb": "/a%252Fb",
        "/$delete": "/%24delete",
        "": "/",
    }
    for path, expected in cases.items():
        result = signer().sign(request(f"https://example.amazonaws.com{path}"), CTX)
        assert creq_lines(result)[1] == expected, path
        assert result.request.path == (path or "/")  # sent as received
        verify_with_botocore(result, service="service")


def test_non_s3_path_characters_http_forbids_are_encoded_before_sending() -> None:
    result = signer().sign(request().replace(path="/a b/é"), CTX)
    assert result.request.path == "/a%20b/%C3%A9"
    assert creq_lines(result)[1] == "/a%2520b/%25C3%25A9"


def test_s3_single_encoding_no_normalisation_and_content_sha256() -> None:
    s = signer(service="s3")
    body = b"hello"
    url = "https://bucket.s3.us-east-1.amazonaws.com/dir/./a%2fb/../k$ (1)+%7E.txt"
    result = s.sign(request(url, method="PUT", body=body), CTX)
    expected_path = "/dir/./a%2Fb/../k%24%20%281%29%2B~.txt"
    assert result.request.path == expected_path
    assert creq_lines(result)[1] == expected_path
    assert result.request.headers["X-Amz-Content-Sha256"] == hashlib.sha256(body).hexdigest()
    assert "x-amz-content-sha256" in signed_header_names(result.request)
    verify_with_botocore(result, service="s3")
    get = s.sign(request("https://bucket.s3.us-east-1.amazonaws.com/k", body=b""), CTX)
    assert get.request.headers["X-Amz-Content-Sha256"] == EMPTY_PAYLOAD_SHA256


def test_unsigned_payload_streams_and_says_so() -> None:
    for service in ("s3", "service"):
        s = signer(service=service, payload="unsigned")
        assert s.needs_body("PUT") is False
        result = s.sign(request(method="PUT", body=None), CTX)
        assert result.request.headers["X-Amz-Content-Sha256"] == UNSIGNED_PAYLOAD
        assert creq_lines(result)[-1] == UNSIGNED_PAYLOAD
        assert result.request.body is None
        verify_with_botocore(result, service=service)


def test_signed_payload_needs_the_body() -> None:
    s = signer()
    assert s.needs_body("GET") is True
    assert s.needs_body("POST") is True
    with pytest.raises(RuntimeError, match="needs the request body"):
        s.sign(request(body=None), CTX)


def test_query_is_canonicalised_and_sent_in_that_encoding() -> None:
    # A raw `+` is a form-encoded space; a literal plus arrives as %2B.
    raw = (
        "b=2&a=1&a=0&plus=a%2Bb&form=a+b&sp=a%20b&tilde=%7E&star=*&bad=%zz&flag&&empty="
        "&%e2%82%ac=eur"
    )
    result = signer().sign(request(f"https://example.amazonaws.com/?{raw}"), CTX)
    assert creq_lines(result)[2] == (
        "%E2%82%AC=eur&a=0&a=1&b=2&bad=%25zz&empty=&flag=&form=a%20b&plus=a%2Bb&sp=a%20b"
        "&star=%2A&tilde=~"
    )
    assert result.request.query == (
        "b=2&a=1&a=0&plus=a%2Bb&form=a%20b&sp=a%20b&tilde=~&star=%2A&bad=%25zz&flag&empty="
        "&%E2%82%AC=eur"
    )
    verify_with_botocore(result, service="service")


def test_incoming_presign_parameters_are_dropped() -> None:
    raw = "X-Amz-Signature=abc&x-amz-credential=APP%2F1&X-Amz-Expires=5&keep=1"
    result = signer().sign(request(f"https://example.amazonaws.com/?{raw}"), CTX)
    assert result.request.query == "keep=1"


def test_presign_with_token_and_s3_unsigned_payload() -> None:
    s = signer(service="s3", presign_expires=900, session_token=TOKEN)
    assert s.needs_body("GET") is False
    result = s.sign(
        request(
            "https://bucket.s3.us-east-1.amazonaws.com/k?X-Amz-Signature=old&v=1",
            headers={"Authorization": "Basic x", "X-Amz-Date": "1"},
            body=None,
        ),
        CTX,
    )
    out = result.request
    assert "Authorization" not in out.headers
    assert "X-Amz-Date" not in out.headers
    assert "X-Amz-Content-Sha256" not in out.headers
    assert out.query.startswith("v=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=")
    assert f"X-Amz-Security-Token={quote(TOKEN, safe='')}" in out.query
    assert out.query.count("X-Amz-Signature=") == 1
    assert creq_lines(result)[-1] == UNSIGNED_PAYLOAD
    assert TOKEN not in result.details["canonical_request"]
    verify_with_botocore(result, service="s3", token=TOKEN)


def test_non_s3_presign_hashes_the_body() -> None:
    result = signer(presign_expires=60).sign(request(method="POST", body=b"x=1"), CTX)
    assert creq_lines(result)[-1] == hashlib.sha256(b"x=1").hexdigest()
    verify_with_botocore(result, service="service")


def test_sign_uses_the_context_time_only() -> None:
    later = SigningContext(now_ms=(NOW_S + 86_400) * 1000, nonce="")
    result = signer().sign(request(), later)
    assert result.request.headers["X-Amz-Date"] == "20150831T123600Z"
    assert (
        "Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request"
        in (result.request.headers["Authorization"])
    )


# -- the pure steps -----------------------------------------------------------------------------


def test_steps() -> None:
    assert remove_dot_segments("/a/b/../../..") == "/"
    assert remove_dot_segments("/a/.") == "/a"
    assert canonical_uri("/a b/%41", s3=True) == "/a%20b/A"
    assert canonical_uri("/a b/%41", s3=False) == "/a%2520b/%2541"
    assert parse_query("a=1&&b&c=") == [(b"a", b"1"), (b"b", None), (b"c", b"")]
    assert canonical_query(parse_query("k=%ZZ&k=%2")) == "k=%252&k=%25ZZ"


# -- config -------------------------------------------------------------------------------------


def test_registered_and_built_by_the_registry() -> None:
    assert SIGNERS["aws-sigv4"] is AwsSigV4Signer
    parsed = TypeAdapter(AnySignerConfig).validate_python(
        {"scheme": "aws-sigv4", "service": "sqs", "region": "eu-west-1", **_keys()}
    )
    assert isinstance(parsed, AwsSigV4Config)
    built = build_signer(parsed)
    assert isinstance(built, AwsSigV4Signer)
    assert built.is_ready()


def _keys() -> dict[str, str]:
    return {"access_key_id": AKID, "secret_access_key": SECRET}


def test_service_and_region_required_without_detect() -> None:
    with pytest.raises(ValidationError, match="needs service and region"):
        AwsSigV4Config.model_validate({"scheme": "aws-sigv4", "service": "sqs", **_keys()})


def test_detect_is_resolved_with_the_upstream_host() -> None:
    cfg = AwsSigV4Config.model_validate({"scheme": "aws-sigv4", "detect": True, **_keys()})
    with pytest.raises(ValueError, match="needs the route's upstream host"):
        AwsSigV4Signer(cfg)
    resolved = cfg.with_upstream_host("sqs.eu-west-1.amazonaws.com")
    assert (resolved.service, resolved.region) == ("sqs", "eu-west-1")
    via_kwarg = AwsSigV4Signer(cfg, upstream_host="dynamodb.ap-south-1.amazonaws.com:443")
    assert (via_kwarg.service, via_kwarg.region) == ("dynamodb", "ap-south-1")
    with pytest.raises(ValueError, match="set service and region explicitly"):
        cfg.with_upstream_host("api.example.com")
    # explicit values win; sign_host is what AWS sees, so it is what detection reads
    partial = AwsSigV4Config.model_validate(
        {
            "scheme": "aws-sigv4",
            "detect": True,
            "service": "execute-api",
            "sign_host": "abc123.execute-api.us-west-2.amazonaws.com",
            **_keys(),
        }
    )
    resolved = partial.with_upstream_host("10.1.2.3")
    assert (resolved.service, resolved.region) == ("execute-api", "us-west-2")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("sqs.us-east-1.amazonaws.com", ("sqs", "us-east-1")),
        ("dynamodb.eu-central-1.amazonaws.com:443", ("dynamodb", "eu-central-1")),
        ("abc123.execute-api.us-west-2.amazonaws.com", ("execute-api", "us-west-2")),
        ("my-bucket.s3.eu-west-1.amazonaws.com", ("s3", "eu-west-1")),
        ("s3.dualstack.ap-northeast-1.amazonaws.com", ("s3", "ap-northeast-1")),
        ("my-bucket.s3-us-west-2.amazonaws.com", ("s3", "us-west-2")),
        ("s3-us-gov-west-1.amazonaws.com", ("s3", "us-gov-west-1")),
        ("my-bucket.s3.amazonaws.com", ("s3", "us-east-1")),
        ("s3-external-1.amazonaws.com", ("s3", "us-east-1")),
        ("kms-fips.us-gov-west-1.amazonaws.com", ("kms", "us-gov-west-1")),
        ("search-logs-x1y2.eu-west-1.es.amazonaws.com", ("es", "eu-west-1")),
        ("coll1.us-east-1.aoss.amazonaws.com", ("aoss", "us-east-1")),
        ("email.us-east-1.amazonaws.com", ("ses", "us-east-1")),
        ("bedrock-runtime.us-east-1.amazonaws.com", ("bedrock", "us-east-1")),
        ("runtime.sagemaker.eu-west-2.amazonaws.com", ("sagemaker", "eu-west-2")),
        ("iam.amazonaws.com", ("iam", "us-east-1")),
        ("sts.amazonaws.com", ("sts", "us-east-1")),
        ("STS.US-EAST-2.AMAZONAWS.COM.", ("sts", "us-east-2")),
        ("sqs.cn-north-1.amazonaws.com.cn", ("sqs", "cn-north-1")),
    ],
)
def test_detect_service_region(host: str, expected: tuple[str, str]) -> None:
    assert detect_service_region(host) == expected


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost:4566",
        "10.0.0.1",
        "[::1]:443",
        "amazonaws.com",
        "foo.amazonaws.com",
        "bucket.s3-accelerate.amazonaws.com",
        "evil-amazonaws.com",
        "sqs.us-east-1.amazonaws.com.evil.com",
    ],
)
def test_detect_refuses_unknown_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="cannot derive an AWS service and region"):
        detect_service_region(host)


def test_without_botocore_default_chain_and_role_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(creds_module, "botocore_available", lambda: False)
    base = {"scheme": "aws-sigv4", "service": "sqs", "region": "us-east-1"}
    with pytest.raises(ValidationError, match=r"pip install 'signing-proxy\[aws\]'"):
        AwsSigV4Config.model_validate(base)
    with pytest.raises(ValidationError, match=r"role_arn .*pip install 'signing-proxy\[aws\]'"):
        AwsSigV4Config.model_validate(
            {**base, **_keys(), "role_arn": "arn:aws:iam::123456789012:role/r"}
        )
    AwsSigV4Config.model_validate({**base, **_keys()})  # static keys need no botocore


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"secret_access_key": None}, "must be given together"),
        ({"access_key_id": None, "secret_access_key": None, "session_token": "t"}, "needs access"),
        ({"external_id": "ext-1"}, "only apply with role_arn"),
        ({"role_arn": "arn:aws:iam::12:role/x"}, "not an IAM role ARN"),
        ({"region": "US East"}, "not a valid AWS signing name or region"),
        ({"service": "s3/x"}, "not a valid AWS signing name or region"),
        ({"sign_host": "https://x.amazonaws.com/"}, "host\\[:port\\]"),
        ({"payload": "streaming"}, "signed"),
        ({"presign_expires": 604_801}, "less than or equal"),
        ({"unknown": 1}, "Extra inputs"),
        ({"role_arn": "arn:aws:iam::123456789012:role/r", "session_name": "bad name"}, "2-64"),
    ],
)
def test_config_errors(fields: dict[str, Any], message: str) -> None:
    raw: dict[str, Any] = {
        "scheme": "aws-sigv4",
        "service": "service",
        "region": "us-east-1",
        **_keys(),
    }
    for key, value in fields.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    with pytest.raises(ValidationError, match=message):
        AwsSigV4Config.model_validate(raw)


def test_session_name_is_cut_to_64() -> None:
    cfg = config(role_arn="arn:aws:iam::123456789012:role/app", session_name="s" * 100)
    assert cfg.session_name == "s" * 64


# -- botocore agrees: property test -------------------------------------------------------------

_PCHARS = "abcXYZ019-._~!$&'()*+,;=:@"
_segment = st.one_of(
    st.text(alphabet=_PCHARS, max_size=6),
    st.sampled_from(["", ".", "..", "%2F", "%2f", "%20", " ", "a b", "%", "%zz", "+", "é", "東"]),
    st.builds(
        quote,
        st.text(max_size=6),
        safe=st.sampled_from(["", "!$&'()*+,;=:@", "~"]),
    ),
)
_path = st.lists(_segment, max_size=5).map(lambda segs: "/" + "/".join(segs))
_query_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)


def _encode_query_part(style: str, text: str) -> str:
    if style == "strict":
        return quote(text, safe="")
    if style == "lenient":
        return quote(text, safe="/:@!$'()*,;")
    if style == "plus":
        return quote_plus(text)
    return "".join(ch for ch in text if ch not in "&=#%")  # raw, as a careless client sends it


_query = st.lists(
    st.tuples(
        st.sampled_from(["strict", "lenient", "plus", "raw"]),
        _query_text,
        st.one_of(st.none(), _query_text),
    ),
    max_size=5,
).map(
    lambda items: "&".join(
        _encode_query_part(style, key)
        + ("" if value is None else "=" + _encode_query_part(style, value))
        for style, key, value in items
    )
)
_header_value = st.text(alphabet=" \tabcXYZ019-_.:;,/=+\"'()[]{}", max_size=12)
_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Content-Type",
                "Content-MD5",
                "X-Amz-Meta-Owner",
                "x-amz-target",
                "X-Amz-Acl",
                "X-Listed",
                "X-Unlisted",
                "User-Agent",
                "Traceparent",
                "X-Amzn-Trace-Id",
            ]
        ),
        _header_value,
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"]),
    service=st.sampled_from(["s3", "service", "execute-api", "s3-outposts", "dynamodb"]),
    region=st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2"]),
    path=_path,
    query=_query,
    headers=_headers,
    body=st.binary(max_size=64),
    payload=st.sampled_from(["signed", "unsigned"]),
    token=st.sampled_from([None, TOKEN]),
    sign_host=st.sampled_from([None, "bucket.s3.us-east-1.amazonaws.com"]),
    port=st.sampled_from(["", ":443", ":8443"]),
)
def test_botocore_verifies_what_the_proxy_signs(
    method: str,
    service: str,
    region: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    payload: str,
    token: str | None,
    sign_host: str | None,
    port: str,
) -> None:
    s = signer(
        service=service,
        region=region,
        payload=payload,
        session_token=token,
        sign_host=sign_host,
        signed_headers=["x-listed"],
    )
    upstream = UpstreamRequest(
        method=method,
        scheme="https",
        host=f"example.amazonaws.com{port}",
        path=path,
        query=query,
        headers=CIMultiDictProxy(CIMultiDict(headers)),
        body=body if payload == "signed" else None,
    )
    result = s.sign(upstream, CTX)
    again = botocore_recompute(
        result.request,
        access_key=AKID,
        secret_key=SECRET,
        token=token,
        region=region,
        service=service,
        amz_date=AMZ_DATE,
    )
    shown = (
        again.canonical_request.replace(token, "**********") if token else (again.canonical_request)
    )
    assert result.details["canonical_request"] == shown
    assert again.string_to_sign == result.string_to_sign
    assert again.signature == signature_of(result.request)
    names = signed_header_names(result.request)
    assert not {"user-agent", "traceparent", "x-amzn-trace-id", "x-unlisted"} & set(names)
    sha = result.request.headers.get("X-Amz-Content-Sha256")
    if payload == "unsigned":
        assert sha == UNSIGNED_PAYLOAD
    elif service in {"s3", "s3-outposts"}:
        assert sha == hashlib.sha256(body).hexdigest()
    else:
        assert sha is None


# -- concurrency --------------------------------------------------------------------------------


def _mixed_requests() -> list[tuple[str, UpstreamRequest]]:
    out = []
    for i in range(40):
        out.append(
            (
                "s3",
                request(
                    f"https://bucket.s3.us-east-1.amazonaws.com/dir/./k{i}%2F x",
                    method="PUT",
                    body=b"s3-%d" % i,
                ),
            )
        )
        out.append(
            (
                "service",
                request(
                    f"https://example.amazonaws.com/a/../p{i}%20?b={i}&a={i}",
                    method="POST",
                    headers={"Content-Type": "text/plain"},
                    body=b"svc-%d" % i,
                ),
            )
        )
    return out


def test_shared_signers_interleaved_across_threads_and_tasks() -> None:
    source = StaticCredentialSource(AwsCredentials(AKID, SECRET, TOKEN))
    signers = {
        "s3": AwsSigV4Signer(config(service="s3"), credential_source=source),
        "service": AwsSigV4Signer(config(), credential_source=source),
    }
    work = _mixed_requests()
    reference = [signers[kind].sign(req, CTX) for kind, req in work]
    barrier = threading.Barrier(8)

    def sign_all(offset: int) -> list[SignResult]:
        barrier.wait()
        order = work[offset:] + work[:offset]
        results = [signers[kind].sign(req, CTX) for kind, req in order]
        return results[-offset:] + results[:-offset] if offset else results

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(sign_all, [0, 3, 7, 11, 19, 23, 29, 31]))
    for results in runs:
        for got, want in zip(results, reference, strict=True):
            assert got.request.headers["Authorization"] == want.request.headers["Authorization"]
            assert got.request.path == want.request.path
            assert got.request.query == want.request.query

    async def interleaved() -> list[SignResult]:
        async def one(kind: str, req: UpstreamRequest) -> SignResult:
            await asyncio.sleep(0)
            return signers[kind].sign(req, CTX)

        return await asyncio.gather(*(one(kind, req) for kind, req in reversed(work)))

    for got, want in zip(asyncio.run(interleaved()), reversed(reference), strict=True):
        assert got.request.headers["Authorization"] == want.request.headers["Authorization"]
    for (kind, _), result in zip(work, reference, strict=True):
        verify_with_botocore(result, service=kind, token=TOKEN)


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_never_in_repr_or_str() -> None:
    cfg = config(session_token=TOKEN)
    s = AwsSigV4Signer(cfg)
    result = s.sign(request(), CTX)
    creds = s.credentials.current()
    texts = [
        repr(cfg),
        str(cfg),
        repr(s),
        str(s),
        repr(s.credentials),
        repr(creds),
        str(creds),
        repr(result.request),
        result.string_to_sign,
        repr(dict(result.details)),
        cfg.model_dump_json(),
        str(cfg.model_dump()),
    ]
    for text in texts:
        assert SECRET not in text
        assert TOKEN not in text
        assert quote(TOKEN, safe="") not in text
    assert AKID not in repr(s) + repr(creds)
    with pytest.raises(TypeError):
        pickle.dumps(creds)


def test_sign_without_credentials_is_a_clear_error() -> None:
    class Empty(StaticCredentialSource):
        def current(self) -> AwsCredentials:
            raise CredentialsUnavailableError("AWS credentials have not been obtained yet")

        def is_ready(self) -> bool:
            return False

    s = AwsSigV4Signer(config(), credential_source=Empty(AwsCredentials("a", "b")))
    assert s.is_ready() is False
    with pytest.raises(CredentialsUnavailableError):
        s.sign(request(), CTX)
