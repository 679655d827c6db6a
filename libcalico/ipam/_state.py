"""The IPAM client's view of the datastore: decoded, versioned reads and a cache.

Owns: reading blocks, handles, pools and the IPAM config from etcd into typed values
with their mod_revision (0 = absent), the per-client caches that let the allocator skip
reads (block contents and revisions, host affinities, pools), refreshing those caches
from the values a lost compare-and-swap returns, and the small pure helpers every IPAM
module shares (address and CIDR parsing, which host a call is for). Stale cache entries
are harmless: every write compares the revisions it was computed from, and a lost compare
refreshes them.

Leaves to others: writes, and the cache updates that follow them (`libcalico.ipam.commit`),
the allocation policy (`libcalico.ipam.client`), the block arithmetic
(`libcalico.ipam.block`), key names (`libcalico.keyspace`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from libcalico import keyspace
from libcalico.datastore import KV, Datastore, Get
from libcalico.errors import CalicoError, ValidationError
from libcalico.ipam.block import AllocationBlock, IPAMHandle
from libcalico.model import IPAMConfig, IPPool

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A decoded value and the mod_revision it was read at (value None, revision 0:
    absent; value None, revision > 0: present but invalid)."""

    value: T | None
    revision: int


# Key builders memoised: they parse the CIDR, and the allocator builds them per call.
block_key = functools.lru_cache(maxsize=16384)(keyspace.block_key)
pool_key = functools.lru_cache(maxsize=1024)(keyspace.pool_key)


def _decode_json(kv: KV | None, parse: Callable[[Any], T], what: str) -> Versioned[T]:
    if kv is None:
        return Versioned(None, 0)
    try:
        return Versioned(parse(json.loads(kv.value)), kv.mod_revision)
    except (ValueError, TypeError, KeyError, CalicoError) as exc:
        _log.warning("ignoring invalid %s at %s: %s", what, kv.key, exc)
        return Versioned(None, kv.mod_revision)


def decode_block(kv: KV | None) -> Versioned[AllocationBlock]:
    return _decode_json(kv, AllocationBlock.from_json, "block")


def decode_handle(kv: KV | None) -> Versioned[IPAMHandle]:
    return _decode_json(kv, IPAMHandle.from_json, "handle")


def decode_pool(kv: KV | None) -> Versioned[IPPool]:
    return _decode_json(kv, IPPool.from_json, "pool")


def parse_ip(ip: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(ip).split("/")[0] if isinstance(ip, str) else ip)  # type: ignore[arg-type]
    except ValueError:
        raise ValidationError("ip", ip, "not an IP address") from None


def resolve_host(host: str | None) -> str:
    """The host a call is for: `host`, else this machine's hostname (validated)."""
    host = host or socket.gethostname()
    keyspace.affinity_dir(host)  # validates the name
    return host


def pool_usable(pool: IPPool | None) -> bool:
    """May auto-assign take addresses from this pool?"""
    return pool is not None and not pool.disabled and pool.ipam


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8192)
def net_of(cidr: str) -> Network:
    return ipaddress.ip_network(cidr)


def within(inner: str | Network, outer: str | Network) -> bool:
    """Is `inner` a subnet of `outer` (False across IP versions)?"""
    a = net_of(inner) if isinstance(inner, str) else inner
    b = net_of(outer) if isinstance(outer, str) else outer
    return (a.version == b.version and a.prefixlen >= b.prefixlen
            and b.supernet_of(a))  # type: ignore[arg-type]


