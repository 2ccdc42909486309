"""RFC 9421 HTTP Message Signatures: the RFC's own examples (Appendix B, and the component
examples of section 2), then the signer's rules (parameters, Content-Digest, refusals, keys)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import http_sf
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.config import ConfigError, parse_config
from proxy.signers import SIGNERS
from proxy.signers.base import SigningContext, UpstreamRequest
from proxy.signers.http_message_signatures import (
    HttpMessageSignaturesConfig,
    HttpMessageSignaturesSigner,
)
from proxy.signers.rfc9421 import MissingComponent, RequestParts, component_value, parse_component
from tests.conftest import VECTORS
from tests.signers.helpers import request_for

RFC = json.loads((VECTORS / "rfc9421.json").read_text(encoding="utf-8"))
KEYS: dict[str, Any] = RFC["keys"]
CREATED = 1618884473
CTX = SigningContext(now_ms=CREATED * 1000 + 999, nonce="b3k2pp5k7z-50gnwp.yemd")


def rfc_message(raw: str) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """An Appendix B message -> method, target, header lines (in order), body."""
    head, _, body = raw.partition("\n\n")
    request_line, *lines = head.split("\n")
    method, target, _ = request_line.split(" ")
    fields = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return method, target, fields, body.encode()


def secret_of(key_name: str) -> str:
    key = KEYS[key_name]
    return str(key.get("private_pem") or key["base64"])


def signer_for(example: dict[str, Any], **overrides: Any) -> HttpMessageSignaturesSigner:
    """A signer configured as the example's Signature-Input says."""
    params = example["signature_params"]
    components = [
        http_sf.ser(http_sf.parse(c.encode(), tltype="item"))
        for c in example.get("covered_components") or [ser for ser in _components_of(params)]
    ]
    config: dict[str, Any] = {
        "scheme": "http-message-signatures",
        "key_id": example["key"],
        "algorithm": example["alg"],
        "key": secret_of(example["key"]),
        "key_encoding": "base64" if example["alg"] == "hmac-sha256" else "raw",
        "label": example["label"],
        "components": components,
        "nonce": ";nonce=" in params,
        "tag": "header-example" if ";tag=" in params else None,
        "content_digest": "none",  # the RFC's Content-Digest is signed as the message has it
        **overrides,
    }
    return HttpMessageSignaturesSigner(HttpMessageSignaturesConfig.model_validate(config))


def _components_of(params: str) -> list[str]:
    inner = http_sf.parse(f"x={params}".encode(), tltype="dictionary")["x"]
    assert isinstance(inner, tuple)
    return [http_sf.ser([item]) for item in inner[0]]  # type: ignore[list-item]


def example_request(example: dict[str, Any]) -> UpstreamRequest:
    if "message_raw" in example:
        method, target, fields, body = rfc_message(example["message_raw"])
        fields = [(n, v) for n, v in fields if n.lower() not in {"signature", "signature-input"}]
    else:
        message = RFC["messages"][example["message"]]
        method, target = message["method"], message["target"]
        fields, body = [tuple(f) for f in message["fields"]], message["body"].encode()
    host = next(v for n, v in fields if n.lower() == "host")
    return request_for(f"https://{host}{target}", method, fields, body)


def verify(alg: str, key_name: str, base: bytes, signature: bytes) -> None:
    """Check a signature with the RFC's public key (or the shared secret). Raises if bad."""
    if alg == "hmac-sha256":
        secret = base64.b64decode(KEYS[key_name]["base64"])
        import hmac as hmac_

        if not hmac_.compare_digest(hmac_.new(secret, base, hashlib.sha256).digest(), signature):
            raise InvalidSignature
        return
    public = serialization.load_pem_public_key(KEYS[key_name]["public_pem"].encode())
    if alg == "ed25519":
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(signature, base)
    elif alg.startswith("ecdsa"):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        size = len(signature) // 2
        r, s = int.from_bytes(signature[:size]), int.from_bytes(signature[size:])
        hash_ = hashes.SHA256() if alg == "ecdsa-p256-sha256" else hashes.SHA384()
        public.verify(encode_dss_signature(r, s), base, ec.ECDSA(hash_))
    elif alg == "rsa-pss-sha512":
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)
        public.verify(signature, base, pss, hashes.SHA512())
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, base, padding.PKCS1v15(), hashes.SHA256())


