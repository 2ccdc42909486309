"""Jscrambler v3: the golden vectors, then the signer against the independent verifier."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import shutil
import subprocess
from datetime import UTC, datetime
from typing import Any
from unittest import mock
from urllib.parse import quote, quote_plus, urlsplit

import pytest
from aiohttp import MultipartWriter, StreamReader
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError

from proxy.signers import SIGNERS
from proxy.signers.base import SigningContext, SigningRefused, UpstreamRequest
from proxy.signers.jscrambler import JscramblerConfig, JscramblerSigner
from tests.conftest import load_vectors
from tests.verifiers.jscrambler import (
    parse_form_body,
    parse_querystring,
    verify,
    verify_body,
    verify_query,
)

VECTORS = load_vectors("jscrambler")
AUTH = ("access_key", "timestamp", "signature")
ACCESS_KEY = "AK-PUBLIC-7f3e"
SECRET_KEY = "sk-Distinctive-Secret-9c1d"
NOW_MS = 1_700_000_000_123
NOW_ISO = "2023-11-14T22:13:20.123Z"
CREDS = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_signer(access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, **extra: Any):
    config = JscramblerConfig.model_validate(
        {"scheme": "jscrambler", "access_key": access_key, "secret_key": secret_key, **extra}
    )
    return JscramblerSigner(config)


def make_request(
    method: str,
    path: str = "/v3/code.json",
    query: str = "",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "api.jscrambler.com",
) -> UpstreamRequest:
    return UpstreamRequest(
        method=method,
        scheme="https",
        host=host,
        path=path,
        query=query,
        headers=CIMultiDictProxy(CIMultiDict(headers or {})),
        body=body,
    )


def ctx_at(iso: str = NOW_ISO) -> SigningContext:
    moment = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return SigningContext(now_ms=round(moment.timestamp() * 1000), nonce="nonce-1")


def rfc3986(text: str) -> str:
    return quote(text, safe="")


def build_multipart(
    fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]], boundary: str = "tEsTb"
) -> tuple[bytes, str]:
    """A plain RFC 7578 form, the way a legacy app's HTTP library writes one."""
    out = b""
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, filename, content in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def server_form(body: bytes, content_type: str) -> dict[str, Any]:
    """What an aiohttp upstream's `request.post()` makes of a body: a second, real parser."""
    stream = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    headers = CIMultiDict({"Content-Type": content_type})
    form = await make_mocked_request("POST", "/", headers=headers, payload=stream).post()
    return {
        name: value
        if isinstance(value, str)
        else (value.filename, value.content_type, value.file.read())
        for name, value in form.items()
    }


# -- the golden vectors ------------------------------------------------------------------------