class IPAMState:
    """Reads plus caches. State: `blocks` (cidr -> last known block and revision),
    `affinity` ((host, version) -> block CIDRs, as last listed or since extended by our
    own claims), `pools` (version -> cidr -> pool and revision; None until listed)."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.blocks: dict[str, Versioned[AllocationBlock]] = {}
        self.affinity: dict[tuple[str, int], list[str]] = {}
        self.pools: dict[int, dict[str, Versioned[IPPool]] | None] = {4: None, 6: None}

    # --- blocks ----------------------------------------------------------------------------

    def read_block(self, cidr: str) -> Versioned[AllocationBlock]:
        entry = decode_block(self.store.get(block_key(cidr)))
        self.note_block(cidr, entry)
        return entry

    def read_blocks(self, cidrs: list[str]) -> None:
        """Refresh several blocks in one round trip per 100 (a read-only transaction)."""
        for start in range(0, len(cidrs), 100):
            chunk = cidrs[start:start + 100]
            keys = [block_key(c) for c in chunk]
            result = self.store.txn_result([], [Get(k) for k in keys])
            for cidr, key in zip(chunk, keys, strict=True):
                self.note_block_kv(cidr, result.gets[key])

    def block(self, cidr: str) -> Versioned[AllocationBlock]:
        """The cached block, read if unknown."""
        entry = self.blocks.get(cidr)
        return entry if entry is not None else self.read_block(cidr)

    def note_block(self, cidr: str, entry: Versioned[AllocationBlock]) -> None:
        if entry.value is None and entry.revision == 0:
            self.blocks.pop(cidr, None)
            for cidrs in self.affinity.values():
                if cidr in cidrs:
                    cidrs.remove(cidr)
        else:
            self.blocks[cidr] = entry

    def note_block_kv(self, cidr: str, kv: KV | None) -> Versioned[AllocationBlock]:
        entry = decode_block(kv)
        self.note_block(cidr, entry)
        return entry

    def list_block_cidrs(self, version: int) -> set[str]:
        """The CIDRs of every existing block (keys only: nothing is decoded)."""
        kvs, _ = self.store.list(keyspace.block_dir(version))
        out = set()
        for kv in kvs:
            parsed = keyspace.parse_key(kv.key)
            if isinstance(parsed, keyspace.BlockKey):
                out.add(parsed.cidr)
        return out

    def list_blocks(self, version: int) -> dict[str, Versioned[AllocationBlock]]:
        kvs, _ = self.store.list(keyspace.block_dir(version))
        out: dict[str, Versioned[AllocationBlock]] = {}
        for kv in kvs:
            parsed = keyspace.parse_key(kv.key)
            if isinstance(parsed, keyspace.BlockKey):
                out[parsed.cidr] = decode_block(kv)
                self.note_block(parsed.cidr, out[parsed.cidr])
        return out

    # --- affinity ----------------------------------------------------------------------------

    def affine_blocks(self, host: str, version: int, fresh: bool = False) -> list[str]:
        key = (host, version)
        if fresh or key not in self.affinity:
            kvs, _ = self.store.list(keyspace.affinity_dir(host, version))
            cidrs = []
            for kv in kvs:
                parsed = keyspace.parse_key(kv.key)
                if isinstance(parsed, keyspace.AffinityKey):
                    cidrs.append(parsed.cidr)
            self.affinity[key] = sorted(cidrs, key=lambda c: net_of(c))
        return list(self.affinity[key])

    def add_affinity(self, host: str, cidr: str) -> None:
        cidrs = self.affinity.setdefault((host, net_of(cidr).version), [])
        if cidr not in cidrs:
            cidrs.append(cidr)

    def drop_affinity(self, host: str, cidr: str) -> None:
        cidrs = self.affinity.get((host, net_of(cidr).version))
        if cidrs and cidr in cidrs:
            cidrs.remove(cidr)

    # --- pools -------------------------------------------------------------------------------

    def pool_map(self, version: int, fresh: bool = False) -> dict[str, Versioned[IPPool]]:
        cached = self.pools[version]
        if cached is None or fresh:
            kvs, _ = self.store.list(keyspace.pool_dir(version))
            cached = {}
            for kv in kvs:
                entry: Versioned[IPPool] = decode_pool(kv)
                if entry.value is not None:
                    cached[entry.value.cidr] = entry
            self.pools[version] = cached
        return cached

    def note_pool_kv(self, cidr: str, kv: KV | None) -> None:
        version = net_of(cidr).version
        cached = self.pool_map(version)
        entry = decode_pool(kv)
        if entry.value is None:
            cached.pop(cidr, None)
        else:
            cached[cidr] = entry

    def pool_containing(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network,
                        fresh: bool = False) -> Versioned[IPPool] | None:
        """The pool holding an address or block (one refresh of the cache on a miss)."""
        for attempt_fresh in ((True,) if fresh else (False, True)):
            for cidr, entry in self.pool_map(net.version, attempt_fresh).items():
                if within(net, cidr):
                    return entry
        return None

    # --- handles and config ---------------------------------------------------------------

    def read_handle(self, handle_id: str) -> Versioned[IPAMHandle]:
        return decode_handle(self.store.get(keyspace.handle_key(handle_id)))

    def read_handles(self, handle_ids: Iterable[str]) -> dict[str, Versioned[IPAMHandle]]:
        """Several handles in one round trip per 100 (a read-only transaction)."""
        ids = list(handle_ids)
        out: dict[str, Versioned[IPAMHandle]] = {}
        for start in range(0, len(ids), 100):
            chunk = ids[start:start + 100]
            keys = [keyspace.handle_key(h) for h in chunk]
            result = self.store.txn_result([], [Get(k) for k in keys])
            for handle_id, key in zip(chunk, keys, strict=True):
                out[handle_id] = decode_handle(result.gets[key])
        return out

    def config(self) -> IPAMConfig:
        kv = self.store.get(keyspace.IPAM_CONFIG_KEY)
        if kv is None:
            return IPAMConfig()
        entry = _decode_json(kv, IPAMConfig.from_json, "IPAM config")
        return entry.value if entry.value is not None else IPAMConfig()
