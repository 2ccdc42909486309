"""`oauth2-client-credentials`: an access token from the client credentials grant (RFC 6749
4.4), fetched and cached per route, sent as `Authorization: Bearer <token>`.

The proxy holds the client secret or private key; the app never sees them nor the token. The
token's life (fetch at start, background refresh, single flight, backoff, expiry) is in
`oauth2_tokens.py`, the token request itself in `oauth2_client.py`. A 401 from the upstream
drops the token that was refused (`on_upstream_status`); the proxy then sends a replayable
request once more with a new one.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from yarl import URL

from proxy.admission import is_loopback
from proxy.secrets import SecretValue
from proxy.signers.base import (
    CredentialsUnavailable,
    OnCredentialRefresh,
    Signer,
    SignerConfig,
    SigningContext,
    SignResult,
    UpstreamRequest,
)
from proxy.signers.oauth2_client import TokenClient, load_signing_key
from proxy.signers.oauth2_tokens import TokenSource
from proxy.upstream_tls import TlsConfig, material_digest

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
_RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "scope",
        "audience",
        "resource",
    }
)
_REDACTED = "Bearer <redacted>"


class OAuth2Config(SignerConfig):
    scheme: Literal["oauth2-client-credentials"]
    token_url: str = Field(description="The authorization server's token endpoint (https).")
    client_id: SecretValue
    client_secret: SecretValue | None = Field(
        default=None, description="For client_secret_basic and client_secret_post."
    )
    auth_method: AuthMethod = "client_secret_basic"
    private_key: SecretValue | None = Field(
        default=None, description="PEM RSA or P-256 key for private_key_jwt (RS256 / ES256)."
    )
    key_id: SecretValue | None = Field(
        default=None, description="`kid` of the client assertion (a secret value, as elsewhere)."
    )
    scope: str | None = None
    audience: str | None = None
    resource: str | list[str] | None = None
    extra_params: dict[str, str] = Field(
        default_factory=dict, description="More form fields of the token request."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS towards the token endpoint.")
    timeout: float = Field(default=10.0, gt=0, description="Seconds for one token request.")

    @field_validator("token_url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        try:
            url = URL(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a URL") from None
        if url.scheme not in {"http", "https"} or not url.host or not url.is_absolute():
            raise ValueError(f"{value!r} must be an absolute https:// URL")
        if url.user or url.password or url.fragment:
            raise ValueError(f"{value!r} must not carry credentials or a fragment")
        if url.scheme == "http" and not is_loopback(url.host):
            raise ValueError(
                "the token endpoint gets the client's credentials: https:// is required "
                "(http:// only on loopback)"
            )
        return value

    @field_validator("extra_params")
    @classmethod
    def _no_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        clashes = sorted(_RESERVED_PARAMS & value.keys())
        if clashes:
            raise ValueError(f"{', '.join(clashes)} cannot be set in extra_params")
        return value

    @model_validator(mode="after")
    def _credentials_for_method(self) -> Self:
        if self.auth_method == "private_key_jwt":
            if self.private_key is None:
                raise ValueError("auth_method private_key_jwt needs private_key")
            if self.client_secret is not None:
                raise ValueError("private_key_jwt sends no client_secret: remove it")
            load_signing_key(self.private_key.reveal())
        else:
            if self.client_secret is None:
                raise ValueError(f"auth_method {self.auth_method} needs client_secret")
            if self.private_key is not None:
                raise ValueError(f"auth_method {self.auth_method} uses no private_key")
        return self

    def token_params(self) -> dict[str, str | list[str]]:
        params: dict[str, str | list[str]] = {}
        for name in ("scope", "audience", "resource"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return {**params, **self.extra_params}


class OAuth2Signer(Signer[OAuth2Config]):
    refused_statuses = frozenset({401})
    public_fields = frozenset({"client_id", "key_id"})  # identifiers, never sent upstream

    def __init__(
        self,
        config: OAuth2Config,
        *,
        route: str = "",
        on_refresh: OnCredentialRefresh | None = None,
    ) -> None:
        self._config = config
        self._client = TokenClient(
            token_url=config.token_url,
            client_id=config.client_id.reveal(),
            auth_method=config.auth_method,
            client_secret=config.client_secret.reveal() if config.client_secret else None,
            private_key=config.private_key.reveal() if config.private_key else None,
            key_id=config.key_id.reveal() if config.key_id else None,
            params=config.token_params(),
            tls=config.tls,
            timeout=config.timeout,
        )
        self.tokens = TokenSource(self._client.fetch, route=route, on_refresh=on_refresh)

    @classmethod
    def create(
        cls, config: OAuth2Config, *, route: str, on_refresh: OnCredentialRefresh | None
    ) -> OAuth2Signer:
        return cls(config, route=route, on_refresh=on_refresh)

    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        header = (("Authorization", f"Bearer {self.tokens.current()}"),)
        return SignResult(request=request.with_headers(header), string_to_sign="")

    def sign_for_display(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        header = (("Authorization", _REDACTED),)
        details = {"token": f"client credentials grant from {self._config.token_url}"}
        return SignResult(request.with_headers(header), string_to_sign="", details=details)

    async def before_sign(self) -> None:
        await self.tokens.wait_usable()

    def on_upstream_status(self, status: int, request: UpstreamRequest) -> None:
        sent = request.headers.get("Authorization", "")
        if status in self.refused_statuses and sent.startswith("Bearer "):
            self.tokens.invalidate(sent.removeprefix("Bearer "))

    async def fetch_for_display(self) -> str:
        await self._client.start()
        try:
            if not await self.tokens.fetch_once():
                raise CredentialsUnavailable(self.tokens.problem() or "no token")
        finally:
            await self._client.close()
        return f"an access token was fetched from {self._config.token_url} (not shown)"

    def still_current(self) -> bool:
        return material_digest(self._config.tls) == self._client.tls_digest

    def is_ready(self) -> bool:
        return self.tokens.obtained_once()

    def problem(self) -> str | None:
        return self.tokens.problem()

    async def start(self) -> None:
        await self._client.start()
        await self.tokens.start()

    async def close(self) -> None:
        await self.tokens.close()
        await self._client.close()

    def __repr__(self) -> str:
        return (
            f"OAuth2Signer(token_url={self._config.token_url!r}, "
            f"auth_method={self._config.auth_method!r}, credentials=**********)"
        )
