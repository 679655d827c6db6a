"""Releasing addresses, by address and by handle.

Owns: grouping addresses by block, releasing each block's addresses in one transaction
with the handles they belong to (split when more than MAX_HANDLES_PER_TXN handles are
involved), deleting a block that becomes empty together with its affinity, and - for the
repair - releasing only addresses that still belong to an expected handle.

Leaves to others: the transaction itself (`IPAMClient._commit`), the block arithmetic
(`libcalico.ipam.block`). These functions are exposed as methods of `IPAMClient`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

from libcalico import keyspace
from libcalico.errors import Conflict
from libcalico.ipam._state import Versioned, net_of, parse_ip
from libcalico.ipam.block import AllocationBlock, block_cidr_for

if TYPE_CHECKING:
    from libcalico.ipam.client import HandleStates, IPAMClient

# etcd refuses transactions of more than 128 operations; a release touching more handles
# than this is split into several transactions, each consistent on its own.
MAX_HANDLES_PER_TXN = 100


def release_ips(client: IPAMClient, ips: Iterable[str]) -> set[str]:
    """Release addresses; returns those that were not allocated. Each block emptied
    is deleted together with its affinity, so its addresses can move to other hosts."""
    by_block: dict[str, list[str]] = {}
    unallocated: set[str] = set()
    for ip in dict.fromkeys(ips):
        addr = parse_ip(ip)
        cidr = block_of(client, addr)
        if cidr is None:
            unallocated.add(str(addr))
        elif str(addr) not in by_block.setdefault(cidr, []):
            by_block[cidr].append(str(addr))
    for cidr, group in by_block.items():
        unallocated.update(release_in_block(client, cidr, group))
    return unallocated

def release_by_handle(client: IPAMClient, handle_id: str) -> list[str]:
    """Release every address of a handle; returns them."""
    keyspace.handle_key(handle_id)
    handle = client.state.read_handle(handle_id)
    if handle.value is None:
        return []
    released: list[str] = []
    for cidr in sorted(handle.value.block):
        entry = client.state.read_block(cidr)
        if entry.value is None:
            continue
        ips = [ip for ip, h in entry.value.allocated().items() if h == handle_id]
        gone = release_in_block(client, cidr, ips, entry)
        released += [ip for ip in ips if ip not in gone]
    _drop_handle_if_unused(client, handle_id)
    return released

def _drop_handle_if_unused(client: IPAMClient, handle_id: str) -> None:
    """Delete a handle whose blocks no longer hold any of its addresses (repairs a
    handle left by an older writer); guarded by the handle's revision."""
    handle = client.state.read_handle(handle_id)
    if handle.value is None:
        return
    for cidr in handle.value.block:
        block = client.state.read_block(cidr).value
        if block is not None and block.handle_counts().get(handle_id):
            return
    client.store.cas_delete(keyspace.handle_key(handle_id), handle.revision)

def block_of(client: IPAMClient, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    pool = client.state.pool_containing(ipaddress.ip_network(addr))
    if pool is not None and pool.value is not None and pool.value.block_size:
        return block_cidr_for(addr, pool.value.block_size)
    for cidr in client.state.list_blocks(addr.version):  # a block outside every pool
        if addr in net_of(cidr):
            return cidr
    return None

def release_in_block(client: IPAMClient, cidr: str, ips: list[str],
                     entry: Versioned[AllocationBlock] | None = None,
                     expect: dict[str, str | None] | None = None) -> set[str]:
    """Release `ips` of one block; returns those that were not allocated (or, with
    `expect`, whose current handle is not the expected one: those are left alone)."""
    entry = entry or client.state.read_block(cidr)
    handles: HandleStates = {}
    todo = list(ips)
    unknown: set[str] = set()
    for _ in range(client.retries):
        block = entry.value
        if block is None:
            return unknown | set(todo)
        if expect is not None:
            mismatched = {ip for ip in todo
                          if (block.attributes_of(ip) or ("\0", None))[0] != expect[ip]}
            unknown |= mismatched
            todo = [ip for ip in todo if ip not in mismatched]
            if not todo:
                return unknown
        new = block.copy()
        owners = {ip: (block.attributes_of(ip) or (None, None))[0] for ip in todo}
        batch_handles = sorted({h for h in owners.values() if h is not None})
        batch_handles = batch_handles[:MAX_HANDLES_PER_TXN]
        batch = [ip for ip, h in owners.items() if h is None or h in batch_handles]
        released, counts, not_allocated = new.release(batch)
        handles.update(client.state.read_handles([h for h in counts if h not in handles]))
        deltas = {h: -n for h, n in counts.items()}
        if not released:
            return unknown | set(not_allocated)
        empty = new.is_empty()
        result = client._commit(cidr, entry.revision, None if empty else new, handles,
                              deltas, old_host=block.host)
        if result.succeeded:
            if empty and block.host:
                client.state.drop_affinity(block.host, cidr)
            unknown.update(not_allocated)
            todo = [ip for ip in todo if ip not in batch]
            if not todo:
                return unknown
            entry = client.state.block(cidr)
        else:
            entry = client.state.blocks.get(cidr) or Versioned(None, 0)
    raise Conflict(f"block {cidr} kept changing; gave up after {client.retries} attempts")
