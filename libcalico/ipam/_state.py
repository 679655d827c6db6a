"""The IPAM client's view of the datastore: decoded, versioned reads and a cache.

Owns: reading blocks, handles, pools and the IPAM config from etcd into typed values
with their mod_revision (0 = absent), the per-client caches that let the allocator skip
reads (block contents and revisions, host affinities, pools), and refreshing those caches
from the values a lost compare-and-swap returns. Stale cache entries are harmless: every
write compares the revisions it was computed from, and a lost compare refreshes them.

Leaves to others: the allocation policy and the transactions (`libcalico.ipam.client`),
the block arithmetic (`libcalico.ipam.block`), key names (`libcalico.keyspace`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from libcalico import keyspace
from libcalico.datastore import KV, Datastore
from libcalico.errors import CalicoError
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


def encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _decode_json(kv: KV | None, parse: type[T] | object, what: str) -> Versioned[T]:
    if kv is None:
        return Versioned(None, 0)
    try:
        return Versioned(parse.from_json(json.loads(kv.value)), kv.mod_revision)  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, CalicoError) as exc:
        _log.warning("ignoring invalid %s at %s: %s", what, kv.key, exc)
        return Versioned(None, kv.mod_revision)


def decode_block(kv: KV | None) -> Versioned[AllocationBlock]:
    return _decode_json(kv, AllocationBlock, "block")


def decode_handle(kv: KV | None) -> Versioned[IPAMHandle]:
    return _decode_json(kv, IPAMHandle, "handle")


def decode_pool(kv: KV | None) -> Versioned[IPPool]:
    return _decode_json(kv, IPPool, "pool")


def pool_usable(pool: IPPool | None) -> bool:
    """May auto-assign take addresses from this pool?"""
    return pool is not None and not pool.disabled and pool.ipam


def net_of(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


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
        entry = decode_block(self.store.get(keyspace.block_key(cidr)))
        self.note_block(cidr, entry)
        return entry

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
                entry = decode_pool(kv)
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
                pnet = net_of(cidr)
                if net.subnet_of(pnet):  # type: ignore[arg-type]
                    return entry
        return None

    # --- handles and config ---------------------------------------------------------------

    def read_handle(self, handle_id: str) -> Versioned[IPAMHandle]:
        return decode_handle(self.store.get(keyspace.handle_key(handle_id)))

    def read_handles(self, handle_ids: Iterable[str]) -> dict[str, Versioned[IPAMHandle]]:
        return {h: self.read_handle(h) for h in handle_ids}

    def config(self) -> IPAMConfig:
        kv = self.store.get(keyspace.IPAM_CONFIG_KEY)
        if kv is None:
            return IPAMConfig()
        entry = _decode_json(kv, IPAMConfig, "IPAM config")
        return entry.value if entry.value is not None else IPAMConfig()