async def vector_request(vector: dict[str, Any]) -> UpstreamRequest:
    url = urlsplit(vector["url"])
    body: bytes | None = None
    headers = dict(vector["headers_in"])
    if vector["method"] in {"POST", "PUT", "PATCH"}:
        # The vector gives the app's params and files; the body is a form of them.
        writer = MultipartWriter("form-data")
        for name, value in vector["app_params"].items():
            writer.append(value).set_content_disposition("form-data", name=name)
        for index, file in enumerate(vector["files"]):
            content = base64.b64decode(file["content_b64"])
            part = writer.append(content, {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name=f"file_{index}", filename=file["name"])
        body = await writer.as_bytes()
        headers["Content-Type"] = writer.content_type
    return make_request(vector["method"], url.path, url.query, body, headers, url.netloc)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
async def test_vector(vector: dict[str, Any]) -> None:
    creds = vector["credentials"]
    signer = make_signer(creds["access_key"], creds["secret_key"])
    result = signer.sign(await vector_request(vector), ctx_at(vector["time"]["timestamp"]))
    expected = vector["expected"]
    out = result.request

    assert result.string_to_sign == expected["string_to_sign"]
    assert out.url == expected["signed_url"]
    if vector["method"] in {"GET", "DELETE"}:
        params, files = parse_querystring(out.query), {}
    else:
        params, files = parse_form_body(out.body or b"", out.headers["Content-Type"])
    assert params["signature"] == expected["signature"]
    assert list(params.items()) == list(expected["params_out"].items())
    file_parts = expected.get("file_parts", {})
    assert {name: hashlib.md5(content).hexdigest() for name, content in files.items()} == {
        name: part["md5"] for name, part in file_parts.items()
    }
    if files:  # filenames and bytes survive, as an aiohttp server reads them
        form = await server_form(out.body or b"", out.headers["Content-Type"])
        for name, part in file_parts.items():
            assert form[name][0] == part["filename"]
            assert form[name][2] == files[name]
    assert verify_signed(out, creds["access_key"], creds["secret_key"])


def verify_signed(out: UpstreamRequest, access_key: str, secret_key: str, **kw: Any) -> bool:
    if out.body is None or out.method in {"GET", "DELETE", "HEAD", "OPTIONS"}:
        return verify_query(
            out.method,
            out.host,
            out.path,
            out.query,
            access_key=access_key,
            secret_key=secret_key,
            **kw,
        )
    return verify_body(
        out.method,
        out.host,
        out.path,
        out.body,
        out.headers["Content-Type"],
        access_key=access_key,
        secret_key=secret_key,
        **kw,
    )


def test_post_vectors_sign_the_same_as_urlencoded() -> None:
    """A urlencoded body carries the same params, so signs the same as the multipart vector."""
    vector = next(v for v in VECTORS if v["name"] == "post-no-files")
    url = urlsplit(vector["url"])
    body = "&".join(f"{k}={rfc3986(v)}" for k, v in vector["app_params"].items()).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    request = make_request("POST", url.path, body=body, headers=headers, host=url.netloc)
    creds = vector["credentials"]
    result = make_signer(**creds).sign(request, ctx_at(vector["time"]["timestamp"]))
    assert result.string_to_sign == vector["expected"]["string_to_sign"]
    assert result.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields, _ = parse_form_body(result.request.body or b"", result.request.headers["Content-Type"])
    assert fields == vector["expected"]["params_out"]


# -- properties against the independent verifier -----------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
keys = st.one_of(texts, st.sampled_from([*AUTH, "ids", "a", "A", "a b", "&", "=", "+", "%"]))
pairs_st = st.lists(st.tuples(keys, texts), max_size=8)
ENCODERS = {
    "rfc3986": rfc3986,
    "plus": lambda s: quote_plus(s, safe=""),
    "lower-hex": lambda s: "".join(
        c if c.isascii() and c.isalnum() else quote(c, safe="").lower() for c in s
    ),
}


def expected_app_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    folded: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in AUTH:
            folded.setdefault(key, []).append(value)
    return {key: ",".join(values) for key, values in folded.items()}


def assert_fresh_auth(params: dict[str, Any]) -> None:
    """Exactly one access_key, timestamp and signature, and they are ours."""
    assert params["access_key"] == ACCESS_KEY
    assert params["timestamp"] == NOW_ISO
    assert isinstance(params["signature"], str)


@SETTINGS
@given(
    pairs=pairs_st,
    encoder=st.sampled_from(sorted(ENCODERS)),
    method=st.sampled_from(["GET", "DELETE", "HEAD", "OPTIONS", "get"]),
    path=st.sampled_from(["/v3/code.json", "/v3", "/v3x/a.json", "/code.json", "/v3/a%20b.json"]),
    host=st.sampled_from(["api.jscrambler.com", "API.Jscrambler.com:8443", "127.0.0.1:80"]),
)
def test_query_params_verify(
    pairs: list[tuple[str, str]], encoder: str, method: str, path: str, host: str
) -> None:
    enc = ENCODERS[encoder]
    query = "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs)
    request = make_request(method, path, query, host=host)
    out = make_signer().sign(request, ctx_at()).request

    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)
    params = parse_querystring(out.query)
    assert_fresh_auth(params)
    assert list(params)[-1] == "signature"
    assert {k: v for k, v in params.items() if k not in AUTH} == expected_app_params(pairs)
    assert (out.path, out.host, out.body, out.headers) == (path, host, None, request.headers)


@SETTINGS
@given(raw=st.text(st.sampled_from("ab=&+%2FfEe9Z ;"), max_size=20))
def test_raw_query_decoded_like_node(raw: str) -> None:
    """Whatever query the app sends, the params signed are those the server's parser sees."""
    out = make_signer().sign(make_request("GET", query=raw), ctx_at()).request
    received = parse_querystring(out.query)
    app = {k: ",".join(v) if isinstance(v, list) else v for k, v in parse_querystring(raw).items()}
    assert {k: v for k, v in received.items() if k not in AUTH} == {
        k: v for k, v in app.items() if k not in AUTH
    }
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)


