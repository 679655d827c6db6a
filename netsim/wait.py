"""Polling with a deadline: the one way tests, benchmarks and the demo wait for a state.

Owns: `wait_for(condition, timeout)`, which calls `condition` every `interval` seconds
until it returns something truthy (returned) or `timeout` passes (`TimeoutError` naming
what was awaited and the last exception the condition raised). Never a blind sleep.

Leaves to others: what is awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - polling tolerates transient errors
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}"
                               + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)
