"""The IPAM client: assigns and releases workload addresses with etcd compare-and-swap.

Owns: auto-assignment (the host's own blocks, then a newly claimed block, then - unless
strict affinity is configured - a free address in another host's block; never from a
disabled pool), assignment of a given address, release by address and by handle, and the
queries (attributes of an address, the blocks of a host), and `_commit`, the one write
path. Release (`libcalico.ipam.release`) and pool-wide operations - usage, claims, config,
pool removal (`libcalico.ipam.pools`) - are functions those modules expose as methods here.

Consistency: every change is ONE etcd transaction that compares the mod_revision of the
block, of each handle it touches and of the pool, and writes the block and the handles
together (a claim also creates the affinity key; emptying a block deletes it and its
affinity). So blocks and handles never disagree, even if the process dies at any point,
and no two allocators can hand out one address. A lost compare returns the current
values in the same round trip (`Get` in the failure branch); the client recomputes and
retries up to `retries` times, then raises `Conflict`.

Efficiency: the client caches its hosts' affine blocks and their revisions, and the
pools; a new handle is assumed absent. A single assignment in the steady state is one
transaction and no reads.

Leaves to others: the block arithmetic (`libcalico.ipam.block`), decoding and caches
(`libcalico.ipam._state`), keys (`libcalico.keyspace`), the etcd calls
(`libcalico.datastore`), consistency checks (`libcalico.ipam.check`).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from libcalico import keyspace
from libcalico.datastore import Datastore, Delete, Get, ModRevisionIs, Op, Put, TxnResult
from libcalico.errors import CalicoError, Conflict, ValidationError
from libcalico.ipam import pools, release
from libcalico.ipam._state import (
    IPAMState,
    Versioned,
    block_key,
    decode_handle,
    encode,
    net_of,
    parse_ip,
    pool_key,
    pool_usable,
    within,
)
from libcalico.ipam.block import (
    AddressInUse,
    AllocationBlock,
    Attributes,
    IPAMHandle,
    block_cidr_for,
)
from libcalico.ipam.pools import PoolUsage
from libcalico.model import IPAMConfig, IPPool

_log = logging.getLogger(__name__)

RETRIES = 100
# How many random block CIDRs to try in a pool too large to enumerate.
_SAMPLE_TRIES = 2000


class PoolsExhausted(CalicoError):
    """Fewer addresses were available than were asked for."""


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


HandleStates = dict[str, Versioned[IPAMHandle]]


def _version_name(version: int) -> str:
    return f"IPv{version}"


def _count(field_name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(field_name, value, "must be a non-negative integer")
    return value


class IPAMClient:
    """Allocator on one datastore client. Not thread-safe: one per thread or process."""

    def __init__(self, datastore: Datastore, retries: int = RETRIES) -> None:
        self.store = datastore
        self.retries = retries
        self.state = IPAMState(datastore)
        self._rng = random.Random()
        self._hint: dict[tuple[str, int], str] = {}  # (host, version) -> block used last

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
        host = self._host(host)
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

    @staticmethod
    def _host(host: str | None) -> str:
        host = host or socket.gethostname()
        keyspace.affinity_dir(host)  # validates the name
        return host

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
        entry = self.state.block(cidr)
        for _ in range(self.retries):
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
            ips = new.allocate(num, handle_id, attrs, host)
            if not ips:
                return []
            assert pool.value is not None
            result = self._commit(cidr, entry.revision, new, handles,
                                  {handle_id: len(ips)} if handle_id else {},
                                  pool=(pool.value.cidr, pool.revision))
            if result.succeeded:
                return ips
            entry = self.state.blocks.get(cidr) or Versioned(None, 0)
        raise Conflict(f"block {cidr} kept changing; gave up after {self.retries} attempts")

    def _claim_and_allocate(self, version: int, num: int, handle_id: str | None,
                            attrs: Attributes, host: str, strict: bool,
                            pools: list[tuple[str, Versioned[IPPool]]],
                            handles: HandleStates) -> list[str]:
        """Claim a free block for `host` and allocate in it, in one transaction."""
        existing = self.state.list_block_cidrs(version)
        attempts = 0
        for pool_cidr, pool_entry in pools:
            pool = pool_entry.value
            assert pool is not None and pool.block_size is not None
            for cidr in self._free_block_cidrs(pool, existing):
                while attempts < self.retries:
                    attempts += 1
                    block = AllocationBlock.new(cidr, host, strict)
                    ips = block.allocate(num, handle_id, attrs, host)
                    result = self._commit(
                        cidr, 0, block, handles, {handle_id: len(ips)} if handle_id else {},
                        pool=(pool_cidr, pool_entry.revision),
                        extra_ops=[Put(keyspace.affinity_key(host, cidr), "")])
                    if result.succeeded:
                        self.state.add_affinity(host, cidr)
                        return ips
                    if cidr in self.state.blocks:  # somebody else claimed it
                        existing.add(cidr)
                        break
                    fresh = self.state.pool_map(version).get(pool_cidr)
                    if fresh is None or not pool_usable(fresh.value):
                        break  # pool gone or disabled: next pool
                    pool_entry = fresh  # the pool or the handle changed: retry
                else:
                    raise Conflict(f"could not claim a block for {host}; gave up after "
                                   f"{self.retries} attempts")
                fresh = self.state.pool_map(version).get(pool_cidr)
                if fresh is None or not pool_usable(fresh.value):
                    break
        return []

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

    # === the one write path ===================================================================

    def _commit(self, cidr: str, revision: int, new: AllocationBlock | None,
                handles: HandleStates, deltas: dict[str, int], *,
                pool: tuple[str, int] | None = None, extra_ops: Sequence[Op] = (),
                extra_compares: Sequence[ModRevisionIs] = (),
                old_host: str | None = None) -> TxnResult:
        """Write block `cidr` (None: delete it and `old_host`'s affinity) and the handle counts in
        one transaction guarded by the revisions they were computed from.

        `handles` holds the handles' known states (missing: assumed absent); it and the
        client's caches are updated with the outcome either way.
        """
        bkey = block_key(cidr)
        compares: list[ModRevisionIs] = [ModRevisionIs(bkey, revision), *extra_compares]
        ops: list[Op] = list(extra_ops)
        gets = [Get(bkey)]
        if new is None:
            ops.append(Delete(bkey))
            if old_host:
                ops.append(Delete(keyspace.affinity_key(old_host, cidr)))
        else:
            ops.append(Put(bkey, encode(new.to_json())))
        if pool is not None:
            compares.append(ModRevisionIs(pool_key(pool[0]), pool[1]))
        new_handles: dict[str, IPAMHandle | None] = {}
        for handle_id, delta in deltas.items():
            hkey = keyspace.handle_key(handle_id)
            known = handles.get(handle_id, Versioned(None, 0))
            handle = known.value.copy() if known.value else IPAMHandle(handle_id)
            handle.add(cidr, delta)
            compares.append(ModRevisionIs(hkey, known.revision))
            gets.append(Get(hkey))
            if handle.is_empty():
                if known.revision:
                    ops.append(Delete(hkey))
                new_handles[handle_id] = None
            else:
                ops.append(Put(hkey, encode(handle.to_json())))
                new_handles[handle_id] = handle
        result = self.store.txn_result(compares, ops, gets)
        if result.succeeded:
            if new is None:
                self.state.note_block(cidr, Versioned(None, 0))
            else:
                self.state.note_block(cidr, Versioned(new, result.revision))
            for handle_id, written in new_handles.items():
                handles[handle_id] = Versioned(written, result.revision if written else 0)
            return result
        # Lost: learn the current block and handles from the failure branch's reads. If
        # neither changed, the pool did (disabled, removed, edited): re-list the pools.
        unchanged = True
        kv = result.gets[bkey]
        unchanged &= (kv.mod_revision if kv else 0) == revision
        self.state.note_block_kv(cidr, kv)
        for handle_id in deltas:
            kv = result.gets[keyspace.handle_key(handle_id)]
            unchanged &= (kv.mod_revision if kv else 0) == handles.get(
                handle_id, Versioned(None, 0)).revision
            handles[handle_id] = decode_handle(kv)
        if unchanged and pool is not None:
            self.state.pool_map(net_of(pool[0]).version, fresh=True)
        return result

    # === assign a given address =============================================================

    def assign_ip(self, ip: str, handle_id: str | None, attributes: Attributes = None,
                  host: str | None = None) -> str:
        """Assign one given address. A new block is claimed for `host` if the address's
        block does not exist yet (not in a disabled pool). Raises `ValidationError` for an
        address in no pool and `AddressInUse` for one that is taken."""
        addr = parse_ip(ip)
        if handle_id is not None:
            keyspace.handle_key(handle_id)
        host = self._host(host)
        net = ipaddress.ip_network(addr)
        handles: HandleStates = {}
        deltas = {handle_id: 1} if handle_id else {}
        for _ in range(self.retries):
            pool = self.state.pool_containing(net, fresh=True)
            if pool is None or pool.value is None:
                raise ValidationError("ip", str(addr), "is not in any IP pool")
            assert pool.value.block_size is not None
            cidr = block_cidr_for(addr, pool.value.block_size)
            entry = self.state.read_block(cidr)
            if handle_id:
                handles[handle_id] = self.state.read_handle(handle_id)
            extra: list[Op] = []
            if entry.value is None:
                if entry.revision:
                    raise CalicoError(f"block {cidr} holds invalid data; run the IPAM check")
                if pool.value.disabled:
                    raise ValidationError("ip", str(addr),
                                          f"is in pool {pool.value.cidr}, which is disabled")
                block = AllocationBlock.new(cidr, host, self.state.config().strict_affinity)
                extra.append(Put(keyspace.affinity_key(host, cidr), ""))
            else:
                block = entry.value.copy()
            block.assign(addr, handle_id, attributes)
            result = self._commit(cidr, entry.revision, block, handles, deltas,
                                  pool=(pool.value.cidr, pool.revision), extra_ops=extra)
            if result.succeeded:
                if extra:
                    self.state.add_affinity(host, cidr)
                return str(addr)
        raise Conflict(f"block of {addr} kept changing; gave up after {self.retries} attempts")

    # === release (libcalico.ipam.release) =====================================================

    def release_ips(self, ips: Iterable[str]) -> set[str]:
        """Release addresses; returns those that were not allocated. Each block emptied
        is deleted together with its affinity, so its addresses can move to other hosts."""
        return release.release_ips(self, ips)

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Release every address of a handle; returns them."""
        return release.release_by_handle(self, handle_id)

    def _release_in_block(self, cidr: str, ips: list[str],
                          entry: Versioned[AllocationBlock] | None = None,
                          expect: dict[str, str | None] | None = None) -> set[str]:
        return release.release_in_block(self, cidr, ips, entry, expect)

    # === queries ================================================================================

    def get_assignment_attributes(self, ip: str) -> Assignment | None:
        """Handle and attributes of an allocated address; None if it is not allocated."""
        addr = parse_ip(ip)
        cidr = release.block_of(self, addr)
        if cidr is None:
            return None
        block = self.state.read_block(cidr).value
        info = block.attributes_of(addr) if block else None
        if info is None:
            return None
        return Assignment(str(addr), info[0], info[1], cidr)

    def host_blocks(self, host: str) -> list[str]:
        """The CIDRs of the blocks affine to `host` (IPv4 first)."""
        self._host(host)
        return [c for v in (4, 6) for c in self.state.affine_blocks(host, v, fresh=True)]

    def handle_counts(self, handle_id: str) -> dict[str, int]:
        """The handle's recorded count of addresses per block ({} if it does not exist)."""
        handle = self.state.read_handle(handle_id).value
        return dict(handle.block) if handle else {}

    # === pool-wide operations (libcalico.ipam.pools) =============================================

    def usage(self) -> list[PoolUsage]:
        """Allocated addresses per pool and per block."""
        return pools.usage(self)

    def claim_block(self, host: str, cidr: str) -> None:
        """Make `host` affine to block `cidr`; `AlreadyExists` if another host holds it."""
        pools.claim_block(self, host, cidr)

    def release_affinity(self, host: str, cidr: str) -> None:
        """Drop `host`'s affinity to block `cidr` (an empty block is deleted)."""
        pools.release_affinity(self, host, cidr)

    def get_config(self) -> IPAMConfig:
        return pools.get_config(self)

    def set_config(self, config: IPAMConfig) -> None:
        pools.set_config(self, config)

    def remove_pool(self, cidr: str, force: bool = False) -> list[str]:
        """Remove a pool; `PoolInUse` while it has allocations unless `force` (which
        releases them and returns them)."""
        return pools.remove_pool(self, cidr, force)


__all__ = ["AddressInUse", "AssignResult", "Assignment", "IPAMClient", "PoolsExhausted"]
