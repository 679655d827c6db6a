"""Hypothesis profiles for the fuzzers, chosen by `CALICO_FUZZ_PROFILE` (no edits).

- `quick` (default, the test suite): 200 examples per property.
- `full` (`./scripts/faults.sh fuzz`, or `CALICO_FUZZ_PROFILE=full`): 10,000 per property.
- `CALICO_FUZZ_EXAMPLES=N` overrides the count of either.

No example database is kept (nothing is written into the tree) and there is no per-example
deadline: the machine is shared, and speed is measured in `bench/`, never here. A failure
prints the `@reproduce_failure` blob that replays it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much])

settings.register_profile("quick", max_examples=200, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("full", max_examples=10_000, **_COMMON)  # type: ignore[arg-type]
_profile = os.environ.get("CALICO_FUZZ_PROFILE", "quick")
if os.environ.get("CALICO_FUZZ_EXAMPLES"):
    settings.register_profile("custom", parent=settings.get_profile(_profile),
                              max_examples=int(os.environ["CALICO_FUZZ_EXAMPLES"]))
    _profile = "custom"
settings.load_profile(_profile)
