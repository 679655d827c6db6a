"""IPAM consistency check and repair.

Owns: `check`, which reads blocks, handles, affinities, pools, workload endpoints and
hosts at ONE revision and reports, as typed findings:
- leaks: allocated addresses that no workload endpoint uses;
- missing allocations: endpoint addresses with no allocation;
- stale affinities: blocks (or affinity keys) naming a host that no longer exists (a host
  exists while it has any key under /calico/v1/host/<h>/ or /calico/bgp/v1/host/<h>/);
- handle mismatches: handles whose per-block counts disagree with the blocks;
- duplicates: one address used by several endpoints (reported, not repaired);
and `repair`, which fixes those findings while allocations go on. Every step re-reads and
re-verifies under compare-and-swap: a leak is released only if, at repair time, no
endpoint uses the address and it still belongs to the handle it was reported with (an
address released and re-allocated after the report is left alone); a missing
allocation is recorded with `assign_ip` (the endpoint's workload id is the handle); a
stale affinity is dropped only if the host is still gone.

A freshly allocated address whose endpoint is not written yet looks like a leak; the
time between `check` and `repair` is its grace period, so run repair on a report that is
at least as old as the slowest workload set-up.

Leaves to others: the block transactions (`libcalico.ipam.client`), presenting reports
(`calicoctl ipam check`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from libcalico import keyspace
from libcalico.datastore import Datastore, Delete, ModRevisionIs, Put
from libcalico.errors import CalicoError, Conflict
from libcalico.ipam._state import decode_block, decode_handle, decode_pool, encode, net_of
from libcalico.ipam.block import AddressInUse, AllocationBlock, IPAMHandle
from libcalico.ipam.client import IPAMClient
from libcalico.model import IPPool

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leak:
    ip: str
    handle_id: str | None
    block: str


@dataclass(frozen=True)
class MissingAllocation:
    ip: str
    endpoint: keyspace.WorkloadEndpointKey
    in_pool: bool


@dataclass(frozen=True)
class StaleAffinity:
    host: str
    block: str
    block_exists: bool  # False: a dangling affinity key without its block


@dataclass(frozen=True)
class HandleMismatch:
    handle_id: str
    recorded: dict[str, int]  # from the handle key ({} when it is missing)
    actual: dict[str, int]  # counted in the blocks


@dataclass(frozen=True)
class DuplicateAddress:
    ip: str
    endpoints: tuple[keyspace.WorkloadEndpointKey, ...]


@dataclass(frozen=True)
class CheckReport:
    revision: int
    leaks: tuple[Leak, ...] = ()
    missing: tuple[MissingAllocation, ...] = ()
    stale_affinities: tuple[StaleAffinity, ...] = ()
    handle_mismatches: tuple[HandleMismatch, ...] = ()
    duplicates: tuple[DuplicateAddress, ...] = ()
    allocated: int = 0
    endpoint_addresses: int = 0

    @property
    def ok(self) -> bool:
        return not (self.leaks or self.missing or self.stale_affinities
                    or self.handle_mismatches or self.duplicates)


@dataclass
class RepairResult:
    released: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    affinities_released: list[str] = field(default_factory=list)
    handles_fixed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "what: why"


@dataclass
class _Snapshot:
    revision: int
    blocks: dict[str, AllocationBlock]
    handles: dict[str, IPAMHandle]
    affinities: list[keyspace.AffinityKey]
    pools: list[IPPool]
    endpoints: dict[str, list[keyspace.WorkloadEndpointKey]]  # ip -> endpoints
    hosts: set[str]


def _endpoint_ips(text: str) -> list[str]:
    """Addresses of a workload endpoint's JSON (tolerant: a bad value yields none)."""
    try:
        data = json.loads(text)
        nets = list(data.get("ipv4_nets") or []) + list(data.get("ipv6_nets") or [])
        return [str(ipaddress.ip_interface(n).ip) for n in nets]
    except (ValueError, TypeError, AttributeError):
        return []


def _snapshot(store: Datastore) -> _Snapshot:
    kvs, rev = store.list_many([keyspace.HOST_DIR, keyspace.BGP_HOST_DIR, keyspace.BLOCK_DIR,
                                keyspace.HANDLE_DIR, keyspace.AFFINITY_DIR,
                                keyspace.pool_dir(4), keyspace.pool_dir(6)])
    snap = _Snapshot(rev, {}, {}, [], [], {}, set())
    for kv in kvs:
        parsed = keyspace.parse_key(kv.key)
        if isinstance(parsed, keyspace.BlockKey):
            block = decode_block(kv).value
            if block is not None:
                snap.blocks[parsed.cidr] = block
        elif isinstance(parsed, keyspace.HandleKey):
            handle = decode_handle(kv).value
            if handle is not None:
                snap.handles[parsed.handle_id] = handle
        elif isinstance(parsed, keyspace.AffinityKey):
            snap.affinities.append(parsed)
        elif isinstance(parsed, keyspace.PoolKey):
            pool = decode_pool(kv).value
            if pool is not None:
                snap.pools.append(pool)
        else:
            if isinstance(parsed, keyspace.WorkloadEndpointKey):
                for ip in _endpoint_ips(kv.value):
                    snap.endpoints.setdefault(ip, []).append(parsed)
            hostname = getattr(parsed, "hostname", None)
            if isinstance(hostname, str):
                snap.hosts.add(hostname)
    return snap


