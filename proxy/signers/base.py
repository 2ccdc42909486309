"""The one interface every signing scheme implements.

A signer is built once per config load from its (immutable) config model and is shared by all
requests on its route, so it keeps no per-request state: everything a signature depends on
arrives as arguments — the request about to go upstream, the time and a nonce — and `sign()`
returns a new request. That makes every signer a pure function, testable from vectors without a
network (the model is httpx's `Auth` with its `requires_request_body` flag).
"""

from __future__ import annotations

import dataclasses
import time
import typing
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import BaseModel, ConfigDict

# In a scheme's validation error's context: a path below the field that failed (hmac:
# `after_sign.headers.X`), which the config loader appends to the error's location.
KEY_PATH_CTX: Final = "key_path"

OnCredentialRefresh = Callable[[str, float | None], None]
"""`(result, expiry)`: a scheme with expiring credentials reports each refresh ("success" or
"error") and the new expiry (Unix seconds, None if unknown)."""


class BodyDigest(Protocol):
    """A running hash a scheme offers so a large body can be hashed as it arrives.

    hashlib's hashes and `hmac.HMAC` are ones; a scheme may hand out its own type and read it
    back in `sign()`.
    """

    def update(self, data: bytes, /) -> None: ...

    def copy(self) -> Self: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


