"""Pool-wide IPAM operations: usage, explicit block claims, pool removal.

Owns: `usage` (per pool and per block), `claim_block` / `release_affinity` (a host's
affinity to one block), and `remove_pools`, which removes several pools all or nothing:
it checks every pool first (each exists; none has allocated addresses unless forced;
nodes' tunnel addresses do not count and are released with the pool) and
writes nothing when one is refused; otherwise it disables them all in one transaction (no
new block can appear in a disabled pool, and every allocation compares the pool's
revision), checks again, releases what is allocated when forced (block by block, each
release one transaction with its handles), deletes the emptied blocks and affinities,
and finally deletes every pool key in one transaction. A refusal after the disabling
restores the pools as they were.

Leaves to others: the transactions and retry loops (`libcalico.ipam.commit`), releasing
(`libcalico.ipam.release`), the block logic (`libcalico.ipam.block`), pool validation
(`libcalico.model.IPPool`). `IPAMClient` exposes these functions as methods.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from libcalico import keyspace
from libcalico.errors import (
    AlreadyExists,
    CalicoError,
    Conflict,
    NotFound,
    PoolInUse,
    ValidationError,
)
from libcalico.ipam._state import (
    IPAMState,
    Versioned,
    decode_pool,
    net_of,
    resolve_host,
    within,
)
from libcalico.ipam.block import AllocationBlock
from libcalico.ipam.commit import Committer
from libcalico.ipam.release import release_in_block
from libcalico.model import IPPool
from libcalico.model.tunnel import tunnel_handle_owner

__all__ = ["BlockUsage", "PoolInUse", "PoolUsage", "claim_block", "release_affinity",
           "remove_pools", "usage"]


@dataclass(frozen=True)
class BlockUsage:
    cidr: str
    host: str | None
    size: int
    allocated: int


@dataclass(frozen=True)
class PoolUsage:
    cidr: str
    size: int
    allocated: int
    disabled: bool
    blocks: tuple[BlockUsage, ...]

    @property
    def free(self) -> int:
        return self.size - self.allocated


def usage(state: IPAMState) -> list[PoolUsage]:
    """Allocated addresses per pool and per block, from one consistent read."""
    kvs, _ = state.store.list_many([keyspace.pool_dir(4), keyspace.pool_dir(6),
                                     keyspace.block_dir(4), keyspace.block_dir(6)])
    pools = []
    blocks: list[BlockUsage] = []
    for kv in kvs:
        parsed = keyspace.parse_key(kv.key)
        if isinstance(parsed, keyspace.PoolKey):
            pool = decode_pool(kv).value
            if pool is not None:
                pools.append(pool)
        elif isinstance(parsed, keyspace.BlockKey):
            block = state.note_block_kv(parsed.cidr, kv).value
            if block is not None:
                blocks.append(BlockUsage(block.cidr, block.host, block.size,
                                         block.allocated_count))
    out = []
    for pool in sorted(pools, key=lambda p: (net_of(p.cidr).version, net_of(p.cidr))):
        net = net_of(pool.cidr)
        mine = tuple(b for b in blocks if within(b.cidr, net))
        out.append(PoolUsage(pool.cidr, net.num_addresses, sum(b.allocated for b in mine),
                             pool.disabled, mine))
    return out


def _block_net(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValidationError("block", cidr, "not a block CIDR (host bits set?)") from None


def claim_block(txn: Committer, host: str, cidr: str) -> None:
    """Make `host` affine to block `cidr` (creating the block if needed). Raises
    `AlreadyExists` when another host holds it."""
    host = resolve_host(host)
    net = _block_net(cidr)
    cidr = str(net)
    state = txn.state

    def step() -> bool | None:
        pool = state.pool_containing(net, fresh=True)
        if pool is None or pool.value is None:
            raise ValidationError("block", cidr, "is not in any IP pool")
        if net.prefixlen != pool.value.block_size:
            raise ValidationError("block", cidr, f"pool {pool.value.cidr} uses "
                                  f"/{pool.value.block_size} blocks")
        if pool.value.disabled:
            raise ValidationError("block", cidr, f"pool {pool.value.cidr} is disabled")
        entry = state.read_block(cidr)
        if entry.value is None:
            if entry.revision:
                raise CalicoError(f"block {cidr} holds invalid data; run the IPAM check")
            new = AllocationBlock.new(cidr, host, state.config().strict_affinity)
        elif entry.value.host == host:
            txn.affinity(host, cidr)
            return True
        elif entry.value.host is not None:
            raise AlreadyExists(f"block {cidr} is already claimed by host {entry.value.host}")
        else:
            new = entry.value.copy()
            new.affinity = f"host:{host}"
        return txn.block(cidr, entry.revision, new, pool=pool, claim_for=host) or None

    txn.retry(f"block {cidr}", step)


def release_affinity(txn: Committer, host: str, cidr: str) -> None:
    """Drop `host`'s affinity to block `cidr`: an empty block is deleted, a block with
    addresses stays (other hosts may then borrow from it)."""
    host = resolve_host(host)
    cidr = str(_block_net(cidr))

    def step() -> bool | None:
        entry = txn.state.read_block(cidr)
        block = entry.value
        if block is None or block.host != host:
            txn.drop_affinities([(host, cidr)])  # a stale affinity key, if any
            return True
        if block.is_empty():
            new = None
        else:
            new = block.copy()
            new.affinity = None
        return txn.block(cidr, entry.revision, new, unclaim_for=host) or None

    txn.retry(f"block {cidr}", step)


# --- removing pools --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Disabled:
    """The pools being removed: each as it was before (to restore it) with the revision
    it is at now, and which of them this removal disabled."""

    pools: dict[str, Versioned[IPPool]]
    disabled: frozenset[str]


def remove_pools(txn: Committer, cidrs: Sequence[str], force: bool = False) -> list[str]:
    """Remove pools, all or nothing. `NotFound` if one does not exist and `PoolInUse` if
    addresses are allocated in any of them (unless `force`, which releases them): then no
    pool is removed. Returns the addresses released."""
    nets: list[str] = []
    for cidr in cidrs:
        try:
            net = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValidationError("pool", cidr, "not a valid CIDR") from None
        if net not in nets:
            nets.append(net)
    if not nets:
        return []
    what = "pool " + ", ".join(nets)
    state = txn.retry(what, lambda: _check_and_disable(txn, nets, force))
    released: list[str] = []
    try:
        txn.retry(what, lambda: _empty_pools(txn, nets, force, released))
    except PoolInUse:
        _restore(txn, state)
        raise
    if txn.pools({c: (e.revision, None) for c, e in state.pools.items()}) is None:
        _restore(txn, state)
        raise Conflict(f"{what} changed while being removed; try again")
    return released


def _check_and_disable(txn: Committer, nets: list[str], force: bool) -> _Disabled | None:
    """Read the pools and their blocks at one revision; refuse before any write if a pool
    is missing or (unless `force`) in use; else disable all that are enabled in one
    transaction. None when a pool changed meanwhile (run again)."""
    versions = sorted({net_of(n).version for n in nets})
    kvs, _ = txn.store.list_many([keyspace.pool_dir(v) for v in versions]
                                 + [keyspace.block_dir(v) for v in versions])
    found: dict[str, Versioned[IPPool]] = {}
    blocks: dict[str, Versioned[AllocationBlock]] = {}
    for kv in kvs:
        parsed = keyspace.parse_key(kv.key)
        if isinstance(parsed, keyspace.PoolKey) and parsed.cidr in nets:
            found[parsed.cidr] = decode_pool(kv)
        elif isinstance(parsed, keyspace.BlockKey):
            blocks[parsed.cidr] = txn.state.note_block_kv(parsed.cidr, kv)
    for net in nets:
        if net not in found:
            raise NotFound(f"no IP pool {net}")
    if not force:
        _refuse_if_in_use(nets, blocks)
    changes: dict[str, tuple[int, IPPool | None]] = {
        net: (e.revision, dataclasses.replace(e.value, disabled=True))
        for net, e in found.items() if e.value is not None and not e.value.disabled}
    revision = txn.pools(changes) if changes else 0
    if revision is None:
        return None
    return _Disabled({n: Versioned(e.value, revision if n in changes else e.revision)
                      for n, e in found.items()}, frozenset(changes))


def _refuse_if_in_use(nets: list[str], blocks: dict[str, Versioned[AllocationBlock]]) -> None:
    """`PoolInUse` naming every pool of `nets` with allocated addresses other than nodes'
    tunnel addresses (or unreadable blocks, which may hold some)."""
    allocated: dict[str, int] = {}
    unreadable: dict[str, int] = {}
    for cidr, entry in blocks.items():
        net = next((n for n in nets if within(cidr, n)), None)
        if net is None:
            continue
        if entry.value is None:
            unreadable[net] = unreadable.get(net, 0) + 1
            continue
        # Nodes' tunnel addresses do not hold a pool: they are released with it, and
        # each node takes a new one from another encapsulated pool (libcalico.tunnel).
        count = sum(1 for h in entry.value.allocated().values()
                    if tunnel_handle_owner(h) is None)
        if count:
            allocated[net] = allocated.get(net, 0) + count
    in_use = [n for n in nets if n in allocated or n in unreadable]
    if not in_use:
        return
    parts = [f"pool {n} still has {allocated.get(n, 0)} allocated addresses"
             + (f" and {unreadable[n]} unreadable blocks" if n in unreadable else "")
             for n in in_use]
    raise PoolInUse("; ".join(parts) + "; release them first or remove the pool with force"
                    + ("; no pool was removed" if len(nets) > 1 else ""),
                    {n: allocated.get(n, 0) for n in in_use})


def _empty_pools(txn: Committer, nets: list[str], force: bool,
                 released: list[str]) -> bool | None:
    """One pass over the (disabled) pools' blocks: `PoolInUse` if addresses are allocated
    and not `force`; else release them, adding them to `released` (None: pass again),
    delete the empty blocks (None: pass again), and when no block is left, the affinity
    keys left without a block (True)."""
    versions = sorted({net_of(n).version for n in nets})
    blocks = {c: e for v in versions for c, e in txn.state.list_blocks(v).items()
              if any(within(c, n) for n in nets)}
    if not force:
        _refuse_if_in_use(nets, blocks)
    allocated = {c: e.value.allocated() for c, e in blocks.items()
                 if e.value is not None and e.value.allocated_count}
    for block_cidr, ips in allocated.items():
        kept = release_in_block(txn, block_cidr, sorted(ips))
        released += [ip for ip in ips if ip not in kept]
    if allocated:
        return None
    for block_cidr, entry in blocks.items():
        txn.block(block_cidr, entry.revision, None,
                  unclaim_for=entry.value.host if entry.value else None)
    if blocks:
        return None
    kvs, _ = txn.store.list(keyspace.AFFINITY_DIR)
    dangling = []
    for kv in kvs:
        parsed = keyspace.parse_key(kv.key)
        if isinstance(parsed, keyspace.AffinityKey) and any(within(parsed.cidr, n)
                                                             for n in nets):
            dangling.append((parsed.hostname, parsed.cidr))
    txn.drop_affinities(dangling)
    return True


def _restore(txn: Committer, state: _Disabled) -> None:
    """Enable again the pools this removal disabled (each only if still as we left it)."""
    changes: dict[str, tuple[int, IPPool | None]] = {
        c: (e.revision, e.value) for c, e in state.pools.items() if c in state.disabled}
    if changes and txn.pools(changes) is None:
        for cidr, change in changes.items():  # one by one: what has not moved on since
            txn.pools({cidr: change})