def check(store: Datastore) -> CheckReport:
    """Compare IPAM's records with the endpoints and hosts, at one revision."""
    snap = _snapshot(store)
    allocated: dict[str, tuple[str | None, str]] = {}
    actual: dict[str, Counter[str]] = {}
    for cidr, block in snap.blocks.items():
        for ip, handle_id in block.allocated().items():
            allocated[ip] = (handle_id, cidr)
            if handle_id is not None:
                actual.setdefault(handle_id, Counter())[cidr] += 1
    leaks = tuple(Leak(ip, h, c) for ip, (h, c) in sorted(allocated.items())
                  if ip not in snap.endpoints)
    pool_nets = [net_of(p.cidr) for p in snap.pools]
    missing = []
    duplicates = []
    for ip, eps in sorted(snap.endpoints.items()):
        if ip not in allocated:
            addr = ipaddress.ip_address(ip)
            for ep in eps:
                missing.append(MissingAllocation(ip, ep, any(addr in n for n in pool_nets)))
        if len(eps) > 1:
            duplicates.append(DuplicateAddress(ip, tuple(eps)))
    stale = [StaleAffinity(b.host, c, True) for c, b in sorted(snap.blocks.items())
             if b.host is not None and b.host not in snap.hosts]
    stale += [StaleAffinity(a.hostname, a.cidr, False) for a in snap.affinities
              if a.cidr not in snap.blocks and a.hostname not in snap.hosts]
    mismatches = []
    for handle_id in sorted(set(snap.handles) | set(actual)):
        recorded = dict(snap.handles[handle_id].block) if handle_id in snap.handles else {}
        counted = dict(actual.get(handle_id, {}))
        if recorded != counted:
            mismatches.append(HandleMismatch(handle_id, recorded, counted))
    return CheckReport(snap.revision, leaks, tuple(missing), tuple(stale), tuple(mismatches),
                       tuple(duplicates), len(allocated),
                       sum(len(e) for e in snap.endpoints.values()))


def repair(store: Datastore, report: CheckReport, client: IPAMClient | None = None
           ) -> RepairResult:
    """Fix the findings of `report`, re-verifying each one against the current state."""
    client = client or IPAMClient(store)
    now = _snapshot(store)
    result = RepairResult()
    _repair_leaks(client, report, now, result)
    _repair_missing(client, report, now, result)
    for stale in report.stale_affinities:
        if stale.host in now.hosts:
            result.skipped.append(f"affinity {stale.host}/{stale.block}: host is back")
            continue
        client.release_affinity(stale.host, stale.block)
        result.affinities_released.append(stale.block)
    # Leaks and missing allocations changed handles; recount what is still reported.
    for mismatch in report.handle_mismatches:
        if _fix_handle(client, mismatch):
            result.handles_fixed.append(mismatch.handle_id)
    return result


def _repair_leaks(client: IPAMClient, report: CheckReport, now: _Snapshot,
                  result: RepairResult) -> None:
    by_block: dict[str, dict[str, str | None]] = {}
    for leak in report.leaks:
        if leak.ip in now.endpoints:
            result.skipped.append(f"leak {leak.ip}: now used by an endpoint")
        else:
            by_block.setdefault(leak.block, {})[leak.ip] = leak.handle_id
    for cidr, expect in by_block.items():
        kept = client._release_in_block(cidr, sorted(expect), expect=expect)
        for ip in sorted(expect):
            if ip in kept:
                result.skipped.append(f"leak {ip}: no longer allocated to {expect[ip]}")
            else:
                result.released.append(ip)


def endpoint_handle(endpoint: keyspace.WorkloadEndpointKey) -> str:
    """The handle a repaired allocation gets: the endpoint's workload id."""
    return endpoint.workload


def _repair_missing(client: IPAMClient, report: CheckReport, now: _Snapshot,
                    result: RepairResult) -> None:
    for miss in report.missing:
        if not miss.in_pool:
            result.skipped.append(f"missing {miss.ip}: in no IP pool")
            continue
        if miss.endpoint not in now.endpoints.get(miss.ip, []):
            result.skipped.append(f"missing {miss.ip}: endpoint no longer uses it")
            continue
        try:
            client.assign_ip(miss.ip, endpoint_handle(miss.endpoint),
                             {"repaired": "true"}, host=miss.endpoint.hostname)
            result.recorded.append(miss.ip)
        except AddressInUse:
            result.skipped.append(f"missing {miss.ip}: allocated meanwhile")
        except CalicoError as exc:
            result.skipped.append(f"missing {miss.ip}: {exc}")


def _fix_handle(client: IPAMClient, mismatch: HandleMismatch) -> bool:
    """Rewrite a handle from the blocks, guarded by the revisions of the handle and of
    every block it involves. Returns whether a write was needed and made."""
    hkey = keyspace.handle_key(mismatch.handle_id)
    for _ in range(client.retries):
        handle = client.state.read_handle(mismatch.handle_id)
        cidrs = set(mismatch.recorded) | set(mismatch.actual)
        if handle.value is not None:
            cidrs |= set(handle.value.block)
        blocks = {c: client.state.read_block(c) for c in sorted(cidrs)}
        counted = {c: n for c, e in blocks.items() if e.value is not None
                   for h, n in e.value.handle_counts().items() if h == mismatch.handle_id}
        if handle.value is not None and handle.value.block == counted:
            return False
        if handle.value is None and not counted:
            return False
        compares = [ModRevisionIs(hkey, handle.revision)]
        compares += [ModRevisionIs(keyspace.block_key(c), e.revision) for c, e in blocks.items()]
        if counted:
            ops = [Put(hkey, encode(IPAMHandle(mismatch.handle_id, counted).to_json()))]
            ok = client.store.txn(compares, ops)
        else:
            ok = client.store.txn(compares, [Delete(hkey)])
        if ok:
            return True
    raise Conflict(f"handle {mismatch.handle_id} kept changing; gave up")