def _signature_bytes(header: str, label: str) -> bytes:
    member = http_sf.parse(header.encode(), tltype="dictionary")[label]
    assert isinstance(member, tuple)
    assert isinstance(member[0], bytes)
    return member[0]


REQUEST_EXAMPLES = [e for e in RFC["examples"] if e["message"] != "test-response"]
RESPONSE_EXAMPLES = [e for e in RFC["examples"] if e["message"] == "test-response"]


def test_every_request_example_of_b2_is_here() -> None:
    sections = {e["section"] for e in REQUEST_EXAMPLES}
    assert {"B.2.1", "B.2.2", "B.2.3", "B.2.5", "B.2.6"} <= sections
    # B.2.4 signs a response (@status): the proxy signs requests only.
    assert [e["section"] for e in RESPONSE_EXAMPLES] == ["B.2.4"]


@pytest.mark.parametrize("example", REQUEST_EXAMPLES, ids=[e["section"] for e in REQUEST_EXAMPLES])
def test_rfc_example(example: dict[str, Any]) -> None:
    signer = signer_for(example)
    result = signer.sign(example_request(example), CTX)
    assert result.string_to_sign == example["signature_base"]  # byte for byte
    headers = result.request.headers
    expected_input = f"{example['label']}={example['signature_params']}"
    assert headers["Signature-Input"] == expected_input
    ours = _signature_bytes(headers["Signature"], example["label"])
    base = result.string_to_sign.encode()
    verify(example["alg"], example["key"], base, ours)
    rfc = base64.b64decode(example["signature_b64"])
    if example["deterministic"]:
        assert ours == rfc  # hmac-sha256 (B.2.5) and ed25519 (B.2.6, B.4) exactly
    else:
        verify(example["alg"], example["key"], base, rfc)  # the RFC's own value verifies too
        with pytest.raises(InvalidSignature):
            verify(example["alg"], example["key"], base + b" ", ours)


def test_rsa_v1_5_with_the_traditional_rsa_key_b11() -> None:
    assert KEYS["test-key-rsa"]["private_pem"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    example = next(e for e in RFC["examples"] if e["section"] == "B.2.6")
    signer = signer_for(example, algorithm="rsa-v1_5-sha256", key=secret_of("test-key-rsa"))
    result = signer.sign(example_request(example), CTX)
    signature = _signature_bytes(result.request.headers["Signature"], "sig-b26")
    verify("rsa-v1_5-sha256", "test-key-rsa", result.string_to_sign.encode(), signature)


def test_ecdsa_p384_with_a_generated_key() -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    signer = make_signer(algorithm="ecdsa-p384-sha384", key=pem, components=["@method"])
    result = signer.sign(request_for("https://example.com/", "GET"), CTX)
    signature = _signature_bytes(result.request.headers["Signature"], "sig1")
    assert len(signature) == 96  # r || s, 48 bytes each
    r, s = int.from_bytes(signature[:48]), int.from_bytes(signature[48:])
    private.public_key().verify(
        encode_dss_signature(r, s), result.string_to_sign.encode(), ec.ECDSA(hashes.SHA384())
    )


# -- components: the examples of RFC 9421 section 2 ---------------------------------------------


def value_of(text: str, url: str, headers: list[tuple[str, str]] | None = None, **kw: Any) -> str:
    component = parse_component(text, kw.get("structured") or {})
    request = request_for(url, kw.get("method", "POST"), headers)
    return component_value(component, RequestParts.of(request), kw.get("structured") or {})


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("@method", "POST"),
        ("@target-uri", "https://www.example.com/path?param=value"),
        ("@authority", "www.example.com"),
        ("@scheme", "https"),
        ("@request-target", "/path?param=value"),
        ("@path", "/path"),
        ("@query", "?param=value"),
    ],
)
def test_derived_components_2_2(component: str, expected: str) -> None:
    assert value_of(component, "https://www.example.com/path?param=value") == expected