class SpooledBody(Protocol):
    """A large body the proxy spooled to disk: its size, its bytes (again on each call), and
    `close()`, which the proxy calls when the request is done."""

    @property
    def size(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class CredentialsUnavailable(Exception):
    """The scheme has no usable credentials right now (503, not the app's fault)."""


class SigningRefused(Exception):
    """The request cannot be signed because of what the client sent: a 4xx, never a 5xx.

    Raise a subclass; the message is shown to the client and logged, so it never holds a
    secret. A config or programming error is not this: anything else `sign()` raises is a 500.
    """

    status: ClassVar[int]
    code: ClassVar[str]


class UnsupportedMediaType(SigningRefused):
    """The body's Content-Type is not one the scheme can sign (415)."""

    status = 415
    code = "unsupported_media_type"


class InvalidBody(SigningRefused):
    """The body is of the right type but the scheme cannot parse it (400)."""

    status = 400
    code = "invalid_body"


class SignerConfig(BaseModel):
    """Base of every scheme's config model: immutable, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str

    @classmethod
    def scheme_name(cls) -> str:
        """The one name a subclass declares, as `scheme: Literal["name"]`."""
        names = typing.get_args(cls.model_fields["scheme"].annotation)
        if len(names) != 1 or not isinstance(names[0], str):
            raise TypeError(f"{cls.__name__}.scheme must be declared as Literal['<name>']")
        return names[0]

    def with_upstream_host(self, host: str) -> Self:
        """The config completed from the route's upstream host (AWS derives its region)."""
        return self


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """The request as it will be sent upstream.

    `path` and `query` are raw, percent-encoded as they go on the wire: the proxy keeps the
    app's bytes unless a signer changes them. `body` is the whole body when the signer asked for
    it (`b""` when there is none) and None when the body streams past the signer.
    """

    method: str
    scheme: str
    host: str
    path: str
    query: str
    headers: CIMultiDictProxy[str]
    body: bytes | None = None
    # A large body is not in `body`: it was spooled to disk while `body_digest` (the scheme's
    # own `new_body_digest()`) was fed with it; `spooled` is what the forwarder sends.
    body_digest: BodyDigest | None = None
    spooled: SpooledBody | None = None

    @property
    def body_size(self) -> int:
        if self.spooled is not None:
            return self.spooled.size
        return len(self.body or b"")

    @property
    def hostname(self) -> str:
        """`host` without its port (IPv6 literals keep their brackets)."""
        host = self.host
        if host.startswith("["):
            return host[: host.index("]") + 1]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def url(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.host}{self.path}{query}"

    def __repr__(self) -> str:
        # Header values and the query may carry credentials: show names and sizes only.
        names = ", ".join(self.headers.keys())
        body = "streamed" if self.body is None else f"{len(self.body)} bytes"
        if self.spooled is not None:
            body = f"{self.body_size} bytes spooled"
        return (
            f"UpstreamRequest({self.method} {self.scheme}://{self.host}{self.path}"
            f" query={len(self.query)} chars, headers=[{names}], body={body})"
        )

    def body_hash(self, new_digest: Callable[[], BodyDigest]) -> BodyDigest:
        """A digest fed with the whole body: a copy of `body_digest` when a large body was hashed
        as it arrived (so `new_digest` must make the same kind), else `new_digest()` over `body`."""
        if self.body_digest is not None:
            return self.body_digest.copy()
        digest = new_digest()
        digest.update(self.body or b"")
        return digest

    def replace(self, **changes: Any) -> UpstreamRequest:
        return dataclasses.replace(self, **changes)

    def with_headers(
        self,
        set_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        remove: Iterable[str] = (),
    ) -> UpstreamRequest:
        """Remove `remove` and every existing copy of the names in `set_headers`, then add those.

        This is the credential-isolation rule: a signer never keeps or duplicates the app's own
        copy of a header it sets.
        """
        items = list(set_headers.items()) if isinstance(set_headers, Mapping) else list(set_headers)
        headers = CIMultiDict(self.headers)
        for name in [*remove, *(name for name, _ in items)]:
            headers.popall(name, None)
        for name, value in items:
            headers.add(name, value)
        return dataclasses.replace(self, headers=CIMultiDictProxy(headers))


class SigningContext:
    """Everything time- or randomness-dependent, injected so signing is reproducible.

    The nonce is made on first use: a random UUID costs more than most signatures, and only
    some schemes use one.
    """

    __slots__ = ("_nonce", "fixed_nonce", "now_ms")

    def __init__(self, now_ms: int, nonce: str | None = None) -> None:
        self.now_ms = now_ms
        self._nonce = nonce
        # The nonce given by the caller (`sign --nonce`), None when each use may draw its own:
        # a scheme with several random values uses this one for all of them.
        self.fixed_nonce = nonce

    @classmethod
    def now(cls) -> SigningContext:
        return cls(now_ms=time.time_ns() // 1_000_000)

    @property
    def nonce(self) -> str:
        if self._nonce is None:
            self._nonce = str(uuid.uuid4())
        return self._nonce

    def __repr__(self) -> str:
        return f"SigningContext(now_ms={self.now_ms}, nonce={self._nonce!r})"

    @property
    def now_seconds(self) -> int:
        return self.now_ms // 1000


@dataclass(frozen=True, slots=True)
class SignResult:
    """The signed request plus what `signing-proxy sign` shows to explain it.

    `string_to_sign` and `details` (for example SigV4's canonical request) never hold a secret;
    they may be printed, they are never logged.
    """

    request: UpstreamRequest
    string_to_sign: str
    details: Mapping[str, str] = field(default_factory=dict)


ConfigT = TypeVar("ConfigT", bound=SignerConfig)


class Signer(ABC, Generic[ConfigT]):
    """One signing scheme bound to one route's credentials.

    A scheme is `class XSigner(Signer[XConfig])`: `config_model` is `XConfig` and `scheme` its
    `Literal` name, both filled in here from that one line.
    """

    scheme: ClassVar[str]
    config_model: ClassVar[type[SignerConfig]]
    # True when the scheme hashes the payload: the proxy then reads the body (up to the route's
    # max_body_bytes) before signing; otherwise the body streams.
    requires_request_body: ClassVar[bool] = False
    # Credential fields that are identifiers sent in clear on every request (an API key id, a
    # DevResults token): `signing-proxy sign` shows them. Every other credential is redacted.
    public_fields: ClassVar[frozenset[str]] = frozenset()
    # Upstream statuses that mean "these credentials were refused" (OAuth2: 401): the proxy
    # reports them to `on_upstream_status` and sends a replayable request once more.
    refused_statuses: ClassVar[frozenset[int]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            model = next(iter(typing.get_args(base)), None)
            if isinstance(model, type) and issubclass(model, SignerConfig):
                name = model.scheme_name()
                if cls.__dict__.get("scheme", name) != name:
                    raise TypeError(f"{cls.__name__}.scheme differs from its config's {name!r}")
                cls.config_model, cls.scheme = model, name

    def __init__(self, config: ConfigT) -> None:
        """Keep what signing needs from `config` (keyed MACs, header tuples), never the model."""

    @classmethod
    def create(cls, config: ConfigT, *, route: str, on_refresh: OnCredentialRefresh | None) -> Self:
        """Build the signer of `route`. Schemes with refreshing credentials override this."""
        return cls(config)

    def needs_body(self, method: str) -> bool:
        """Whether this request's body must be read before signing (per method, e.g. POST)."""
        return self.requires_request_body

    def new_body_digest(self) -> BodyDigest | None:
        """A fresh running digest of the body, for schemes that can hash incrementally.

        With one, the proxy feeds the body through it as it reads, may spool a large body to
        disk, and hands `sign()` the digest (`request.body_digest`) instead of the bytes.
        None (the default): the scheme needs the bytes themselves, held in memory.
        """
        return None

    @abstractmethod
    def sign(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        """Return the request to send. Pure: no I/O, no state kept between calls."""

    async def before_sign(self) -> None:
        """Called before each `sign()`: a scheme whose credentials are being fetched waits for
        that fetch here (never for a refresh while its credentials are valid)."""

    def on_upstream_status(self, status: int, request: UpstreamRequest) -> None:
        """The upstream answered `request` (as signed) with one of `refused_statuses`: drop the
        credentials it carried (if still current) and obtain new ones. The proxy then sends a
        replayable request once more (after `before_sign()`)."""

    def sign_for_display(self, request: UpstreamRequest, ctx: SigningContext) -> SignResult:
        """What `signing-proxy sign` shows: `sign()`, unless the scheme's credentials must be
        fetched (then a placeholder such as `Bearer <redacted>`)."""
        return self.sign(request, ctx)

    async def fetch_for_display(self) -> str | None:
        """For `sign --fetch-token`: obtain real credentials once and say so (never showing
        them); None when the scheme fetches nothing. Raises CredentialsUnavailable."""
        return None

    def problem(self) -> str | None:
        """Why the credentials are not usable yet (for /readyz), or None."""
        return None if self.is_ready() else "the credentials are not available yet"

    def still_current(self) -> bool:
        """Whether a reload that leaves this route's config unchanged may keep this signer (and
        its credentials). False when a file it read outside the config changed."""
        return True

    def is_ready(self) -> bool:
        """Whether the credentials are usable now (readiness probe)."""
        return True

    async def start(self) -> None:
        """Begin background work (credential refresh); called once the loop is running."""

    async def close(self) -> None:
        """Stop background work."""
