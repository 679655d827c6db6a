"""Small helpers shared by the benchmarks: the `--quick` argument parser, timing, rates,
ratios, percentiles and printing the one JSON result object.

Leaves to each benchmark: what it sets up, measures and names its figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the `--quick` flag every benchmark has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="the small version the test suite runs (seconds, not minutes)")
    return p


class Stopwatch:
    """Elapsed wall-clock seconds of a `with timed() as sw:` block (`sw.seconds`)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = 0.0

    def stop(self) -> float:
        self.seconds = time.perf_counter() - self.started
        return self.seconds


@contextmanager
def timed() -> Iterator[Stopwatch]:
    sw = Stopwatch()
    try:
        yield sw
    finally:
        sw.stop()


def rate(count: int, seconds: float) -> float:
    """Items per second, rounded; infinite for a zero duration."""
    return round(count / seconds, 1) if seconds > 0 else math.inf


def ratio(measured: float, baseline: float, digits: int = 3) -> float:
    """measured / baseline (how many times the baseline's cost)."""
    return round(measured / baseline, digits) if baseline > 0 else math.inf


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * pct / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object on stdout."""
    json.dump(result, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