def test_query_forms_2_2_7() -> None:
    url = "https://www.example.com/path?param=value&foo=bar&baz=bat%2Dman"
    assert value_of("@query", url) == "?param=value&foo=bar&baz=bat%2Dman"
    assert value_of("@query", "https://www.example.com/path") == "?"
    assert value_of("@path", "https://www.example.com") == "/"


def test_authority_is_lower_case_without_default_port() -> None:
    url = "https://Example.COM:443/x"
    assert value_of("@authority", url, [("Host", "Example.COM:443")]) == "example.com"
    assert value_of("@authority", "http://h.test:8080/", [("Host", "h.test:8080")]) == "h.test:8080"
    assert value_of("@target-uri", url, [("Host", "Example.COM:443")]) == "https://example.com/x"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("param", "value"), ("foo", "bar"), ("baz", "batman"), ("qux", "")],
)
def test_query_param_2_2_8(name: str, expected: str) -> None:
    url = "https://www.example.com/path?param=value&foo=bar&baz=batman&qux="
    assert value_of(f'@query-param;name="{name}"', url) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("var", "this%20is%20a%20big%0Amultiline%20value"),
        ("bar", "with%20plus%20whitespace"),
        ("fa%C3%A7ade%22%3A%20", "something"),
    ],
)
def test_query_param_encoding_2_2_8(name: str, expected: str) -> None:
    url = (
        "https://example.com/parameters?var=this%20is%20a%20big%0Amultiline%20value"
        "&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"
    )
    assert value_of(f'@query-param;name="{name}"', url) == expected


def test_query_param_name_must_be_written_encoded() -> None:
    with pytest.raises(ValueError, match='name="a%20b%7E"'):
        parse_component('@query-param;name="a b~"')


@pytest.mark.parametrize("query", ["a=1", "Pet=dog&Pet=cat", ""])
def test_absent_or_repeated_query_param_is_refused(query: str) -> None:
    with pytest.raises(MissingComponent, match="Pet"):
        value_of('@query-param;name="Pet"', f"https://example.com/?{query}")


FIELDS_2_1 = [
    ("Host", "www.example.com"),
    ("Date", "Tue, 20 Apr 2021 02:07:56 GMT"),
    ("X-OWS-Header", "   Leading and trailing whitespace.   "),
    ("X-Obs-Fold-Header", "Obsolete\n    line folding."),
    ("Cache-Control", "max-age=60"),
    ("Cache-Control", "   must-revalidate"),
    ("Example-Dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
    ("X-Empty-Header", ""),
]


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("host", "www.example.com"),
        ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
        ("x-ows-header", "Leading and trailing whitespace."),
        ("x-obs-fold-header", "Obsolete line folding."),
        ("cache-control", "max-age=60, must-revalidate"),
        ("example-dict", "a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
        ("x-empty-header", ""),
        ("Cache-Control", "max-age=60, must-revalidate"),  # names are lower-cased
    ],
)
def test_http_fields_2_1(component: str, expected: str) -> None:
    assert value_of(component, "https://www.example.com/", FIELDS_2_1) == expected


DICT = [("Example-Dict", "  a=1, b=2;x=1;y=2, c=(a   b    c), d")]
DECLARED = {"example-dict": "dictionary"}


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("example-dict", "a=1, b=2;x=1;y=2, c=(a   b    c), d"),
        ("example-dict;sf", "a=1, b=2;x=1;y=2, c=(a b c), d"),
        ('example-dict;key="a"', "1"),
        ('example-dict;key="d"', "?1"),
        ('example-dict;key="b"', "2;x=1;y=2"),
        ('example-dict;key="c"', "(a b c)"),
    ],
)
def test_structured_fields_2_1_1_and_2_1_2(component: str, expected: str) -> None:
    value = value_of(component, "https://example.com/", DICT, structured=DECLARED)
    assert value == expected


