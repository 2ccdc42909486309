"""The token request of `oauth2-client-credentials` (RFC 6749 section 4.4), and its answer.

Client authentication: `client_secret_basic` (RFC 6749 2.3.1: id and secret form-encoded, then
base64), `client_secret_post` (both as form fields) or `private_key_jwt` (RFC 7523: a JWT signed
with the client's RSA or P-256 key, fresh `jti` each time). Every error message is safe to log:
it never holds the secret, the assertion or a token.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from typing import Any, Final
from urllib.parse import quote_plus

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from proxy.signers.oauth2_tokens import TokenError, TokenGrant
from proxy.upstream_tls import TlsConfig, load_material

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME: Final = 60  # seconds
DEFAULT_LIFETIME: Final = 300.0  # without `expires_in`
MAX_ANSWER_BYTES: Final = 1024 * 1024
# What a header value may carry: visible ASCII (RFC 6750's b64token is a subset).
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")
# The `error` codes of RFC 6749 5.2 and 4.1.2.1, shown in messages; any other value is not (a
# hostile or broken server could echo what it was sent, the client secret included).
_ERROR_CODES: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
_TOKEN_TYPE: Final = re.compile(r"[A-Za-z0-9_-]{1,20}")


def signing_algorithm(key: Any) -> str:
    """RS256 for an RSA key (2048 bits or more), ES256 for a P-256 key; ValueError otherwise."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"the RSA private_key has {key.key_size} bits; at least 2048")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise ValueError(f"the EC private_key is on {key.curve.name}; ES256 needs P-256")
        return "ES256"
    raise ValueError("private_key must be an RSA or P-256 EC key (RS256 / ES256)")


def load_signing_key(pem: str) -> Any:
    """The PEM private key; ValueError (never quoting the key) if it is not one we can use."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError("private_key is encrypted; give it unencrypted") from None
    except ValueError:
        raise ValueError("private_key is not a PEM private key") from None
    signing_algorithm(key)
    return key


class TokenClient:
    """Sends the token request with its own HTTP client session (started by `start()`)."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        auth_method: str,
        client_secret: str | None,
        private_key: str | None,
        key_id: str | None,
        params: dict[str, str | list[str]],
        tls: TlsConfig,
        timeout: float,
    ) -> None:
        self.token_url = token_url
        self._client_id = client_id
        self._auth_method = auth_method
        self._secret = client_secret
        self._key = load_signing_key(private_key) if private_key is not None else None
        self._algorithm = signing_algorithm(self._key) if self._key is not None else None
        self._key_id = key_id
        self._params = params
        self._tls = load_material(tls)
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def tls_digest(self) -> str:
        return self._tls.digest

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls.ssl, limit=4),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def request_form(self, now: float) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """The form fields and headers of one token request (a fresh assertion each time)."""
        form: list[tuple[str, str]] = [("grant_type", "client_credentials")]
        for name, value in self._params.items():
            form += [(name, item) for item in ([value] if isinstance(value, str) else value)]
        headers = {"Accept": "application/json"}
        if self._auth_method == "client_secret_basic":
            assert self._secret is not None
            pair = f"{quote_plus(self._client_id, safe='')}:{quote_plus(self._secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif self._auth_method == "client_secret_post":
            assert self._secret is not None
            form += [("client_id", self._client_id), ("client_secret", self._secret)]
        else:
            form += [
                ("client_id", self._client_id),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", self._assertion(now)),
            ]
        return form, headers

    def _assertion(self, now: float) -> str:
        issued = int(now)
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self.token_url,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self._key_id} if self._key_id else None
        assert self._key is not None
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    async def fetch(self) -> TokenGrant:
        if self._session is None:
            raise TokenError("the token client is not started")
        requested_at, requested_at_wall = time.monotonic(), time.time()
        form, headers = self.request_form(requested_at_wall)
        try:
            async with self._session.post(
                self.token_url, data=form, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                body = await _read_limited(response)
        except TimeoutError:
            message = f"the token endpoint did not answer within {self._timeout} s"
            raise TokenError(message) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise TokenError(f"cannot connect to the token endpoint: {reason}") from None
        except aiohttp.ClientError as exc:
            raise TokenError(f"the token request failed: {type(exc).__name__}") from None
        return parse_token_answer(status, body, requested_at, requested_at_wall)

    def __repr__(self) -> str:
        return f"TokenClient(token_url={self.token_url!r}, auth_method={self._auth_method!r})"


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise TokenError("the token endpoint's answer is over 1 MiB")
    return bytes(body)


def parse_token_answer(
    status: int, body: bytes, requested_at: float, requested_at_wall: float
) -> TokenGrant:
    """The grant in a token endpoint's answer (RFC 6749 5.1), or TokenError saying what is wrong."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if status != 200:
        code = document.get("error") if isinstance(document, dict) else None
        detail = f" ({code})" if code in _ERROR_CODES else ""
        raise TokenError(f"the token endpoint answered {status}{detail}")
    if not isinstance(document, dict):
        raise TokenError("the token endpoint's answer is not a JSON object")
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError("the token endpoint's answer has no access_token")
    if not _HEADER_SAFE.fullmatch(token):
        raise TokenError("the access_token holds characters an HTTP header cannot carry")
    token_type = document.get("token_type")
    if not isinstance(token_type, str):
        raise TokenError("the token endpoint's answer has no token_type (Bearer expected)")
    if token_type.lower() != "bearer":
        shown = token_type if _TOKEN_TYPE.fullmatch(token_type) else "(not shown)"
        raise TokenError(f"token_type {shown!r} is not Bearer")
    lifetime = _lifetime(document.get("expires_in"))
    return TokenGrant(token, lifetime, requested_at, requested_at_wall)


def _lifetime(expires_in: object) -> float:
    if expires_in is None:
        return DEFAULT_LIFETIME
    if isinstance(expires_in, str) and expires_in.strip().isdigit():  # seen in the wild
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise TokenError("expires_in is not a number")
    if expires_in <= 0:
        raise TokenError("expires_in is not a positive number of seconds")
    return float(expires_in)