@SETTINGS
@given(pairs=pairs_st, method=st.sampled_from(["POST", "PUT", "PATCH"]), stale_query=st.booleans())
def test_urlencoded_body_params_verify(
    pairs: list[tuple[str, str]], method: str, stale_query: bool
) -> None:
    body = "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in pairs)
    query = "keep=1&signature=stale&access_key=OLD" if stale_query else ""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    out = (
        make_signer()
        .sign(make_request(method, query=query, body=body.encode(), headers=headers), ctx_at())
        .request
    )

    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)
    fields, files = parse_form_body(out.body or b"", out.headers["Content-Type"])
    assert_fresh_auth(fields)
    assert files == {}
    assert {k: v for k, v in fields.items() if k not in AUTH} == expected_app_params(pairs)
    assert out.query == ("keep=1" if stale_query else "")


safe_names = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=6).filter(
    lambda n: '"' not in n and "\\" not in n
)
file_content = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\r\n", b"--tEsTb", b"x\r\n--tEsTbx\r\n", b"\r\n\r\n", b"\r"]),
)


@SETTINGS
@given(
    fields=st.lists(st.tuples(st.one_of(safe_names, st.sampled_from(AUTH)), texts), max_size=5),
    contents=st.tuples(file_content, file_content),
    filenames=st.tuples(safe_names, safe_names),
)
def test_multipart_two_files_round_trip(
    fields: list[tuple[str, str]], contents: tuple[bytes, bytes], filenames: tuple[str, str]
) -> None:
    assume(not any(b"--tEsTb" in c for c in contents))  # a form can't contain its boundary
    fields = [(k, v) for k, v in fields if k not in {"file_0", "file_1"}]
    files = [("file_0", filenames[0], contents[0]), ("file_1", filenames[1], contents[1])]
    body, content_type = build_multipart(fields, files)
    request = make_request("POST", body=body, headers={"Content-Type": content_type})
    out = make_signer().sign(request, ctx_at()).request

    assert out.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)
    received, received_files = parse_form_body(out.body or b"", out.headers["Content-Type"])
    assert received_files == {"file_0": contents[0], "file_1": contents[1]}
    assert_fresh_auth(received)
    assert {k: v for k, v in received.items() if k not in AUTH} == expected_app_params(fields)
    for name, filename, _ in files:  # the original part headers are kept byte for byte
        assert f'name="{name}"; filename="{filename}"'.encode() in (out.body or b"")


async def test_multipart_as_an_aiohttp_server_reads_it() -> None:
    body, content_type = build_multipart(
        [("mode", "starter"), ("tag", "a"), ("tag", "b")],
        [("file_0", "a.js", b"\x00\xffone\r\n"), ("file_1", "b.bin", bytes(range(256)))],
    )
    request = make_request("POST", body=body, headers={"Content-Type": content_type})
    out = make_signer().sign(request, ctx_at()).request
    form = await server_form(out.body or b"", out.headers["Content-Type"])
    assert form["file_0"] == ("a.js", "application/octet-stream", b"\x00\xffone\r\n")
    assert form["file_1"] == ("b.bin", "application/octet-stream", bytes(range(256)))
    assert (form["mode"], form["tag"], form["access_key"]) == ("starter", "a,b", ACCESS_KEY)


def test_multipart_framing_and_header_forms() -> None:
    """Preamble, padding, epilogue, escaped and RFC 2231 names, a declared charset."""
    body = (
        b"preamble\r\n--B  \r\n"
        b'Content-Disposition: form-data; name="q\\"uo\\\\te"\r\n\r\n1\r\n'
        b"--B\r\nContent-Disposition: form-data; name*=utf-8''%C3%BC%20k\r\n\r\n2\r\n"
        b"--B\r\nContent-Disposition: form-data; name=latin\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n\xe9\r\n"
        b'--B\r\nContent-Disposition: form-data; name="file_0"; filename=""\r\n\r\n\r\n'
        b"--B--\r\nepilogue\r\n--B\r\nignored"
    )
    request = make_request(
        "POST", body=body, headers={"Content-Type": "multipart/form-data; boundary=B"}
    )
    result = make_signer().sign(request, ctx_at())
    fields, files = parse_form_body(
        result.request.body or b"", result.request.headers["Content-Type"]
    )
    app = {k: v for k, v in fields.items() if k not in AUTH}
    assert app == {'q"uo\\te': "1", "\u00fc k": "2", "latin": "\u00e9"}
    assert files == {"file_0": b""}  # an empty filename still makes a file part
    assert f"file_0={hashlib.md5(b'').hexdigest()}" in result.string_to_sign
    assert verify_signed(result.request, ACCESS_KEY, SECRET_KEY)


# -- tampering is caught (the verifier can fail) -----------------------------------------------


