"""The access-token cache of `oauth2-client-credentials`: one token per route, kept fresh.

Rules (README "OAuth2 client credentials"):
- The first token is fetched when the signer starts. Later ones are fetched in the background
  when less than min(300 s, half its lifetime) remains, so a request never waits while the
  current token is valid.
- One fetch at a time (single flight): requests that find no valid token wait for the fetch in
  progress, never start their own.
- A token's lifetime counts from when its request was sent; a token is never handed out at or
  after its expiry.
- A failed fetch is retried after a random wait of up to 1 s, doubling to at most 30 s (full
  jitter); the still-valid token keeps serving meanwhile.
- `invalidate(token)` (the upstream refused it) drops that token, if it is still the current
  one, and fetches a new one at once.

The state a request reads is one attribute holding an immutable `AccessToken`, replaced whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from proxy.logs import get_logger
from proxy.signers.base import CredentialsUnavailable, OnCredentialRefresh
from proxy.signers.refreshing import RESULT_ERROR, RESULT_SUCCESS, cancel_tasks, report_refresh

log = get_logger("signing_proxy")

REFRESH_AHEAD_MAX: Final = 300.0
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
MIN_REFRESH_DELAY: Final = 0.05


class TokenError(Exception):
    """A token request failed; the message is safe to log (no token, secret or assertion)."""


@dataclass(frozen=True, slots=True, repr=False)
class TokenGrant:
    """What one token request returned: the token, its lifetime, and when it was asked for."""

    value: str
    lifetime: float  # seconds
    requested_at: float  # time.monotonic() when the request was sent
    requested_at_wall: float  # time.time() at the same moment


@dataclass(frozen=True, slots=True, repr=False)
class AccessToken:
    value: str
    expires_at: float  # monotonic
    expires_at_wall: float  # Unix seconds, for the metric
    refresh_at: float  # monotonic

    def __repr__(self) -> str:
        return f"AccessToken(**********, expires_at_wall={self.expires_at_wall:.0f})"

    def __reduce__(self) -> Any:  # pickling would copy the token out of our control
        raise TypeError("access tokens cannot be pickled")

    @classmethod
    def from_grant(cls, grant: TokenGrant) -> AccessToken:
        expires_at = grant.requested_at + grant.lifetime
        ahead = min(REFRESH_AHEAD_MAX, grant.lifetime / 2)
        return cls(
            value=grant.value,
            expires_at=expires_at,
            expires_at_wall=grant.requested_at_wall + grant.lifetime,
            refresh_at=expires_at - ahead,
        )


Fetch = Callable[[], Awaitable[TokenGrant]]


class TokenSource:
    """Holds the route's token and keeps it fresh (see the module docstring)."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        route: str = "",
        on_refresh: OnCredentialRefresh | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self._fetch = fetch
        self._route = route
        self._on_refresh = on_refresh
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._token: AccessToken | None = None
        self._obtained_once = False
        self._last_error: str | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def current(self) -> str:
        """The token to send now; CredentialsUnavailable when there is no unexpired one."""
        token = self._token
        if token is None:
            raise CredentialsUnavailable(self.problem() or "no access token")
        if self._clock() >= token.expires_at:
            raise CredentialsUnavailable(
                f"the access token expired and could not be renewed: {self._last_error}"
            )
        return token.value

    def has_valid_token(self) -> bool:
        token = self._token
        return token is not None and self._clock() < token.expires_at

    def obtained_once(self) -> bool:
        """Whether a token was ever obtained (readiness: a later failure does not unready)."""
        return self._obtained_once

    def problem(self) -> str | None:
        """Why there is no token yet (for /readyz), or None."""
        if self._obtained_once:
            return None
        if self._last_error is not None:
            return f"the first access token could not be fetched: {self._last_error}"
        return "the first access token is being fetched"

    async def wait_usable(self) -> None:
        """Return at once with a valid token; else wait for the fetch in progress, if any."""
        if self.has_valid_token():
            return
        inflight = self._inflight
        if inflight is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)

    def invalidate(self, value: str) -> None:
        """The upstream refused `value`: drop it if it is still current, and fetch anew."""
        token = self._token
        if token is None or token.value != value:
            return  # already replaced (or dropped): the next request has a newer one
        self._token = None
        log.warning("access_token_refused", route=self._route, action="fetching a new token")
        self._start_fetch()
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._start_fetch()  # now: a request arriving at once waits for it, never 503s
            self._task = asyncio.create_task(self._run(), name=f"oauth2-token:{self._route}")

    async def close(self) -> None:
        tasks = (self._task, self._inflight)
        self._task = self._inflight = None
        await cancel_tasks(*tasks)

    async def fetch_once(self) -> bool:
        """One fetch now (shared with any in progress); True on success."""
        return await asyncio.shield(self._start_fetch())

    def _start_fetch(self) -> asyncio.Task[bool]:
        inflight = self._inflight
        if inflight is None:
            inflight = asyncio.create_task(self._fetch_and_install())
            self._inflight = inflight
        return inflight

    async def _fetch_and_install(self) -> bool:
        try:
            grant = await self._fetch()
        except TokenError as err:
            self._last_error = str(err)
            held = self._token
            log.warning("access_token_fetch_failed", route=self._route, reason=str(err))
            self._report(RESULT_ERROR, held.expires_at_wall if held is not None else None)
            return False
        finally:
            self._inflight = None
        token = AccessToken.from_grant(grant)
        self._token = token
        self._obtained_once = True
        self._last_error = None
        log.info(
            "access_token_fetched",
            route=self._route,
            expires_in=round(token.expires_at - self._clock(), 1),
        )
        self._report(RESULT_SUCCESS, token.expires_at_wall)
        return True

    async def _run(self) -> None:
        backoff = self._backoff_initial
        while True:
            fetched = await self.fetch_once()
            # Cleared after the fetch: an invalidation during it concerned the replaced token.
            self._wake.clear()
            if fetched:
                backoff = self._backoff_initial
                token = self._token
                delay = MIN_REFRESH_DELAY
                if token is not None:
                    delay = max(token.refresh_at - self._clock(), MIN_REFRESH_DELAY)
            else:
                # Full jitter (not a secret: `random` is right here).
                delay = random.uniform(0, backoff)  # noqa: S311
                backoff = min(backoff * 2, self._backoff_max)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()  # an invalidation fetches at once

    def _report(self, result: str, expiry: float | None) -> None:
        report_refresh(self._on_refresh, result, expiry, self._route)

    def __repr__(self) -> str:
        return f"TokenSource(route={self._route!r}, token={self._token!r})"
