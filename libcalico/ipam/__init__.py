"""IP address management: blocks of pool addresses with host affinity, handed out and
released with etcd compare-and-swap, plus a consistency check and repair.

Owns the public IPAM API; see docs/ipam.md. Submodules: `block` (pure block and handle
logic), `client` (allocation, queries, the one write path), `release`, `pools` (usage,
claims, config, pool removal), `check` (leak check and repair), `_state` (reads, caches).
"""

from libcalico.ipam.block import AddressInUse, AllocationBlock, IPAMHandle, block_cidr_for
from libcalico.ipam.check import CheckReport, RepairResult, check, repair
from libcalico.ipam.client import (
    RETRIES,
    Assignment,
    AssignResult,
    IPAMClient,
    PoolsExhausted,
)
from libcalico.ipam.pools import BlockUsage, PoolInUse, PoolUsage

__all__ = [
    "RETRIES",
    "AddressInUse",
    "AllocationBlock",
    "AssignResult",
    "Assignment",
    "BlockUsage",
    "CheckReport",
    "IPAMClient",
    "IPAMHandle",
    "PoolInUse",
    "PoolUsage",
    "PoolsExhausted",
    "RepairResult",
    "block_cidr_for",
    "check",
    "repair",
]