def test_identifiers_serialise_as_in_the_rfc() -> None:
    assert parse_component("example-dict;sf", DECLARED).identifier == '"example-dict";sf'
    assert parse_component('"example-dict";key="a"', DECLARED).identifier == (
        '"example-dict";key="a"'
    )
    assert parse_component('@query-param;name="Pet"').identifier == '"@query-param";name="Pet"'


def test_missing_dictionary_member_is_refused() -> None:
    with pytest.raises(MissingComponent, match="no member 'zz'"):
        value_of('example-dict;key="zz"', "https://example.com/", DICT, structured=DECLARED)


def test_registered_structured_field_needs_no_declaration() -> None:
    headers = [("Priority", "u=1,   i")]
    assert value_of("priority;sf", "https://example.com/", headers) == "u=1, i"


def test_binary_wrapped_fields_2_1_3() -> None:
    headers = [("Example-Header", "value, with, lots"), ("Example-Header", "of, commas")]
    assert value_of("example-header", "https://e.com/", headers) == (
        "value, with, lots, of, commas"
    )
    assert value_of("example-header;bs", "https://e.com/", headers) == (
        ":dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("@status", "responses only"),
        ("@nope", "unknown derived component"),
        ("@method;x", "takes no parameters"),
        ("@query-param", "name="),
        ("content-type;req", "responses or trailers"),
        ("content-type;tr", "responses or trailers"),
        ("content-type;sf", "no known structured type"),
        ("x-a;bs;sf", "cannot be combined"),
        ("transfer-encoding", "hop-by-hop"),
        ("signature", "carries the signature"),
        ('content-digest;key="sha-256";bs', "cannot be combined"),
        ("content-type;foo", "unknown parameter"),
    ],
)
def test_bad_components_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_component(text)


# -- the signer ------------------------------------------------------------------------------------

ED25519 = secret_of("test-key-ed25519")


def make_signer(**overrides: Any) -> HttpMessageSignaturesSigner:
    config = {
        "scheme": "http-message-signatures",
        "key_id": "test-key-ed25519",
        "algorithm": "ed25519",
        "key": ED25519,
        "components": ["@method", "@authority", "@path", "@query", "content-type"],
        **overrides,
    }
    return HttpMessageSignaturesSigner(HttpMessageSignaturesConfig.model_validate(config))


def test_registered() -> None:
    assert SIGNERS["http-message-signatures"] is HttpMessageSignaturesSigner


def test_defaults() -> None:
    config = HttpMessageSignaturesConfig.model_validate(
        {
            "scheme": "http-message-signatures",
            "key_id": "k",
            "algorithm": "ed25519",
            "key": ED25519,
            "components": ["@method"],
        }
    )
    assert (config.created, config.expires, config.nonce, config.tag) == (True, None, False, None)
    assert (config.include_alg, config.content_digest) == (False, "sha-256")
    assert (config.key_encoding, config.label) == ("raw", "sig1")


def test_parameter_order_created_expires_keyid_nonce_tag_alg() -> None:
    signer = make_signer(expires=300, nonce=True, tag="app-1", include_alg=True)
    request = request_for("https://example.com/a?b=c", "GET", [("Content-Type", "text/plain")])
    result = signer.sign(request, CTX)
    assert result.request.headers["Signature-Input"] == (
        'sig1=("@method" "@authority" "@path" "@query" "content-type");created=1618884473'
        ';expires=1618884773;keyid="test-key-ed25519";nonce="b3k2pp5k7z-50gnwp.yemd"'
        ';tag="app-1";alg="ed25519"'
    )
    assert result.string_to_sign.endswith(
        '\n"@signature-params": ' + result.request.headers["Signature-Input"][len("sig1=") :]
    )


def test_created_false_and_a_fresh_nonce_per_request() -> None:
    signer = make_signer(created=False, nonce=True, components=["@method"])
    request = request_for("https://example.com/", "GET")
    first = signer.sign(request, SigningContext(now_ms=0)).request.headers["Signature-Input"]
    second = signer.sign(request, SigningContext(now_ms=0)).request.headers["Signature-Input"]
    assert "created" not in first
    assert first != second  # the nonce


