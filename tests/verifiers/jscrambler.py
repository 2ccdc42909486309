"""An independent Jscrambler v3 verifier, written from docs/schemes.md#jscrambler without the
proxy's code.

It reads a request the way the vendor's Node server does: the query (GET/DELETE) or the form
body (POST) decoded like `querystring.parse` / a multipart form, every parameter but `signature`
signed as `METHOD;host;path-without-/v3;k=v&...` (sorted by raw key in UTF-16 order, RFC 3986
encoded), and a file part signed as the MD5 hex of its content.

`parse_querystring` and `parse_form_body` turn raw wire data into parameters; `verify` checks
parameters; `verify_query` / `verify_body` do both, for upstream test servers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

Params = dict[str, str | list[str]]

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def _node_unescape(text: str) -> str:
    raw = text.encode("utf-8", "surrogatepass").replace(b"+", b" ")
    raw = _ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), raw)
    return raw.decode("utf-8", "replace")


def _add(params: Params, key: str, value: str) -> None:
    """Node's behaviour for a repeated key: the value becomes an array."""
    if key not in params:
        params[key] = value
    else:
        previous = params[key]
        params[key] = [*previous, value] if isinstance(previous, list) else [previous, value]


def parse_querystring(raw: str) -> Params:
    """Node `querystring.parse`: skips empty segments, `k` is `k=`, repeats become lists."""
    params: Params = {}
    for segment in raw.split("&"):
        if segment == "":
            continue
        key, value = segment.split("=", 1) if "=" in segment else (segment, "")
        _add(params, _node_unescape(key), _node_unescape(value))
    return params


def parse_form_body(body: bytes, content_type: str) -> tuple[Params, dict[str, bytes]]:
    """(fields, files by part name) of a urlencoded or multipart/form-data body."""
    if content_type.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        return parse_querystring(body.decode("utf-8", "replace")), {}
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if message.get_content_type() != "multipart/form-data" or not message.is_multipart():
        raise ValueError(f"not a form body: {content_type}")
    fields: Params = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        assert isinstance(name, str), "a form part without a name"
        del part["Content-Transfer-Encoding"]  # busboy ignores it: the content is as sent
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        if part.get_filename() is not None:
            assert name not in files, "two file parts with one name"
            files[name] = content
        else:
            _add(fields, name, content.decode(part.get_content_charset() or "utf-8", "replace"))
    return fields, files


def _rfc3986(text: str) -> str:
    return "".join(
        chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in text.encode("utf-8")
    )


def _utf16_units(key: str) -> list[int]:
    data = key.encode("utf-16-le", "surrogatepass")
    return [data[i] | data[i + 1] << 8 for i in range(0, len(data), 2)]


def jscrambler_string_to_sign(
    method: str, host: str, path: str, params: Mapping[str, str], version_prefix: str = "/v3"
) -> str:
    hostname = host.lower().rsplit(":", 1)[0] if host.count(":") == 1 else host.lower()
    if version_prefix and (path == version_prefix or path.startswith(version_prefix + "/")):
        path = path[len(version_prefix) :] or "/"
    query = "&".join(
        _rfc3986(key) + "=" + _rfc3986(params[key]) for key in sorted(params, key=_utf16_units)
    )
    return ";".join((method.upper(), hostname, path, query))


def verify(
    method: str,
    host: str,
    path: str,
    params: Mapping[str, str | list[str]],
    *,
    access_key: str,
    secret_key: str,
    files: Mapping[str, bytes] | None = None,
    version_prefix: str = "/v3",
    now: datetime | None = None,
    max_skew_s: float = 300.0,
) -> bool:
    """True iff `params` carry exactly our access_key, a timestamp and a valid signature.

    `params` are the decoded parameters the server received (lists for repeated keys, which the
    server would see as `String(array)`); `files` the file parts' contents. With `now`, the
    timestamp must also be within `max_skew_s` of it (no tolerance is documented).
    """
    flat = {k: ",".join(v) if isinstance(v, list) else v for k, v in params.items()}
    auth = [params.get(name) for name in ("access_key", "timestamp", "signature")]
    if not all(isinstance(value, str) for value in auth) or auth[0] != access_key:
        return False
    signature = flat.pop("signature")
    try:
        sent_at = datetime.strptime(flat["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    if now is not None and abs((now - sent_at).total_seconds()) > max_skew_s:
        return False
    for name, content in (files or {}).items():
        if name in flat:
            return False
        flat[name] = hashlib.md5(content).hexdigest()
    data = jscrambler_string_to_sign(method, host, path, flat, version_prefix)
    mac = hmac.new(secret_key.upper().encode("utf-8"), data.encode("utf-8"), hashlib.sha256)
    return hmac.compare_digest(base64.b64encode(mac.digest()).decode(), signature)


def verify_query(method: str, host: str, path: str, raw_query: str, **kwargs: Any) -> bool:
    """Verify a GET/DELETE request from its raw query string (no leading `?`).

    `kwargs` are `verify`'s: access_key, secret_key, version_prefix, now, max_skew_s.
    """
    return verify(method, host, path, parse_querystring(raw_query), **kwargs)


def verify_body(
    method: str, host: str, path: str, body: bytes, content_type: str, **kwargs: Any
) -> bool:
    """Verify a POST request from its raw body and Content-Type (kwargs as `verify_query`)."""
    fields, files = parse_form_body(body, content_type)
    return verify(method, host, path, fields, files=files, **kwargs)
