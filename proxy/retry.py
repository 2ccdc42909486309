"""A route's retry policy, compiled once per config load from its `retries:` block.

Every attempt is signed afresh (new time, new nonce); which failures are retried, how often and
after how long a wait is decided here, so the handler's loop only asks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from proxy.config import RetryConfig

# The proxy's own failures, as the retry policy names them.
_RETRIED_AS: Final = {
    "upstream_unreachable": "connect_error",  # nothing reached the upstream
    "upstream_bad_response": 502,
    "upstream_timeout": 504,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    methods: frozenset[str]
    statuses: frozenset[int]  # upstream statuses retried
    errors: frozenset[str]  # the proxy's own error codes retried
    backoff_initial: float
    backoff_max: float

    @classmethod
    def compile(cls, config: RetryConfig | None) -> RetryPolicy | None:
        if config is None:
            return None
        return cls(
            attempts=config.attempts,
            methods=frozenset(config.methods),
            statuses=frozenset(on for on in config.on if isinstance(on, int)),
            errors=frozenset(code for code, on in _RETRIED_AS.items() if on in config.on),
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
        )

    def attempts_for(self, method: str, replayable: bool) -> int:
        """Attempts for this request: only a retried method whose body can be sent again."""
        return self.attempts if replayable and method in self.methods else 1

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): exponential backoff with
        full jitter (not a secret: `random` is right here)."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311
