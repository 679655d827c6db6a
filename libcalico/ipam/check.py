"""IPAM consistency check and repair.

Owns: `check`, which reads blocks, handles, affinities, pools, workload endpoints and
hosts at ONE revision and reports, as typed findings:
- leaks: allocated addresses that no workload endpoint uses (and that no node records as
  its tunnel address) and that were allocated at least `grace_period` seconds ago (or at
  an unrecorded time);
- in progress: allocations without an endpoint that are younger than that - a workload
  being set up assigns its address before it writes its endpoint, so these are work in
  progress, never leaks, and nothing repairs them;
- missing allocations: endpoint addresses with no allocation;
- stale affinities: blocks (or affinity keys) naming a host that no longer exists (a host
  exists while it has any key under /calico/v1/host/<h>/ or /calico/bgp/v1/host/<h>/);
- handle mismatches: handles whose per-block counts disagree with the blocks;
- duplicates: one address used by several endpoints (reported, not repaired);
and `repair`, which fixes those findings while allocations go on. Every step re-reads and
re-verifies under compare-and-swap: a leak is released only if, at repair time, no
endpoint uses the address, it still belongs to the handle it was reported with and it
is still older than the grace period (an address released and re-allocated after the
report is young again, and left alone); a missing allocation is recorded with
`assign_ip` (the endpoint's workload id is the handle); a stale affinity is dropped only
if the host is still gone.

The age of an allocation is the stamp its writer's clock put in the block
(`AllocationBlock.allocated_at`) against this process's clock, so the grace period also
absorbs clock skew between hosts; a stamp in the future counts as in progress.

Leaves to others: the transactions (`libcalico.ipam.commit`), releasing
(`libcalico.ipam.release`), allocation (`libcalico.ipam.client`), presenting reports
(`calicoctl ipam check`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from libcalico import keyspace
from libcalico.datastore import Datastore
from libcalico.errors import AddressInUse, CalicoError, ValidationError
from libcalico.ipam._state import decode_block, decode_handle, decode_pool, net_of
from libcalico.ipam.block import AllocationBlock, IPAMHandle
from libcalico.ipam.client import IPAMClient
from libcalico.ipam.release import release_in_block
from libcalico.model import IPPool

_log = logging.getLogger(__name__)

# Seconds an allocation without an endpoint counts as work in progress, not as a leak:
# far longer than a workload set-up takes (assign, veth, endpoint write), as Calico's
# kube-controllers wait before they garbage-collect a leaked address.
DEFAULT_GRACE_PERIOD = 60.0
# A node's tunnel addresses (`libcalico.tunnel`) are in use while the node records them.
TUNNEL_KEYS = ("vxlan_tunnel_addr_v4", "ipip_tunnel_addr_v4")


@dataclass(frozen=True)
class Leak:
    ip: str
    handle_id: str | None
    block: str
    allocated_at: int | None = None  # unix seconds; None: not recorded


@dataclass(frozen=True)
class InProgress:
    """An allocation without an endpoint, younger than the grace period."""

    ip: str
    handle_id: str | None
    block: str
    age: float  # seconds since it was allocated (negative: its writer's clock is ahead)


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
    """Findings at `revision`; `in_progress` are not problems (`ok` ignores them)."""

    revision: int
    leaks: tuple[Leak, ...] = ()
    missing: tuple[MissingAllocation, ...] = ()
    stale_affinities: tuple[StaleAffinity, ...] = ()
    handle_mismatches: tuple[HandleMismatch, ...] = ()
    duplicates: tuple[DuplicateAddress, ...] = ()
    allocated: int = 0
    endpoint_addresses: int = 0
    in_progress: tuple[InProgress, ...] = ()
    grace_period: float = DEFAULT_GRACE_PERIOD

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
    tunnels: set[str] = field(default_factory=set)  # nodes' recorded tunnel addresses


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
            elif (isinstance(parsed, keyspace.BGPHostKey) and parsed.name in TUNNEL_KEYS
                  and kv.value.strip()):
                snap.tunnels.add(kv.value.strip())
            hostname = getattr(parsed, "hostname", None)
            if isinstance(hostname, str):
                snap.hosts.add(hostname)
    return snap


def _validate_grace(grace_period: float) -> float:
    if not isinstance(grace_period, int | float) or grace_period < 0:
        raise ValidationError("grace_period", grace_period,
                              "must be a non-negative number of seconds")
    return float(grace_period)


def check(store: Datastore, grace_period: float = DEFAULT_GRACE_PERIOD,
          clock: Callable[[], float] = time.time) -> CheckReport:
    """Compare IPAM's records with the endpoints and hosts, at one revision. An
    allocation without an endpoint is a leak once it is `grace_period` seconds old (by
    `clock`), work in progress before (0: every one is a leak)."""
    grace_period = _validate_grace(grace_period)
    snap = _snapshot(store)
    now = clock()
    allocated: dict[str, tuple[str | None, str]] = {}
    actual: dict[str, Counter[str]] = {}
    leaks: list[Leak] = []
    in_progress: list[InProgress] = []
    for cidr, block in snap.blocks.items():
        for ip, handle_id in block.allocated().items():
            allocated[ip] = (handle_id, cidr)
            if handle_id is not None:
                actual.setdefault(handle_id, Counter())[cidr] += 1
            if ip in snap.endpoints or ip in snap.tunnels:
                continue
            when = block.allocated_at_of(ip)
            if grace_period and when is not None and now - when < grace_period:
                in_progress.append(InProgress(ip, handle_id, cidr, now - when))
            else:
                leaks.append(Leak(ip, handle_id, cidr, when))
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
    return CheckReport(snap.revision, tuple(sorted(leaks, key=lambda lk: lk.ip)),
                       tuple(missing), tuple(stale), tuple(mismatches), tuple(duplicates),
                       len(allocated), sum(len(e) for e in snap.endpoints.values()),
                       tuple(sorted(in_progress, key=lambda p: p.ip)), grace_period)


def repair(store: Datastore, report: CheckReport, client: IPAMClient | None = None,
           clock: Callable[[], float] = time.time) -> RepairResult:
    """Fix the findings of `report`, re-verifying each one against the current state (a
    leak must still be older than the report's grace period by `clock`)."""
    client = client or IPAMClient(store)
    now = _snapshot(store)
    result = RepairResult()
    _repair_leaks(client, report, now, result, clock)
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
                  result: RepairResult, clock: Callable[[], float]) -> None:
    by_block: dict[str, dict[str, str | None]] = {}
    for leak in report.leaks:
        if leak.ip in now.endpoints:
            result.skipped.append(f"leak {leak.ip}: now used by an endpoint")
        elif leak.ip in now.tunnels:
            result.skipped.append(f"leak {leak.ip}: now a node's tunnel address")
        else:
            by_block.setdefault(leak.block, {})[leak.ip] = leak.handle_id
    cutoff = int(clock() - report.grace_period) if report.grace_period else None
    for cidr, expect in by_block.items():
        kept = release_in_block(client.txn, cidr, sorted(expect), expect=expect,
                                allocated_before=cutoff)
        for ip in sorted(expect):
            if ip in kept:
                result.skipped.append(f"leak {ip}: no longer allocated to {expect[ip]} "
                                      "before the grace period")
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
    state = client.state

    def step() -> bool | None:
        handle = state.read_handle(mismatch.handle_id)
        cidrs = set(mismatch.recorded) | set(mismatch.actual)
        if handle.value is not None:
            cidrs |= set(handle.value.block)
        blocks = {c: state.read_block(c) for c in sorted(cidrs)}
        counted = {c: n for c, e in blocks.items() if e.value is not None
                   for h, n in e.value.handle_counts().items() if h == mismatch.handle_id}
        if handle.value is not None and handle.value.block == counted:
            return False
        if handle.value is None and not counted:
            return False
        if client.txn.handle(mismatch.handle_id, handle.revision, counted,
                             {c: e.revision for c, e in blocks.items()}):
            return True
        return None

    return client.txn.retry(f"handle {mismatch.handle_id}", step)
