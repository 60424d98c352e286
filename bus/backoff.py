"""How long to wait before trying again: one formula for every retry loop of the bus.

    ceiling = min(cap, base * 2 ** (attempt - 1))        # attempt 1 is the first retry
    wait    = ceiling * (1 - jitter * random())           # jitter 1: anywhere in [0, ceiling]

With the default jitter of 1 this is "full jitter" (AWS Architecture Blog, "Exponential Backoff
And Jitter", 2015): processes that failed together, say every worker when Redis restarted, spread
their next tries over the whole window instead of arriving together again. A jitter of 0 makes
the wait exactly the ceiling (for a person reading a schedule, or a test that needs to know it).

The settings that tune each use (RETRY_BACKOFF, RECONNECT_BACKOFF, RESTART_BACKOFF) are
described in bus/conf.py; `bus.conf.backoff_setting(name)` gives the configured Backoff.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# 2 ** 62 times any base a person would choose is past any cap: stop doubling there, so a large
# attempt number is just the cap, not an OverflowError.
_MOST_DOUBLINGS = 62


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: `delay(attempt)` is the wait before retry number `attempt`."""

    base: float
    cap: float
    jitter: float = 1.0

    def __post_init__(self) -> None:
        for name in ("base", "cap", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value!r}.")
        if self.base <= 0:
            raise ValueError(f"base must be more than 0 seconds, not {self.base!r}.")
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap!r} s) must be at least base ({self.base!r} s).")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be from 0 (none) to 1 (full), not {self.jitter!r}.")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number `attempt` (1 for the first retry)."""
        if attempt < 1:
            raise ValueError(f"attempt counts retries from 1, not {attempt!r}.")
        return float(min(self.cap, self.base * 2.0 ** min(attempt - 1, _MOST_DOUBLINGS)))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt`: up to its ceiling, spread by the jitter."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter * random.random())