def test_apps_signature_headers_are_replaced() -> None:
    request = request_for(
        "https://example.com/",
        "GET",
        [
            ("Signature", "sig1=:AAAA:"),
            ("Signature-Input", 'sig1=("@method");keyid="forged"'),
            ("signature", "app=:BBBB:"),
            ("Content-Type", "text/plain"),
        ],
    )
    headers = make_signer().sign(request, CTX).request.headers
    assert len(headers.getall("Signature")) == len(headers.getall("Signature-Input")) == 1
    assert "forged" not in headers["Signature-Input"]
    assert headers["Signature"] != "sig1=:AAAA:"


def test_missing_covered_header_is_refused() -> None:
    with pytest.raises(MissingComponent, match="no content-type header"):
        make_signer().sign(request_for("https://example.com/", "GET"), CTX)


def digest_signer(**overrides: Any) -> HttpMessageSignaturesSigner:
    return make_signer(components=["@method", "content-digest", "content-length"], **overrides)


@pytest.mark.parametrize("alg", ["sha-256", "sha-512"])
def test_content_digest_is_computed_over_the_body_and_replaces_the_apps(alg: str) -> None:
    signer = digest_signer(content_digest=alg)
    assert signer.needs_body("GET")
    assert signer.needs_body("POST")
    body = b'{"hello": "world"}'
    request = request_for(
        "https://example.com/",
        "POST",
        [("Content-Digest", "sha-256=:c3RhbGU=:"), ("Content-Length", "18")],
        body,
    )
    headers = signer.sign(request, CTX).request.headers
    digest = hashlib.new(alg.replace("-", ""), body).digest()
    assert headers.getall("Content-Digest") == [f"{alg}=:{base64.b64encode(digest).decode()}:"]
    if alg == "sha-512":  # the RFC's test-request carries this very value
        assert headers["Content-Digest"] == RFC["messages"]["test-request"]["fields"][3][1]


def test_content_digest_from_an_incremental_digest_equals_the_whole() -> None:
    signer = digest_signer()
    body = bytes(range(256)) * 1000
    running = signer.new_body_digest()
    assert running is not None
    for start in range(0, len(body), 4096):
        running.update(body[start : start + 4096])
    whole = signer.sign(request_for("https://e.com/", "POST", {"Content-Length": "1"}, body), CTX)
    spooled_request = request_for("https://e.com/", "POST", {"Content-Length": "1"}, None)
    spooled = signer.sign(spooled_request.replace(body_digest=running), CTX)
    assert spooled.request.headers["Content-Digest"] == whole.request.headers["Content-Digest"]


def test_content_digest_none_signs_the_apps_header_or_refuses() -> None:
    signer = digest_signer(content_digest="none")
    assert not signer.needs_body("POST")
    sent = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    request = request_for(
        "https://e.com/", "POST", [("Content-Digest", sent), ("Content-Length", "2")]
    )
    result = signer.sign(request, CTX)
    assert f'"content-digest": {sent}' in result.string_to_sign
    with pytest.raises(MissingComponent, match="content-digest"):
        signer.sign(request_for("https://e.com/", "POST", [("Content-Length", "2")]), CTX)


def test_no_body_needed_without_a_covered_content_digest() -> None:
    assert not make_signer().needs_body("POST")
    assert make_signer().new_body_digest() is None


def test_hmac_raw_key() -> None:
    signer = make_signer(algorithm="hmac-sha256", key="a shared secret", components=["@method"])
    result = signer.sign(request_for("https://e.com/", "GET"), CTX)
    import hmac as hmac_

    mac = hmac_.new(b"a shared secret", result.string_to_sign.encode(), hashlib.sha256).digest()
    assert result.request.headers["Signature"] == f"sig1=:{base64.b64encode(mac).decode()}:"


# -- keys, checked at config load ------------------------------------------------------------------


