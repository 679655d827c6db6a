"""Bounded retries and backoff: the one helper every retry loop in the project uses.

Owns: `retry_cas`, the bounded compare-and-swap loop (a step that returns None after a
lost race runs again; `Conflict` names what kept changing when the attempts run out), and
`Backoff`, capped exponential delay with jitter, reset on success, for daemons that wait
out an unreachable datastore or a failed apply.

Leaves to others: what is retried and when a lost race is worth another try (callers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from libcalico.errors import Conflict

RETRIES = 20
T = TypeVar("T")


def retry_cas(what: str, step: Callable[[], T | None], retries: int = RETRIES) -> T:
    """Run `step` until it returns something other than None, at most `retries` times.

    `step` reads, computes and writes with compare-and-swap; it returns its result when the
    write went through (or nothing needed writing) and None when it lost a race and should
    run again on fresh data. When every attempt lost, raises `Conflict` naming `what`.
    """
    for _ in range(retries):
        result = step()
        if result is not None:
            return result
    raise Conflict(f"{what} kept changing; gave up after {retries} attempts")


class Backoff:
    """Capped exponential backoff with jitter.

    `next()` returns the delay to wait now (between half and all of the current step) and
    doubles the step up to `maximum`; `reset()` goes back to `minimum` after a success.
    `current` is the undithered step the next call starts from (for log messages).
    """

    def __init__(self, minimum: float, maximum: float) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.current = minimum

    def next(self) -> float:
        delay = self.current * (0.5 + random.random() / 2)
        self.current = min(self.current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.minimum
