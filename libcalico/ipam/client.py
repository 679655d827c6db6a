"""The IPAM client: assigns and releases workload addresses with etcd compare-and-swap.

Owns: auto-assignment (the host's own blocks, then a newly claimed block, then - unless
strict affinity is configured - a free address in another host's block; never from a
disabled pool), assignment of a given address, stamping each allocation with the time it
was made (the client's `clock`; `check` counts an allocation younger than its grace period
as in progress, never as a leak), and the queries (attributes of an address, the blocks of
a host). Release (`libcalico.ipam.release`) and pool-wide operations - usage, claims,
config, pool removal (`libcalico.ipam.pools`) - are exposed as methods here; the client
holds the caches (`state`) and the write path (`txn`) they share.

Consistency: every change is ONE etcd transaction (`libcalico.ipam.commit`) that compares
the mod_revision of the block, of each handle it touches and of the pool, and writes the
block and the handles together (a claim also creates the affinity key; emptying a block
deletes it and its affinity). So blocks and handles never disagree, even if the process
dies at any point, and no two allocators can hand out one address. A lost compare returns
the current values in the same round trip (`Get` in the failure branch); the client
recomputes and retries up to `retries` times (`libcalico.retry.retry_cas`), then raises
`Conflict`.

Efficiency: the client caches its hosts' affine blocks and their revisions, and the
pools; a new handle is assumed absent. A single assignment in the steady state is one
transaction and no reads.

Leaves to others: the transactions (`libcalico.ipam.commit`), the block arithmetic
(`libcalico.ipam.block`), decoding and caches (`libcalico.ipam._state`), keys
(`libcalico.keyspace`), the etcd calls (`libcalico.datastore`), consistency checks
(`libcalico.ipam.check`).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from libcalico import keyspace
from libcalico.datastore import Datastore
from libcalico.errors import AddressInUse, CalicoError, PoolsExhausted, ValidationError
from libcalico.ipam import pools, release
from libcalico.ipam._state import (
    IPAMState,
    Versioned,
    net_of,
    parse_ip,
    pool_usable,
    resolve_host,
    within,
)
from libcalico.ipam.block import AllocationBlock, Attributes, block_cidr_for
from libcalico.ipam.commit import RETRIES, Committer, HandleStates
from libcalico.ipam.pools import PoolUsage
from libcalico.model import IPAMConfig, IPPool

_log = logging.getLogger(__name__)

# How many random block CIDRs to try in a pool too large to enumerate.
_SAMPLE_TRIES = 2000


@dataclass(frozen=True)
class AssignResult:
    """What auto-assign got. `messages` says plainly why it got less than asked."""

    ipv4s: list[str] = field(default_factory=list)
    ipv6s: list[str] = field(default_factory=list)
    messages: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.messages

    def raise_if_short(self) -> AssignResult:
        if self.messages:
            raise PoolsExhausted("; ".join(self.messages))
        return self


@dataclass(frozen=True)
class Assignment:
    ip: str
    handle_id: str | None
    attributes: Attributes
    block: str


def _version_name(version: int) -> str:
    return f"IPv{version}"


def _count(field_name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(field_name, value, "must be a non-negative integer")
    return value


class IPAMClient:
    """Allocator on one datastore client. Not thread-safe: one per thread or process.

    State: `state` (reads and caches), `txn` (the write path, with the retry budget),
    `clock` (the time allocations are stamped with, unix seconds), `_hint` (the block
    each host and IP version was last served from)."""

    def __init__(self, datastore: Datastore, retries: int = RETRIES,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = datastore
        self.state = IPAMState(datastore)
        self.txn = Committer(self.state, retries)
        self.clock = clock
        self._rng = random.Random()
        self._hint: dict[tuple[str, int], str] = {}  # (host, version) -> block used last

    @property
    def retries(self) -> int:
        return self.txn.retries

    def _now(self) -> int:
        return int(self.clock())

    # === auto-assign ==========================================================================

    def auto_assign(self, num_v4: int, num_v6: int, handle_id: str | None,
                    attributes: Attributes = None, host: str | None = None,
                    pools: Sequence[str] | None = None) -> AssignResult:
        """Assign `num_v4` IPv4 and `num_v6` IPv6 addresses to `handle_id` for `host`
        (default: this machine's hostname), recording `attributes` with them.

        Returns what it got; `messages` is non-empty when some pools ran dry.
        """
        _count("num_v4", num_v4)
        _count("num_v6", num_v6)
        if handle_id is not None:
            keyspace.handle_key(handle_id)  # validates the id
        host = resolve_host(host)
        wanted = self._requested_pools(pools)
        handles: HandleStates = {}
        got: dict[int, list[str]] = {4: [], 6: []}
        messages: list[str] = []
        for version, num in ((4, num_v4), (6, num_v6)):
            if num:
                ips, message = self._assign_version(version, num, handle_id, attributes,
                                                    host, wanted, handles)
                got[version] = ips
                if message:
                    messages.append(message)
        return AssignResult(got[4], got[6], tuple(messages))

    def _requested_pools(self, pools: Sequence[str] | None) -> set[str] | None:
        if pools is None:
            return None
        out = set()
        for cidr in pools:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValidationError("pool", cidr, "not a valid CIDR") from None
            if str(net) not in self.state.pool_map(net.version, fresh=True):
                raise ValidationError("pool", cidr, "no such IP pool")
            out.add(str(net))
        return out

    def _usable_pools(self, version: int, wanted: set[str] | None,
                      fresh: bool = False) -> list[tuple[str, Versioned[IPPool]]]:
        pools = self.state.pool_map(version, fresh)
        return sorted(((c, e) for c, e in pools.items()
                       if pool_usable(e.value) and (wanted is None or c in wanted)),
                      key=lambda ce: net_of(ce[0]))

    def _in_pools(self, cidr: str, pools: list[tuple[str, Versioned[IPPool]]]) -> bool:
        return any(within(cidr, p) for p, _ in pools)

    def _assign_version(self, version: int, num: int, handle_id: str | None,
                        attrs: Attributes, host: str, wanted: set[str] | None,
                        handles: HandleStates) -> tuple[list[str], str | None]:
        name = _version_name(version)
        pools = self._usable_pools(version, wanted)
        if not pools:
            pools = self._usable_pools(version, wanted, fresh=True)
            if not pools:
                return [], f"no enabled {name} pool to assign from"
        got: list[str] = []

        # 1. The host's own blocks: the cached list first, then a fresh one (another
        #    client of the same host may have claimed blocks meanwhile).
        #    The block that served last time is tried first; in the fresh pass all the
        #    host's blocks are re-read in one round trip (others may have freed addresses).
        cached = (host, version) in self.state.affinity
        for fresh in ((False, True) if cached else (True,)):
            cidrs = self.state.affine_blocks(host, version, fresh)
            if fresh:
                self.state.read_blocks(cidrs)
            hint = self._hint.get((host, version))
            if hint in cidrs:
                cidrs.remove(hint)
                cidrs.insert(0, hint)
            for cidr in cidrs:
                entry = self.state.blocks.get(cidr)
                if entry is not None and entry.value is not None and not entry.value.free_count:
                    continue
                if self._in_pools(cidr, pools):
                    got += self._allocate_in_block(cidr, num - len(got), handle_id, attrs,
                                                   host, handles, affine=True)
                    if len(got) == num:
                        self._hint[(host, version)] = cidr
                        return got, None

        config = self.state.config()
        pools = self._usable_pools(version, wanted, fresh=True)
        # 2. Claim new blocks.
        if config.auto_allocate_blocks:
            while len(got) < num:
                ips = self._claim_and_allocate(version, num - len(got), handle_id, attrs,
                                               host, config.strict_affinity, pools, handles)
                if not ips:
                    break
                got += ips
        # 3. Borrow from other hosts' blocks.
        if len(got) < num and not config.strict_affinity:
            for cidr, entry in sorted(self.state.list_blocks(version).items()):
                block = entry.value
                if (block is None or block.free_count == 0 or block.host == host
                        or not block.may_allocate(host) or not self._in_pools(cidr, pools)):
                    continue
                got += self._allocate_in_block(cidr, num - len(got), handle_id, attrs, host,
                                               handles, affine=False)
                if len(got) == num:
                    break
        if len(got) < num:
            return got, f"{name} pools exhausted: assigned {len(got)} of {num} addresses"
        return got, None

    def _allocate_in_block(self, cidr: str, num: int, handle_id: str | None,
                           attrs: Attributes, host: str, handles: HandleStates,
                           affine: bool) -> list[str]:
        """Take up to `num` addresses from one existing block, by compare-and-swap."""
        lost = False

        def step() -> list[str] | None:
            nonlocal lost
            # The cached block first; after a lost compare, what the failure branch read.
            entry = (self.state.blocks.get(cidr) or Versioned(None, 0) if lost
                     else self.state.block(cidr))
            block = entry.value
            if block is None:
                return []
            if affine and block.host != host:
                self.state.drop_affinity(host, cidr)
                return []
            if block.free_count == 0:
                return []
            pool = self.state.pool_containing(net_of(cidr))
            if pool is None or not pool_usable(pool.value):
                return []
            new = block.copy()
            ips = new.allocate(num, handle_id, attrs, host, self._now())
            if not ips:
                return []
            if self.txn.block(cidr, entry.revision, new, handles=handles,
                              deltas={handle_id: len(ips)} if handle_id else None, pool=pool):
                return ips
            lost = True
            return None

        return self.txn.retry(f"block {cidr}", step)

    def _claim_and_allocate(self, version: int, num: int, handle_id: str | None,
                            attrs: Attributes, host: str, strict: bool,
                            pools: list[tuple[str, Versioned[IPPool]]],
                            handles: HandleStates) -> list[str]:
        """Claim a free block for `host` and allocate in it, in one transaction. Each
        commit is one attempt: a block somebody else claimed meanwhile moves on to the
        next free block, a changed handle or pool retries the same block."""
        existing = self.state.list_block_cidrs(version)
        candidates = self._claim_candidates(version, pools, existing)
        current = next(candidates, None)

        def step() -> list[str] | None:
            nonlocal current
            while current is not None:
                pool_cidr, cidr = current
                pool = self.state.pool_map(version).get(pool_cidr)
                if pool is not None and pool_usable(pool.value) and cidr not in existing:
                    break
                current = next(candidates, None)
            else:
                return []  # no free block left in any usable pool
            block = AllocationBlock.new(cidr, host, strict)
            ips = block.allocate(num, handle_id, attrs, host, self._now())
            if self.txn.block(cidr, 0, block, handles=handles,
                              deltas={handle_id: len(ips)} if handle_id else None, pool=pool,
                              claim_for=host):
                return ips
            if cidr in self.state.blocks:  # somebody else claimed it
                existing.add(cidr)
            return None

        return self.txn.retry(f"claim of a block for {host}", step)

    def _claim_candidates(self, version: int, pools: list[tuple[str, Versioned[IPPool]]],
                          existing: set[str]) -> Iterator[tuple[str, str]]:
        """(pool CIDR, free block CIDR) to try claiming, pool by pool; a pool that is gone
        or disabled meanwhile is skipped."""
        for pool_cidr, entry in pools:
            assert entry.value is not None
            for cidr in self._free_block_cidrs(entry.value, existing):
                current = self.state.pool_map(version).get(pool_cidr)
                if current is None or not pool_usable(current.value):
                    break
                yield pool_cidr, cidr

    def _free_block_cidrs(self, pool: IPPool, existing: set[str]) -> Iterator[str]:
        """Unclaimed block CIDRs of `pool`, in random order (hosts rarely collide)."""
        net = net_of(pool.cidr)
        assert pool.block_size is not None
        bits = pool.block_size - net.prefixlen
        step = 1 << (net.max_prefixlen - pool.block_size)
        base = int(net.network_address)
        cls = type(net)
        taken: set[int] = set()
        for cidr in existing:  # (a block of another size overlaps several slots)
            other = net_of(cidr)
            if within(other, net) or within(net, other):
                first = (int(other.network_address) - base) // step
                taken.update(range(max(first, 0), first + max(1, other.num_addresses // step)))

        def cidr_of(index: int) -> str:
            return str(cls((base + index * step, pool.block_size)))

        if bits <= 16:
            indices = [i for i in range(1 << bits) if i not in taken]
            self._rng.shuffle(indices)
            yield from (cidr_of(i) for i in indices)
        else:
            for _ in range(_SAMPLE_TRIES):
                index = self._rng.randrange(1 << bits)
                if index not in taken:
                    yield cidr_of(index)

    # === assign a given address =============================================================

    def assign_ip(self, ip: str, handle_id: str | None, attributes: Attributes = None,
                  host: str | None = None) -> str:
        """Assign one given address. A new block is claimed for `host` if the address's
        block does not exist yet (not in a disabled pool). Raises `ValidationError` for an
        address in no pool and `AddressInUse` for one that is taken."""
        addr = parse_ip(ip)
        if handle_id is not None:
            keyspace.handle_key(handle_id)
        host = resolve_host(host)
        net = ipaddress.ip_network(addr)
        handles: HandleStates = {}

        def step() -> str | None:
            pool = self.state.pool_containing(net, fresh=True)
            if pool is None or pool.value is None:
                raise ValidationError("ip", str(addr), "is not in any IP pool")
            assert pool.value.block_size is not None
            cidr = block_cidr_for(addr, pool.value.block_size)
            entry = self.state.read_block(cidr)
            if handle_id:
                handles[handle_id] = self.state.read_handle(handle_id)
            claim = entry.value is None
            if entry.value is None:
                if entry.revision:
                    raise CalicoError(f"block {cidr} holds invalid data; run the IPAM check")
                if pool.value.disabled:
                    raise ValidationError("ip", str(addr),
                                          f"is in pool {pool.value.cidr}, which is disabled")
                block = AllocationBlock.new(cidr, host, self.state.config().strict_affinity)
            else:
                block = entry.value.copy()
            block.assign(addr, handle_id, attributes, self._now())
            if self.txn.block(cidr, entry.revision, block, handles=handles,
                              deltas={handle_id: 1} if handle_id else None, pool=pool,
                              claim_for=host if claim else None):
                return str(addr)
            return None

        return self.txn.retry(f"block of {addr}", step)

    # === release (libcalico.ipam.release) =====================================================

    def release_ips(self, ips: Iterable[str]) -> set[str]:
        """Release addresses; returns those that were not allocated. Each block emptied
        is deleted together with its affinity, so its addresses can move to other hosts."""
        return release.release_ips(self.txn, ips)

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Release every address of a handle; returns them."""
        return release.release_by_handle(self.txn, handle_id)

    # === queries ================================================================================

    def get_assignment_attributes(self, ip: str) -> Assignment | None:
        """Handle and attributes of an allocated address; None if it is not allocated."""
        addr = parse_ip(ip)
        cidr = release.block_of(self.state, addr)
        if cidr is None:
            return None
        block = self.state.read_block(cidr).value
        info = block.attributes_of(addr) if block else None
        if info is None:
            return None
        return Assignment(str(addr), info[0], info[1], cidr)

    def host_blocks(self, host: str) -> list[str]:
        """The CIDRs of the blocks affine to `host` (IPv4 first)."""
        resolve_host(host)
        return [c for v in (4, 6) for c in self.state.affine_blocks(host, v, fresh=True)]

    def ips_by_handle(self, handle_id: str) -> list[str]:
        """The addresses allocated under a handle, read from its blocks (sorted)."""
        out: list[str] = []
        for cidr in sorted(self.handle_counts(handle_id)):
            block = self.state.read_block(cidr).value
            if block is not None:
                out += [ip for ip, h in block.allocated().items() if h == handle_id]
        return sorted(out, key=ipaddress.ip_address)
    def handle_ids(self, prefix: str = "") -> list[str]:
        """The ids of the handles that exist, those starting with `prefix` only (keys
        only: nothing is decoded). A CNI GC lists its network's handles this way."""
        keys, _ = self.store.list_keys(keyspace.HANDLE_DIR + prefix)
        out = []
        for key in keys:
            parsed = keyspace.parse_key(key)
            if isinstance(parsed, keyspace.HandleKey):
                out.append(parsed.handle_id)
        return sorted(out)

    def handle_assignments(self, handle_id: str) -> list[Assignment]:
        """The addresses a handle holds, with the attributes recorded for each (reads the
        handle and its blocks); [] if the handle does not exist."""
        out = []
        for cidr in sorted(self.handle_counts(handle_id)):
            block = self.state.read_block(cidr).value
            if block is None:
                continue
            for ip, handle in block.allocated().items():
                if handle == handle_id:
                    info = block.attributes_of(ip)
                    out.append(Assignment(ip, handle, info[1] if info else None, cidr))
        return out

    def handle_counts(self, handle_id: str) -> dict[str, int]:
        """The handle's recorded count of addresses per block ({} if it does not exist)."""
        handle = self.state.read_handle(handle_id).value
        return dict(handle.block) if handle else {}

    # === pool-wide operations (libcalico.ipam.pools) =============================================

    def usage(self) -> list[PoolUsage]:
        """Allocated addresses per pool and per block."""
        return pools.usage(self.state)

    def claim_block(self, host: str, cidr: str) -> None:
        """Make `host` affine to block `cidr`; `AlreadyExists` if another host holds it."""
        pools.claim_block(self.txn, host, cidr)

    def release_affinity(self, host: str, cidr: str) -> None:
        """Drop `host`'s affinity to block `cidr` (an empty block is deleted)."""
        pools.release_affinity(self.txn, host, cidr)

    def get_config(self) -> IPAMConfig:
        return self.state.config()

    def set_config(self, config: IPAMConfig) -> None:
        """Write the IPAM config. New blocks take `strict_affinity` from it; existing
        blocks keep the flag they were created with."""
        self.txn.config(config)

    def remove_pool(self, cidr: str, force: bool = False) -> list[str]:
        """Remove a pool; `PoolInUse` while it has allocations unless `force` (which
        releases them and returns them)."""
        return pools.remove_pools(self.txn, [cidr], force)

    def remove_pools(self, cidrs: Sequence[str], force: bool = False) -> list[str]:
        """Remove several pools, all or nothing: `NotFound` or `PoolInUse` (unless
        `force`) for any of them and none is removed. Returns the addresses released."""
        return pools.remove_pools(self.txn, cidrs, force)


__all__ = ["RETRIES", "AddressInUse", "AssignResult", "Assignment", "IPAMClient",
           "PoolsExhausted"]
