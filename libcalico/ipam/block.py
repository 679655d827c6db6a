"""Allocation blocks and handles: the pure bookkeeping of IPAM.

Owns: `AllocationBlock`, one block of a pool (by default 64 addresses: a /26 or a /122)
in Calico's v1 JSON shape, with allocation, assignment of a given address, release, the
time each address was allocated (so a check can tell an allocation whose endpoint is still
being written from a leak) and the ordinal <-> address arithmetic; and `IPAMHandle`, the
per-handle count of addresses in each block. Both are plain values: no I/O, no clock (the
caller passes the time), no randomness.

Leaves to others: storing them and making every change a compare-and-swap
(`libcalico.ipam.commit`), deciding which block to use (the client's auto-assign order),
and the keys they live under (`libcalico.keyspace`).

Block JSON (`libcalico block.py` in Calico v1):
`{"cidr", "affinity": "host:<h>"|null, "strict_affinity", "allocations": [null|attr index
per ordinal], "unallocated": [free ordinals, next to hand out first], "attributes":
[{"handle_id", "secondary"}], "allocated_at": {"<ordinal>": <unix seconds>}}`;
`allocated_at` is ours (absent when empty; an allocation without an entry - written
before it existed, or given no time - has no known age).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from libcalico.errors import AddressInUse, ValidationError

AFFINITY_PREFIX = "host:"
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}

Attributes = Mapping[str, Any] | None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=8192)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def _addr(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    try:
        return ipaddress.ip_address(str(ip).split("/")[0])
    except ValueError as exc:
        raise ValidationError("ip", ip, "not an IP address") from exc


@dataclass
class AllocationBlock:
    """One block. State: `allocations[ordinal]` is None (free) or an index into
    `attributes`; `unallocated` lists the free ordinals in hand-out order (released ones
    go to the back, so an address is not reused at once); `attributes` holds one entry
    per distinct (handle, secondary attributes) in use; `allocated_at[ordinal]` is when
    an allocated address was handed out (unix seconds, from the caller's clock)."""

    cidr: str
    affinity: str | None = None
    strict_affinity: bool = False
    allocations: list[int | None] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    allocated_at: dict[int, int] = field(default_factory=dict)

    # --- construction and JSON -----------------------------------------------------------

    @classmethod
    def new(cls, cidr: str, host: str | None = None,
            strict_affinity: bool = False) -> AllocationBlock:
        net = ipaddress.ip_network(cidr, strict=True)
        return cls(str(net), None if host is None else AFFINITY_PREFIX + host,
                   strict_affinity, [None] * net.num_addresses,
                   list(range(net.num_addresses)), [])

    @classmethod
    def from_json(cls, data: Any) -> AllocationBlock:
        """Parse and check a stored block; ValueError when it is inconsistent."""
        if not isinstance(data, dict):
            raise ValueError("block must be a JSON object")
        net = ipaddress.ip_network(data["cidr"], strict=True)
        allocations = list(data.get("allocations") or [])
        unallocated = [int(o) for o in data.get("unallocated") or []]
        attributes = [dict(a) for a in data.get("attributes") or []]
        if len(allocations) != net.num_addresses:
            raise ValueError(f"block {net}: {len(allocations)} allocations for "
                             f"{net.num_addresses} addresses")
        for a in allocations:
            if a is not None and not (isinstance(a, int) and 0 <= a < len(attributes)):
                raise ValueError(f"block {net}: bad attribute index {a!r}")
        free = {i for i, a in enumerate(allocations) if a is None}
        if set(unallocated) != free or len(unallocated) != len(free):
            raise ValueError(f"block {net}: unallocated does not match allocations")
        affinity = data.get("affinity") or None
        if affinity is not None and not str(affinity).startswith(AFFINITY_PREFIX):
            raise ValueError(f"block {net}: bad affinity {affinity!r}")
        return cls(str(net), affinity, bool(data.get("strict_affinity", False)),
                   allocations, unallocated, attributes,
                   _parse_times(data.get("allocated_at"), allocations))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cidr": self.cidr, "affinity": self.affinity,
                                "strict_affinity": self.strict_affinity,
                                "allocations": self.allocations,
                                "unallocated": self.unallocated,
                                "attributes": self.attributes}
        if self.allocated_at:
            data["allocated_at"] = {str(o): t for o, t in sorted(self.allocated_at.items())}
        return data

    def copy(self) -> AllocationBlock:
        return AllocationBlock(self.cidr, self.affinity, self.strict_affinity,
                               list(self.allocations), list(self.unallocated),
                               [dict(a) for a in self.attributes], dict(self.allocated_at))

    # --- addresses -------------------------------------------------------------------------

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return _network(self.cidr)

    @property
    def version(self) -> int:
        return self.network.version

    @property
    def host(self) -> str | None:
        """The host the block is affine to, or None."""
        if self.affinity and self.affinity.startswith(AFFINITY_PREFIX):
            return self.affinity[len(AFFINITY_PREFIX):]
        return None

    def contains(self, ip: str | IPAddress) -> bool:
        addr = _addr(ip)
        return addr.version == self.version and addr in self.network

    def ordinal(self, ip: str | IPAddress) -> int:
        addr = _addr(ip)
        if not self.contains(addr):
            raise ValidationError("ip", str(ip), f"is not in block {self.cidr}")
        return int(addr) - int(self.network.network_address)

    def address(self, ordinal: int) -> str:
        if not 0 <= ordinal < len(self.allocations):
            raise ValidationError("ordinal", ordinal, f"is outside block {self.cidr}")
        return str(self.network.network_address + ordinal)

    # --- state -----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.allocations)

    @property
    def free_count(self) -> int:
        return len(self.unallocated)

    @property
    def allocated_count(self) -> int:
        return self.size - len(self.unallocated)

    def is_empty(self) -> bool:
        return not self.attributes and len(self.unallocated) == self.size

    def attributes_of(self, ip: str | IPAddress) -> tuple[str | None, Attributes] | None:
        """(handle, secondary attributes) of an allocated address; None if it is free."""
        index = self.allocations[self.ordinal(ip)]
        if index is None:
            return None
        attr = self.attributes[index]
        return attr.get("handle_id"), attr.get("secondary")

    def allocated(self) -> dict[str, str | None]:
        """Every allocated address -> its handle."""
        return {self.address(o): self.attributes[a].get("handle_id")
                for o, a in enumerate(self.allocations) if a is not None}

    def allocated_at_of(self, ip: str | IPAddress) -> int | None:
        """When an allocated address was handed out (unix seconds); None if that is not
        recorded or the address is free."""
        return self.allocated_at.get(self.ordinal(ip))

    def handle_counts(self) -> Counter[str]:
        """How many addresses each handle holds here (allocations without handle skipped)."""
        counts: Counter[str] = Counter()
        for a in self.allocations:
            if a is not None:
                handle = self.attributes[a].get("handle_id")
                if handle is not None:
                    counts[handle] += 1
        return counts

    # --- changes ----------------------------------------------------------------------------

    def may_allocate(self, host: str | None) -> bool:
        """Whether `host` may take addresses here: its own block, an unowned one, or
        (when the block is not strict) anybody's."""
        return not self.strict_affinity or self.affinity is None or self.host == host

    def allocate(self, num: int, handle_id: str | None, attributes: Attributes = None,
                 host: str | None = None, now: int | None = None) -> list[str]:
        """Take up to `num` free addresses for `handle_id` at time `now` (unix seconds;
        None: not recorded); returns those taken (maybe fewer, or none when the block is
        full or strictly another host's)."""
        if num <= 0 or not self.may_allocate(host):
            return []
        take = self.unallocated[:num]
        if not take:
            return []
        del self.unallocated[:len(take)]
        index = self._attr_index(handle_id, attributes)
        for o in take:
            self.allocations[o] = index
            if now is not None:
                self.allocated_at[o] = now
        return [self.address(o) for o in take]

    def assign(self, ip: str | IPAddress, handle_id: str | None,
               attributes: Attributes = None, now: int | None = None) -> str:
        """Allocate one given address at time `now` (as for `allocate`); raises
        `AddressInUse` if it is taken."""
        o = self.ordinal(ip)
        current = self.allocations[o]
        if current is not None:
            raise AddressInUse(self.address(o), self.attributes[current].get("handle_id"))
        self.unallocated.remove(o)
        self.allocations[o] = self._attr_index(handle_id, attributes)
        if now is not None:
            self.allocated_at[o] = now
        return self.address(o)

    def release(self, ips: Iterable[str | IPAddress]
                ) -> tuple[list[str], Counter[str], list[str]]:
        """Free the given addresses of this block.

        Returns (released, handle -> count released, unknown), where unknown are the
        addresses that were not allocated. Addresses outside the block are an error.
        """
        released: list[str] = []
        unknown: list[str] = []
        handles: Counter[str] = Counter()
        for ip in ips:
            o = self.ordinal(ip)
            index = self.allocations[o]
            if index is None:
                unknown.append(self.address(o))
                continue
            handle = self.attributes[index].get("handle_id")
            if handle is not None:
                handles[handle] += 1
            self.allocations[o] = None
            self.allocated_at.pop(o, None)
            self.unallocated.append(o)
            released.append(self.address(o))
        self._drop_unused_attributes()
        return released, handles, unknown

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Free every address of `handle_id`; returns them."""
        ips = [self.address(o) for o, a in enumerate(self.allocations)
               if a is not None and self.attributes[a].get("handle_id") == handle_id]
        self.release(ips)
        return ips

    def _attr_index(self, handle_id: str | None, attributes: Attributes) -> int:
        entry = {"handle_id": handle_id,
                 "secondary": None if attributes is None else dict(attributes)}
        for i, existing in enumerate(self.attributes):
            if existing == entry:
                return i
        self.attributes.append(entry)
        return len(self.attributes) - 1

    def _drop_unused_attributes(self) -> None:
        used = sorted({a for a in self.allocations if a is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if a is None else remap[a] for a in self.allocations]


def _parse_times(data: Any, allocations: list[int | None]) -> dict[int, int]:
    """`allocated_at` as stored, keeping only integer times of allocated ordinals (a bad
    entry only loses that address's age: it then counts as old)."""
    out: dict[int, int] = {}
    if not isinstance(data, dict):
        return out
    for key, value in data.items():
        try:
            o = int(key)
        except (TypeError, ValueError):
            continue
        if (0 <= o < len(allocations) and allocations[o] is not None
                and isinstance(value, int) and not isinstance(value, bool)):
            out[o] = value
    return out


@dataclass
class IPAMHandle:
    """A handle: the number of addresses it holds in each block, by block CIDR.

    JSON: `{"id": "<handle>", "block": {"<block cidr>": <count>}}`.
    """

    handle_id: str
    block: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> IPAMHandle:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError("handle must be an object with an id")
        counts = {str(k): int(v) for k, v in (data.get("block") or {}).items()}
        return cls(data["id"], counts)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.handle_id, "block": dict(sorted(self.block.items()))}

    def copy(self) -> IPAMHandle:
        return IPAMHandle(self.handle_id, dict(self.block))

    def add(self, cidr: str, count: int) -> None:
        """Add (or with a negative count, remove) addresses of block `cidr`."""
        new = self.block.get(cidr, 0) + count
        if new > 0:
            self.block[cidr] = new
        else:
            self.block.pop(cidr, None)

    @property
    def total(self) -> int:
        return sum(self.block.values())

    def is_empty(self) -> bool:
        return not self.block


def block_cidr_for(ip: str | IPAddress, block_size: int) -> str:
    """The CIDR of the block of size `block_size` (prefix length) holding `ip`."""
    addr = _addr(ip)
    return str(ipaddress.ip_network(f"{addr}/{block_size}", strict=False))
