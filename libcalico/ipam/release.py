"""Releasing addresses, by address and by handle.

Owns: grouping addresses by block, releasing each block's addresses in one transaction
with the handles they belong to (split when more than MAX_HANDLES_PER_TXN handles are
involved), deleting a block that becomes empty together with its affinity, and - for the
repair - releasing only addresses that still belong to an expected handle and were
allocated before a given time.

Leaves to others: the transactions and the retry loop (`libcalico.ipam.commit`), the
block arithmetic (`libcalico.ipam.block`), reads and caches (`libcalico.ipam._state`).
`IPAMClient` exposes these functions as methods.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping

from libcalico import keyspace
from libcalico.ipam._state import IPAMState, Versioned, net_of, parse_ip
from libcalico.ipam.block import AllocationBlock, block_cidr_for
from libcalico.ipam.commit import Committer, HandleStates

# etcd refuses transactions of more than 128 operations; a release touching more handles
# than this is split into several transactions, each consistent on its own.
MAX_HANDLES_PER_TXN = 100


def release_ips(txn: Committer, ips: Iterable[str]) -> set[str]:
    """Release addresses; returns those that were not allocated. Each block emptied
    is deleted together with its affinity, so its addresses can move to other hosts."""
    by_block: dict[str, list[str]] = {}
    unallocated: set[str] = set()
    for ip in dict.fromkeys(ips):
        addr = parse_ip(ip)
        cidr = block_of(txn.state, addr)
        if cidr is None:
            unallocated.add(str(addr))
        elif str(addr) not in by_block.setdefault(cidr, []):
            by_block[cidr].append(str(addr))
    for cidr, group in by_block.items():
        unallocated.update(release_in_block(txn, cidr, group))
    return unallocated


def release_by_handle(txn: Committer, handle_id: str) -> list[str]:
    """Release every address of a handle; returns them."""
    keyspace.handle_key(handle_id)
    handle = txn.state.read_handle(handle_id)
    if handle.value is None:
        return []
    released: list[str] = []
    for cidr in sorted(handle.value.block):
        entry = txn.state.read_block(cidr)
        if entry.value is None:
            continue
        ips = [ip for ip, h in entry.value.allocated().items() if h == handle_id]
        gone = release_in_block(txn, cidr, ips, entry)
        released += [ip for ip in ips if ip not in gone]
    _drop_handle_if_unused(txn, handle_id)
    return released


def _drop_handle_if_unused(txn: Committer, handle_id: str) -> None:
    """Delete a handle whose blocks no longer hold any of its addresses (repairs a
    handle left by an older writer); guarded by the revisions of the handle and blocks."""
    handle = txn.state.read_handle(handle_id)
    if handle.value is None:
        return
    revisions = {}
    for cidr in handle.value.block:
        entry = txn.state.read_block(cidr)
        if entry.value is not None and entry.value.handle_counts().get(handle_id):
            return
        revisions[cidr] = entry.revision
    txn.handle(handle_id, handle.revision, {}, revisions)


def block_of(state: IPAMState,
             addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The CIDR of the block that holds (or would hold) `addr`, None if none can."""
    pool = state.pool_containing(ipaddress.ip_network(addr))
    if pool is not None and pool.value is not None and pool.value.block_size:
        return block_cidr_for(addr, pool.value.block_size)
    for cidr in state.list_blocks(addr.version):  # a block outside every pool
        if addr in net_of(cidr):
            return cidr
    return None


def release_in_block(txn: Committer, cidr: str, ips: list[str],
                     entry: Versioned[AllocationBlock] | None = None,
                     expect: Mapping[str, str | None] | None = None,
                     allocated_before: int | None = None) -> set[str]:
    """Release `ips` of one block; returns those left allocated or not allocated.

    For the repair: with `expect` (address -> handle) an address is released only if it
    still belongs to that handle, and with `allocated_before` (unix seconds) only if it
    was allocated at or before that time (an allocation without a recorded time counts as
    old); the others are left alone and returned. `entry` is the block if just read.
    """
    todo = list(ips)
    kept: set[str] = set()
    handles: HandleStates = {}
    while todo:
        done, left = txn.retry(f"block {cidr}", _batch_step(
            txn, cidr, todo, handles, entry, expect, allocated_before))
        kept |= left
        todo = [ip for ip in todo if ip not in done]
        entry = txn.state.blocks.get(cidr)  # as our own write left it
    return kept


def _batch_step(txn: Committer, cidr: str, todo: list[str], handles: HandleStates,
                entry: Versioned[AllocationBlock] | None,
                expect: Mapping[str, str | None] | None,
                allocated_before: int | None
                ) -> Callable[[], tuple[set[str], set[str]] | None]:
    """One compare-and-swap step releasing the next batch of `todo` (the addresses of at
    most MAX_HANDLES_PER_TXN handles). The step returns (addresses dealt with, those of
    them not released), or None when it lost and must run again."""
    lost = False

    def step() -> tuple[set[str], set[str]] | None:
        nonlocal lost
        # A fresh read first (the caller's, or our own: a stale cache would call an
        # address unallocated); after a lost compare, what the failure branch read.
        current = (txn.state.blocks.get(cidr) or Versioned(None, 0) if lost
                   else entry or txn.state.read_block(cidr))
        block = current.value
        if block is None:
            return set(todo), set(todo)
        skipped = {ip for ip in todo if not _releasable(block, ip, expect, allocated_before)}
        candidates = [ip for ip in todo if ip not in skipped]
        owners = {ip: (block.attributes_of(ip) or (None, None))[0] for ip in candidates}
        batch_handles = sorted({h for h in owners.values() if h is not None})
        batch_handles = batch_handles[:MAX_HANDLES_PER_TXN]
        batch = [ip for ip, h in owners.items() if h is None or h in batch_handles]
        new = block.copy()
        released, counts, not_allocated = new.release(batch)
        if not released:
            return skipped | set(batch), skipped | set(not_allocated)
        handles.update(txn.state.read_handles([h for h in counts if h not in handles]))
        empty = new.is_empty()
        if txn.block(cidr, current.revision, None if empty else new, handles=handles,
                     deltas={h: -n for h, n in counts.items()},
                     unclaim_for=block.host if empty else None):
            return skipped | set(batch), skipped | set(not_allocated)
        lost = True
        return None

    return step


def _releasable(block: AllocationBlock, ip: str, expect: Mapping[str, str | None] | None,
                allocated_before: int | None) -> bool:
    """May the repair release `ip`? (Always, without conditions: a free address is then
    reported as not allocated by the release itself.)"""
    if expect is not None:
        info = block.attributes_of(ip)
        if info is None or info[0] != expect[ip]:
            return False
    if allocated_before is not None:
        when = block.allocated_at_of(ip)
        if when is not None and when > allocated_before:
            return False
    return True
