"""The IPAM client: assigns and releases workload addresses with etcd compare-and-swap.

Owns: auto-assignment (the host's own blocks, then a newly claimed block, then - unless
strict affinity is configured - a free address in another host's block; never from a
disabled pool), assignment of a given address, release by address and by handle, and the
queries (attributes of an address, the blocks of a host). Pool-wide operations (usage,
claims, config, pool removal) live in `libcalico.ipam.pools`, which extends this class.

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
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from libcalico import keyspace
from libcalico.datastore import Datastore, Delete, Get, ModRevisionIs, Op, Put, TxnResult
from libcalico.errors import CalicoError, Conflict, ValidationError
from libcalico.ipam._state import (
    IPAMState,
    Versioned,
    decode_handle,
    encode,
    net_of,
    pool_usable,
)
from libcalico.ipam.block import (
    AddressInUse,
    AllocationBlock,
    Attributes,
    IPAMHandle,
    block_cidr_for,
)
from libcalico.ipam import pools
from libcalico.ipam.pools import PoolUsage
from libcalico.model import IPAMConfig, IPPool

_log = logging.getLogger(__name__)

RETRIES = 100
# etcd refuses transactions of more than 128 operations; a release touching more handles
# than this is split into several transactions, each consistent on its own.
MAX_HANDLES_PER_TXN = 100
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


def parse_ip(ip: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(ip).split("/")[0] if isinstance(ip, str) else ip)  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError("ip", ip, "not an IP address") from None


class IPAMClient:
    """Allocator on one datastore client. Not thread-safe: one per thread or process."""

    def __init__(self, datastore: Datastore, retries: int = RETRIES) -> None:
        self.store = datastore
        self.retries = retries
        self.state = IPAMState(datastore)
        self._rng = random.Random()

    # === auto-assign ==========================================================================

    def auto_assign(self, num_v4: int, num_v6: int, handle_id: str | None,
                    attributes: Attributes = None, host: str | None = None,
                    pools: Sequence[str] | None = None) -> AssignResult:
        """Assign `num_v4` IPv4 and `num_v6` IPv6 addresses to `handle_id` for `host`.

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
        net = net_of(cidr)
        return any(net.subnet_of(net_of(p)) for p, _ in pools)  # type: ignore[arg-type]

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
        cached = (host, version) in self.state.affinity
        for fresh in ((False, True) if cached else (True,)):
            for cidr in self.state.affine_blocks(host, version, fresh):
                if self._in_pools(cidr, pools):
                    got += self._allocate_in_block(cidr, num - len(got), handle_id, attrs,
                                                   host, handles, affine=True, reread=fresh)
                    if len(got) == num:
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
                           affine: bool, reread: bool = False) -> list[str]:
        """Take up to `num` addresses from one existing block, by compare-and-swap."""
        entry = self.state.block(cidr)
        if reread and (entry.value is None or entry.value.free_count == 0):
            entry = self.state.read_block(cidr)
        for _ in range(self.retries):
            block = entry.value
            if block is None:
                return []
            if affine and block.host != host:
                self.state.drop_affinity(host, cidr)
                return []
            pool = self.state.pool_containing(net_of(cidr))
            if pool is None or not pool_usable(pool.value) or block.free_count == 0:
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
        existing = set(self.state.list_blocks(version))
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

        def cidr_of(index: int) -> str:
            return str(cls((base + index * step, pool.block_size)))

        if bits <= 16:
            indices = [i for i in range(1 << bits) if cidr_of(i) not in existing]
            self._rng.shuffle(indices)
            yield from (cidr_of(i) for i in indices)
        else:
            for _ in range(_SAMPLE_TRIES):
                cidr = cidr_of(self._rng.randrange(1 << bits))
                if cidr not in existing:
                    yield cidr

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
        bkey = keyspace.block_key(cidr)
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
            pkey = keyspace.pool_key(pool[0])
            compares.append(ModRevisionIs(pkey, pool[1]))
            gets.append(Get(pkey))
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
            for handle_id, handle in new_handles.items():
                handles[handle_id] = Versioned(handle, result.revision if handle else 0)
        else:
            self.state.note_block_kv(cidr, result.gets[bkey])
            if pool is not None:
                self.state.note_pool_kv(pool[0], result.gets[keyspace.pool_key(pool[0])])
            for handle_id in deltas:
                handles[handle_id] = decode_handle(result.gets[keyspace.handle_key(handle_id)])
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

    # === release ================================================================================

    def release_ips(self, ips: Iterable[str]) -> set[str]:
        """Release addresses; returns those that were not allocated. Each block emptied
        is deleted together with its affinity, so its addresses can move to other hosts."""
        by_block: dict[str, list[str]] = {}
        unallocated: set[str] = set()
        for ip in ips:
            addr = parse_ip(ip)
            cidr = self._block_of(addr)
            if cidr is None:
                unallocated.add(str(addr))
            else:
                by_block.setdefault(cidr, []).append(str(addr))
        for cidr, group in by_block.items():
            unallocated.update(self._release_in_block(cidr, group))
        return unallocated

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Release every address of a handle; returns them."""
        keyspace.handle_key(handle_id)
        handle = self.state.read_handle(handle_id)
        if handle.value is None:
            return []
        released: list[str] = []
        for cidr in sorted(handle.value.block):
            entry = self.state.read_block(cidr)
            if entry.value is None:
                continue
            ips = [ip for ip, h in entry.value.allocated().items() if h == handle_id]
            gone = self._release_in_block(cidr, ips, entry)
            released += [ip for ip in ips if ip not in gone]
        self._drop_handle_if_unused(handle_id)
        return released

    def _drop_handle_if_unused(self, handle_id: str) -> None:
        """Delete a handle whose blocks no longer hold any of its addresses (repairs a
        handle left by an older writer); guarded by the handle's revision."""
        handle = self.state.read_handle(handle_id)
        if handle.value is None:
            return
        for cidr in handle.value.block:
            block = self.state.read_block(cidr).value
            if block is not None and block.handle_counts().get(handle_id):
                return
        self.store.cas_delete(keyspace.handle_key(handle_id), handle.revision)

    def _block_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        pool = self.state.pool_containing(ipaddress.ip_network(addr))
        if pool is not None and pool.value is not None and pool.value.block_size:
            return block_cidr_for(addr, pool.value.block_size)
        for cidr in self.state.list_blocks(addr.version):  # a block outside every pool
            if addr in net_of(cidr):
                return cidr
        return None

    def _release_in_block(self, cidr: str, ips: list[str],
                          entry: Versioned[AllocationBlock] | None = None,
                          expect: dict[str, str | None] | None = None) -> set[str]:
        """Release `ips` of one block; returns those that were not allocated (or, with
        `expect`, whose current handle is not the expected one: those are left alone)."""
        entry = entry or self.state.read_block(cidr)
        handles: HandleStates = {}
        todo = list(ips)
        unknown: set[str] = set()
        for _ in range(self.retries):
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
            for h in counts:
                if h not in handles:
                    handles[h] = self.state.read_handle(h)
            deltas = {h: -n for h, n in counts.items()}
            if not released:
                return unknown | set(not_allocated)
            empty = new.is_empty()
            result = self._commit(cidr, entry.revision, None if empty else new, handles,
                                  deltas, old_host=block.host)
            if result.succeeded:
                if empty and block.host:
                    self.state.drop_affinity(block.host, cidr)
                unknown.update(not_allocated)
                todo = [ip for ip in todo if ip not in batch]
                if not todo:
                    return unknown
                entry = self.state.block(cidr)
            else:
                entry = self.state.blocks.get(cidr) or Versioned(None, 0)
        raise Conflict(f"block {cidr} kept changing; gave up after {self.retries} attempts")

    # === queries ================================================================================

    def get_assignment_attributes(self, ip: str) -> Assignment | None:
        """Handle and attributes of an allocated address; None if it is not allocated."""
        addr = parse_ip(ip)
        cidr = self._block_of(addr)
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


def count_allocations(blocks: Iterable[AllocationBlock]) -> Counter[str]:
    """Per-handle totals across blocks (used by the check and by tests)."""
    total: Counter[str] = Counter()
    for block in blocks:
        total.update(block.handle_counts())
    return total


__all__ = ["AddressInUse", "AssignResult", "Assignment", "IPAMClient", "PoolsExhausted"]