@SETTINGS
@given(pairs=st.lists(st.tuples(keys, texts), min_size=1, max_size=6), data=st.data())
def test_tampered_query_is_rejected(pairs: list[tuple[str, str]], data: st.DataObject) -> None:
    query = "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in pairs)
    out = make_signer().sign(make_request("GET", query=query), ctx_at()).request
    params = parse_querystring(out.query)
    name = data.draw(st.sampled_from([k for k in params if k != "signature"]))
    original = params[name]
    new_value = data.draw(texts.filter(lambda v: v != original))
    params[name] = new_value
    assert not verify("GET", out.host, out.path, params, **CREDS)


def test_tampered_requests_are_rejected() -> None:
    out = make_signer().sign(make_request("GET", query="limit=10"), ctx_at()).request
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)
    assert not verify_signed(out.replace(method="DELETE"), ACCESS_KEY, SECRET_KEY)
    assert not verify_signed(out.replace(path="/v3/other.json"), ACCESS_KEY, SECRET_KEY)
    assert not verify_signed(out.replace(host="evil.example"), ACCESS_KEY, SECRET_KEY)
    assert not verify_signed(out, ACCESS_KEY, "other-secret")
    assert not verify_signed(out, "OTHER-KEY", SECRET_KEY)
    assert not verify_signed(out.replace(query=out.query + "&extra=1"), ACCESS_KEY, SECRET_KEY)

    body, content_type = build_multipart([("a", "1")], [("file_0", "f.js", b"content")])
    request = make_request("POST", body=body, headers={"Content-Type": content_type})
    signed = make_signer().sign(request, ctx_at()).request
    assert signed.body is not None
    assert verify_signed(signed, ACCESS_KEY, SECRET_KEY)
    assert not verify_signed(
        signed.replace(body=signed.body.replace(b"content", b"c0ntent")), ACCESS_KEY, SECRET_KEY
    )


def test_old_timestamps_rejected_when_asked() -> None:
    out = make_signer().sign(make_request("GET"), ctx_at()).request
    now = datetime.fromtimestamp(NOW_MS / 1000, tz=UTC)
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY, now=now)
    late = datetime.fromtimestamp(NOW_MS / 1000 + 3600, tz=UTC)
    assert not verify_signed(out, ACCESS_KEY, SECRET_KEY, now=late)


# -- request shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "signed"),
    [
        ("/v3/code.json", "/code.json"),
        ("/v3", "/"),
        ("/v3/", "/"),
        ("/v3x/code.json", "/v3x/code.json"),
        ("/v30/code.json", "/v30/code.json"),
        ("/api/v3/code.json", "/api/v3/code.json"),
        ("/code.json", "/code.json"),
    ],
)
def test_version_prefix_stripped_on_a_segment_boundary(path: str, signed: str) -> None:
    result = make_signer().sign(make_request("GET", path), ctx_at())
    assert result.string_to_sign.split(";")[2] == signed
    assert result.request.path == path  # the wire path is untouched


def test_custom_and_empty_version_prefix() -> None:
    string = make_signer(version_prefix="/api/v3").sign(make_request("GET", "/api/v3/a"), ctx_at())
    assert string.string_to_sign.split(";")[2] == "/a"
    string = make_signer(version_prefix="").sign(make_request("GET", "/v3/a"), ctx_at())
    assert string.string_to_sign.split(";")[2] == "/v3/a"


@pytest.mark.parametrize("prefix", ["v3", "/v3/", "/"])
def test_bad_version_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ValidationError, match="version_prefix"):
        make_signer(version_prefix=prefix)


@pytest.mark.parametrize(
    ("method", "needs"),
    [
        ("GET", False),
        ("DELETE", False),
        ("HEAD", False),
        ("OPTIONS", False),
        ("POST", True),
        ("PUT", True),
        ("PATCH", True),
        ("post", True),
    ],
)
def test_needs_body(method: str, needs: bool) -> None:
    assert make_signer().needs_body(method) is needs


def test_registered() -> None:
    assert SIGNERS["jscrambler"] is JscramblerSigner


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
def test_empty_post_gets_an_urlencoded_body(content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    out = make_signer().sign(make_request("POST", body=b"", headers=headers), ctx_at()).request
    assert out.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert out.body is not None
    assert out.body.startswith(b"access_key=AK-PUBLIC-7f3e&timestamp=")
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)


def test_empty_multipart_post_stays_multipart() -> None:
    request = make_request("POST", body=b"", headers={"Content-Type": "multipart/form-data"})
    out = make_signer().sign(request, ctx_at()).request
    assert out.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert verify_signed(out, ACCESS_KEY, SECRET_KEY)


