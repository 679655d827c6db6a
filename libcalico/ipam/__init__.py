"""IP address management: blocks of pool addresses with host affinity, handed out and
released with etcd compare-and-swap, plus a consistency check and repair.

Owns the public IPAM API; see docs/ipam.md. Submodules, each importing only those listed
after it: `check` (leak check and repair), `client` (allocation and queries; the methods
callers use), `pools` (usage, claims, pool removal), `release` (release by address and
by handle), `commit` (the one write path: every transaction and retry loop), `_state`
(reads, caches), `block` (pure block and handle logic).
"""

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
