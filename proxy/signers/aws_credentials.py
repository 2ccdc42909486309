"""Where `aws-sigv4` gets its credentials: static keys, botocore's default chain, or STS AssumeRole.

A `CredentialSource` hands the signer one frozen `AwsCredentials` snapshot per signature through
the synchronous `current()`: no request ever waits for, or does, credential I/O. Sources whose
credentials expire refresh them in a background task started by `start()`: each refresh runs
in a worker thread (`asyncio.to_thread`, botocore is blocking) well before the expiry
(`REFRESH_AHEAD_SECONDS`, or half the remaining lifetime for short-lived credentials), and a
failed refresh keeps the still-valid snapshot and retries with backoff.

botocore is the optional extra `signing-proxy[aws]`: it is imported here lazily, only to obtain
credentials (the signing itself is in `aws_sigv4.py`). Every refresh is reported through an
optional `on_refresh(result, expiry)` callback (`result` is "success" or "error", `expiry` the
epoch seconds of the credentials in use or None) so the proxy core can keep its metrics.

Nothing here logs, prints or `repr`s a secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from proxy.signers.base import CredentialsUnavailable, OnCredentialRefresh
from proxy.signers.refreshing import RESULT_ERROR, RESULT_SUCCESS, cancel_tasks, report_refresh

logger = logging.getLogger(__name__)

_MASK: Final = "**********"

REFRESH_AHEAD_SECONDS: Final = 300.0
"""Refresh this long before the expiry (short-lived credentials: at half their remaining life)."""
MIN_REFRESH_DELAY_SECONDS: Final = 0.05
RETRY_INITIAL_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 60.0
POLL_SECONDS_WITHOUT_EXPIRY: Final = 300.0
"""Re-read interval for refreshable botocore credentials whose expiry cannot be read."""

STS_SESSION_NAME_MAX: Final = 64
STS_SESSION_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_+=,.@-]")

INSTALL_HINT: Final = "pip install 'signing-proxy[aws]'"

OnRefresh = OnCredentialRefresh  # `on_refresh(result, expiry)`, as the other schemes'


class CredentialsUnavailableError(CredentialsUnavailable, RuntimeError):
    """No usable credentials now (not fetched yet, or expired and not refreshed)."""


def botocore_available() -> bool:
    """Whether the optional `signing-proxy[aws]` extra (botocore) is installed."""
    return importlib.util.find_spec("botocore") is not None


def sts_session_name(name: str) -> str:
    """A valid STS RoleSessionName: disallowed characters become `-`, cut to 64 characters."""
    return STS_SESSION_NAME_CHARS.sub("-", name)[:STS_SESSION_NAME_MAX]


@dataclass(frozen=True, slots=True, repr=False)
class AwsCredentials:
    """One immutable credential snapshot; a signature uses exactly one."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expiry: float | None = None  # epoch seconds; None = does not expire

    def __repr__(self) -> str:
        token = _MASK if self.session_token else None
        return (
            f"AwsCredentials(access_key_id={_MASK}, secret_access_key={_MASK}, "
            f"session_token={token}, expiry={_format_expiry(self.expiry)})"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:  # pickling would copy the secret out of our control
        raise TypeError("AWS credentials cannot be pickled")

    def expired(self, now: float) -> bool:
        return self.expiry is not None and now >= self.expiry


def _format_expiry(expiry: float | None) -> str:
    if expiry is None:
        return "never"
    return dt.datetime.fromtimestamp(expiry, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CredentialSource(ABC):
    """Gives the signer the credentials to use now."""

    @abstractmethod
    def current(self) -> AwsCredentials:
        """The snapshot to sign with; raises `CredentialsUnavailableError` when there is none."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Whether `current()` would return credentials now."""

    async def start(self) -> None:
        """Begin background refreshing (no-op for sources that never expire)."""

    async def close(self) -> None:
        """Stop background refreshing."""


class StaticCredentialSource(CredentialSource):
    """Keys from the config (`access_key_id`, `secret_access_key`, `session_token`)."""

    def __init__(self, credentials: AwsCredentials) -> None:
        self._credentials = credentials

    def current(self) -> AwsCredentials:
        return self._credentials

    def is_ready(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"StaticCredentialSource({self._credentials!r})"


class RefreshingCredentialSource(CredentialSource):
    """A source whose blocking `fetch()` runs in a thread, ahead of the expiry.

    The shared state is one attribute holding an immutable snapshot, replaced whole by the
    refresh task and read by `current()`, so a signature never sees half-updated credentials.
    """

    # When `fetch()` returns credentials without an expiry: re-fetch after this many seconds,
    # or never (None). Subclasses may change it per fetch.
    poll_without_expiry: float | None = None

    def __init__(
        self,
        *,
        name: str = "",
        on_refresh: OnRefresh | None = None,
        refresh_ahead: float = REFRESH_AHEAD_SECONDS,
        retry_initial: float = RETRY_INITIAL_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name
        self._on_refresh = on_refresh
        self._refresh_ahead = refresh_ahead
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._clock = clock
        self._credentials: AwsCredentials | None = None
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    def fetch(self) -> AwsCredentials:
        """Obtain fresh credentials. Blocking; called in a worker thread, one call at a time."""

    def current(self) -> AwsCredentials:
        credentials = self._credentials
        if credentials is None:
            raise CredentialsUnavailableError("AWS credentials have not been obtained yet")
        if credentials.expired(self._clock()):
            raise CredentialsUnavailableError(
                f"AWS credentials expired at {_format_expiry(credentials.expiry)} "
                "and could not be refreshed"
            )
        return credentials

    def is_ready(self) -> bool:
        credentials = self._credentials
        return credentials is not None and not credentials.expired(self._clock())

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                self._refresh_loop(), name=f"aws-credentials-refresh:{self._name}"
            )

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_tasks(task)

    async def refresh_once(self) -> bool:
        """Fetch now (in a thread) and install the result; True on success."""
        try:
            credentials = await asyncio.to_thread(self.fetch)
        except Exception as exc:  # botocore raises many types; one bad refresh must not kill us
            held = self._credentials
            logger.warning(
                "AWS credential refresh failed for route %r: %s: %s",
                self._name,
                type(exc).__name__,
                exc,
            )
            self._report(RESULT_ERROR, held.expiry if held is not None else None)
            return False
        self._credentials = credentials
        logger.info(
            "AWS credentials refreshed for route %r (expire: %s)",
            self._name,
            _format_expiry(credentials.expiry),
        )
        self._report(RESULT_SUCCESS, credentials.expiry)
        return True

    async def _refresh_loop(self) -> None:
        backoff = self._retry_initial
        while True:
            if await self.refresh_once():
                backoff = self._retry_initial
                delay = self._delay_after_success()
                if delay is None:
                    return
            else:
                delay = self._delay_after_error(backoff)
                backoff = min(backoff * 2, self._retry_max)
            await asyncio.sleep(delay)

    def _delay_after_success(self) -> float | None:
        credentials = self._credentials
        assert credentials is not None
        if credentials.expiry is None:
            return self.poll_without_expiry
        remaining = credentials.expiry - self._clock()
        # Well ahead of the expiry; credentials living less than twice `refresh_ahead` are
        # renewed at half their remaining life instead.
        return max(remaining - self._refresh_ahead, remaining / 2, MIN_REFRESH_DELAY_SECONDS)

    def _delay_after_error(self, backoff: float) -> float:
        held = self._credentials
        if held is not None and held.expiry is not None:
            remaining = held.expiry - self._clock()
            if remaining > 0:  # retry sooner than the backoff when the held ones run out
                return max(min(backoff, remaining / 2), MIN_REFRESH_DELAY_SECONDS)
        return backoff

    def _report(self, result: str, expiry: float | None) -> None:
        report_refresh(self._on_refresh, result, expiry, self._name)


class BotocoreChainSource(RefreshingCredentialSource):
    """botocore's default credential chain (environment, shared files, SSO, container, IMDS...).

    botocore resolves the chain once; refreshable credentials are then re-read ahead of their
    expiry, which makes botocore renew them inside the worker thread.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resolved: Any = None  # botocore Credentials / RefreshableCredentials

    def fetch(self) -> AwsCredentials:
        resolved = self._resolved
        if resolved is None:
            resolved = _botocore_session().get_credentials()
            if resolved is None:
                raise CredentialsUnavailableError(
                    "botocore's default credential chain found no credentials (environment, "
                    "shared credentials/config files, SSO, container or instance metadata)"
                )
            self._resolved = resolved
        frozen = resolved.get_frozen_credentials()
        refreshable = callable(getattr(resolved, "refresh_needed", None))
        expiry = _timestamp(getattr(resolved, "_expiry_time", None)) if refreshable else None
        self.poll_without_expiry = POLL_SECONDS_WITHOUT_EXPIRY if refreshable else None
        return AwsCredentials(
            access_key_id=frozen.access_key,
            secret_access_key=frozen.secret_key,
            session_token=frozen.token or None,
            expiry=expiry,
        )

    def __repr__(self) -> str:
        return f"BotocoreChainSource(route={self._name!r}, ready={self.is_ready()})"


class AssumeRoleSource(RefreshingCredentialSource):
    """Temporary credentials from `sts:AssumeRole`, renewed before they expire.

    The STS call is signed with `base` (static keys from the config) or, when None, with
    botocore's default credential chain.
    """

    def __init__(
        self,
        *,
        role_arn: str,
        session_name: str,
        external_id: str | None = None,
        region: str | None = None,
        base: AwsCredentials | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.role_arn = role_arn
        self.session_name = sts_session_name(session_name)
        self._external_id = external_id
        self._region = region
        self._base = base
        self._client: Any = None

    def assume_role_params(self) -> dict[str, str]:
        """The AssumeRole request parameters (without secrets: the role and session names)."""
        params = {"RoleArn": self.role_arn, "RoleSessionName": self.session_name}
        if self._external_id is not None:
            params["ExternalId"] = self._external_id
        return params

    def fetch(self) -> AwsCredentials:
        if self._client is None:
            self._client = self._create_client()
        response = self._client.assume_role(**self.assume_role_params())
        issued = response["Credentials"]
        return AwsCredentials(
            access_key_id=issued["AccessKeyId"],
            secret_access_key=issued["SecretAccessKey"],
            session_token=issued["SessionToken"],
            expiry=_timestamp(issued["Expiration"]),
        )

    def _create_client(self) -> Any:
        kwargs: dict[str, Any] = {"region_name": self._region}
        if self._base is not None:
            kwargs["aws_access_key_id"] = self._base.access_key_id
            kwargs["aws_secret_access_key"] = self._base.secret_access_key
            kwargs["aws_session_token"] = self._base.session_token
        return _botocore_session().create_client("sts", **kwargs)

    def __repr__(self) -> str:
        return (
            f"AssumeRoleSource(role_arn={self.role_arn!r}, session_name={self.session_name!r}, "
            f"external_id={_MASK if self._external_id else None}, ready={self.is_ready()})"
        )


def _botocore_session() -> Any:
    try:
        import botocore.session  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the config validator catches this first
        raise CredentialsUnavailableError(
            f"aws-sigv4 needs botocore for these credentials: {INSTALL_HINT}"
        ) from None
    return botocore.session.Session()


def _timestamp(value: object) -> float | None:
    """Epoch seconds from botocore's expiry (a datetime, naive = UTC, or an ISO 8601 string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"unexpected credential expiry type {type(value).__name__}")


def build_credential_source(
    *,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    role_arn: str | None,
    session_name: str,
    external_id: str | None,
    region: str | None,
    route: str = "",
    on_refresh: OnRefresh | None = None,
) -> CredentialSource:
    """The source a route's config asks for (static keys, assumed role, or default chain)."""
    static = None
    if access_key_id is not None and secret_access_key is not None:
        static = AwsCredentials(access_key_id, secret_access_key, session_token)
    if role_arn is not None:
        return AssumeRoleSource(
            role_arn=role_arn,
            session_name=session_name,
            external_id=external_id,
            region=region,
            base=static,
            name=route,
            on_refresh=on_refresh,
        )
    if static is not None:
        return StaticCredentialSource(static)
    return BotocoreChainSource(name=route, on_refresh=on_refresh)
