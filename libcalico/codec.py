"""The one JSON encoding of values written to etcd.

Owns: `dumps` - compact JSON with sorted keys, so one logical value always has one byte
form (a compare-and-swap that rewrites an unchanged value stays a no-op, and a watcher
never sees a change that is only key order).

Leaves to others: what the values mean (`libcalico.model`, IPAM, felix status) and parsing
them back (each reader validates what it reads).
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Canonical JSON text for a stored value (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
