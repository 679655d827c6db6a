"""IP address management: blocks of pool addresses with host affinity, handed out and
released with etcd compare-and-swap, plus a consistency check and repair.

Owns the public IPAM API; see docs/ipam.md. Submodules, each importing only those listed
after it: `check` (leak check and repair), `client` (allocation and queries; the methods
callers use), `pools` (usage, claims, pool removal), `release` (release by address and
by handle), `commit` (the one write path: every transaction and retry loop), `_state`
(reads, caches), `block` (pure block and handle logic).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libcalico.errors import AddressInUse, PoolInUse, PoolsExhausted
    from libcalico.ipam.block import AllocationBlock, IPAMHandle, block_cidr_for
    from libcalico.ipam.check import (
        DEFAULT_GRACE_PERIOD,
        CheckReport,
        InProgress,
        RepairResult,
        check,
        repair,
    )
    from libcalico.ipam.client import Assignment, AssignResult, IPAMClient
    from libcalico.ipam.commit import RETRIES
    from libcalico.ipam.pools import BlockUsage, PoolUsage

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "RETRIES",
    "AddressInUse",
    "AllocationBlock",
    "AssignResult",
    "Assignment",
    "BlockUsage",
    "CheckReport",
    "IPAMClient",
    "IPAMHandle",
    "InProgress",
    "PoolInUse",
    "PoolUsage",
    "PoolsExhausted",
    "RepairResult",
    "block_cidr_for",
    "check",
    "repair",
]

# Names are imported on first use: a program that only allocates (a CNI plugin, one
# process per call) does not pay for the check module.
_HOMES = {
    "AddressInUse": "libcalico.errors", "PoolInUse": "libcalico.errors",
    "PoolsExhausted": "libcalico.errors",
    "AllocationBlock": "libcalico.ipam.block", "IPAMHandle": "libcalico.ipam.block",
    "block_cidr_for": "libcalico.ipam.block",
    "DEFAULT_GRACE_PERIOD": "libcalico.ipam.check", "CheckReport": "libcalico.ipam.check",
    "InProgress": "libcalico.ipam.check", "RepairResult": "libcalico.ipam.check",
    "check": "libcalico.ipam.check", "repair": "libcalico.ipam.check",
    "Assignment": "libcalico.ipam.client", "AssignResult": "libcalico.ipam.client",
    "IPAMClient": "libcalico.ipam.client",
    "RETRIES": "libcalico.ipam.commit",
    "BlockUsage": "libcalico.ipam.pools", "PoolUsage": "libcalico.ipam.pools",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