def _config_text(algorithm: str, key_path: str, **extra: str) -> str:
    lines = "".join(f"        {k}: {v}\n" for k, v in extra.items())
    return (
        "routes:\n"
        "  - name: r\n"
        "    match: {host: api.example.com}\n"
        "    signer:\n"
        "      scheme: http-message-signatures\n"
        "      key_id: k1\n"
        f"      algorithm: {algorithm}\n"
        f"      key: {{file: {key_path}}}\n"
        "      components: ['@method']\n" + lines
    )


@pytest.mark.parametrize(
    ("algorithm", "key_name", "message"),
    [
        ("ed25519", "test-key-rsa-pss", "ed25519 needs an Ed25519 private key; the key is an RSA"),
        ("rsa-pss-sha512", "test-key-ecc-p256", "needs an RSA private key; the key is an EC"),
        ("ecdsa-p384-sha384", "test-key-ecc-p256", "needs a key on secp384r1"),
        ("ecdsa-p256-sha256", "test-shared-secret", "not a PEM private key"),
    ],
)
def test_key_mismatch_is_a_config_error_at_the_key_path(
    tmp_path: Any, algorithm: str, key_name: str, message: str
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(secret_of(key_name) + "\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(_config_text(algorithm, str(key_file)), "config.yaml")
    text = str(caught.value)
    assert "config.yaml:8: routes[0].signer.key:" in text
    assert message in text
    assert "MII" not in text
    assert secret_of("test-shared-secret") not in text


def test_bad_component_is_a_config_error_at_the_components_path(tmp_path: Any) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(ED25519)
    text = _config_text("ed25519", str(key_file)).replace("['@method']", "['@method', '@status']")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml")
    assert "config.yaml:9: routes[0].signer.components: @status applies to responses only" in str(
        caught.value
    )


def test_short_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(ValueError, match="1024 bits"):
        make_signer(algorithm="rsa-pss-sha512", key=pem)


def test_base64_key_encoding() -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        make_signer(algorithm="hmac-sha256", key="not base64!", key_encoding="base64")
    with pytest.raises(ValueError, match="hmac-sha256 only"):
        make_signer(key_encoding="base64")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"components": ["@method", '"@method"']}, "listed twice"),
        ({"label": "Sig 1"}, "structured-field key"),
        ({"label": "a, b"}, "structured-field key"),
        ({"structured_fields": {"bad name": "item"}}, "not an HTTP field name"),
        ({"components": ['"bad name"']}, "not an HTTP field name"),
        ({"tag": "tab\there"}, "printable ASCII"),
        ({"expires": 0}, "greater than or equal to 1"),
        ({"components": ["example-dict;sf"]}, "structured_fields"),
        ({"components": ['content-digest;key="sha-512"']}, "can never be present"),
    ],
)
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_signer(**overrides)


def test_any_token_is_a_field_name_as_in_structured_fields() -> None:
    # RFC 9110 5.1: a field name is a token, dots included; the same rule as structured_fields.
    signer = make_signer(components=["x.trace"], structured_fields={"x.trace": "item"})
    result = signer.sign(request_for("https://e.com/", "GET", [("X.Trace", "1")]), CTX)
    assert '"x.trace": 1\n' in result.string_to_sign


def test_declared_structured_field() -> None:
    signer = make_signer(
        components=["example-dict;sf"], structured_fields={"Example-Dict": "dictionary"}
    )
    result = signer.sign(request_for("https://e.com/", "GET", DICT), CTX)
    assert '"example-dict";sf: a=1, b=2;x=1;y=2, c=(a b c), d\n' in result.string_to_sign


def test_malformed_structured_header_is_refused() -> None:
    signer = make_signer(components=["priority;sf"])
    with pytest.raises(MissingComponent, match="not a structured dictionary"):
        signer.sign(request_for("https://e.com/", "GET", [("Priority", "u=(((")]), CTX)


def test_repr_shows_no_key() -> None:
    signer = make_signer(algorithm="hmac-sha256", key="hmac-secret-Zq81", components=["@method"])
    assert "hmac-secret-Zq81" not in repr(signer)
    assert "MC4CAQ" not in repr(make_signer())