def test_multipart_boundary_is_reproducible_and_absent_from_the_content() -> None:
    body, content_type = build_multipart([], [("file_0", "f", b"data")])
    request = make_request("POST", body=body, headers={"Content-Type": content_type})
    first = make_signer().sign(request, ctx_at()).request
    assert first == make_signer().sign(request, ctx_at()).request
    boundary = first.headers["Content-Type"].split("boundary=")[1].encode()
    # An upload that happens to contain that boundary makes the signer pick another one.
    body, content_type = build_multipart([], [("file_0", "f", b"--" + boundary)])
    request = make_request("POST", body=body, headers={"Content-Type": content_type})
    second = make_signer().sign(request, ctx_at()).request
    assert boundary.decode() not in second.headers["Content-Type"]
    assert verify_signed(second, ACCESS_KEY, SECRET_KEY)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/json", b'{"a": 1}', "must be form-urlencoded or multipart"),
        (None, b"a=1", "must be form-urlencoded or multipart"),
        ("multipart/form-data", b"--x\r\n\r\n--x--", "no valid boundary"),
        ("multipart/form-data; boundary=\u00e9", b"--x\r\n\r\n--x--", "no valid boundary"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1",
            "closing boundary is missing",
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nX-A: 1\r\n\r\n1\r\n--x--",
            "no form-data name",
        ),
        ("multipart/form-data; boundary=x", b"--x\r\nno headers\r\n--x--", "malformed"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n1\r\n'
            b'--x\r\nContent-Disposition: form-data; name="f"; filename="b"\r\n\r\n2\r\n--x--',
            "unique names",
        ),
    ],
)
def test_unsignable_bodies_raise_clear_errors(
    content_type: str | None, body: bytes, message: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with pytest.raises(SigningRefused, match=message) as error:
        make_signer().sign(make_request("POST", body=body, headers=headers), ctx_at())
    # The wrong kind of body is a 415; a form the scheme cannot read is a 400.
    wrong_type = "form-urlencoded or multipart" in message
    assert (error.value.status, error.value.code) == (
        (415, "unsupported_media_type") if wrong_type else (400, "invalid_body")
    )
    assert SECRET_KEY.upper() not in str(error.value)
    assert SECRET_KEY not in str(error.value)


def test_unbuffered_body_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="buffered body"):
        make_signer().sign(make_request("POST", body=None), ctx_at())


def test_secrets_never_in_repr() -> None:
    config = JscramblerConfig.model_validate(
        {"scheme": "jscrambler", "access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
    )
    signer = JscramblerSigner(config)
    body, content_type = build_multipart([("a", "1")], [("file_0", "f", b"x")])
    results = [
        signer.sign(make_request("GET", query="a=1"), ctx_at()),
        signer.sign(
            make_request("POST", body=body, headers={"Content-Type": content_type}), ctx_at()
        ),
    ]
    shown = [repr(config), str(config), repr(signer), str(signer), config.model_dump_json()]
    shown += [text for r in results for text in (repr(r.request), str(r.request), r.string_to_sign)]
    for text in shown:
        assert SECRET_KEY not in text
        assert SECRET_KEY.upper() not in text
    for text in shown[:5] + [repr(r.request) for r in results]:
        assert ACCESS_KEY not in text


# -- the verifier's parser is Node's -----------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to compare with")
def test_verifier_parses_queries_like_node() -> None:
    rng = random.Random(7)
    # ASCII only: a query on the wire is ASCII (Node truncates raw non-ASCII to one byte).
    alphabet = "ab=&+%2FfEe9 ;"
    samples = ["", "a", "=", "=v", "&&", "a=1=2", "%", "%zz=%", "%E4%B8=x", "a=%FF%FE", "+a+=+b+"]
    samples += ["a=1&a=2&A=3", "a&a=", "a=%F0%9F%98", "k=%2B+%20", ";a=1;b=2", "x=%C0%AF", "%26=1"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(300)]
    script = (
        "const qs = require('querystring');"
        "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "process.stdout.write(JSON.stringify(input.map((s) => ({...qs.parse(s)}))));"
    )
    run = subprocess.run(
        ["node", "-e", script],
        input=json.dumps(samples),
        capture_output=True,
        text=True,
        check=True,
    )
    for sample, from_node in zip(samples, json.loads(run.stdout), strict=True):
        assert parse_querystring(sample) == from_node, sample
