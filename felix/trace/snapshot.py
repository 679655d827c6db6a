"""The datastore as the trace sees it: one consistent read, looked up cheaply.

Owns: `Snapshot`, the part of `/calico/v1/` a trace can need, read at one revision, and
the lookups the trace needs, each costing a scan of key or value bytes before anything
is parsed: endpoints by name, endpoints holding an address (a value is parsed only when
its bytes hold the address as a whole token), a host's endpoints and config, nodes'
addresses (a host's IPv6 address and the BGP address felix's all-hosts set holds live
in the BGP keys, read at the same revision only when asked for), the profiles asked
for. Values are parsed by felix's own parser (`felix.calc.parse.parse_update`), so what
is invalid for felix is invalid here.

`Snapshot.read` (the trace program) reads every key under `/calico/v1/host/` (endpoints
of every host, host config, node addresses: which endpoint holds an address is only in
the values) kept as etcd serialized them (`Datastore.list_encoded`: a value is decoded
only when a lookup needs it), then at that revision felix's global config, the tiers and
policies, the pools, and each profile when first asked for - not the thousands of
profile keys no endpoint of the flow uses. A snapshot built from items (tests) holds
what it is given.

Addresses are found in the canonical text libcalico writes (lower-case, compressed
IPv6); a value written by hand in another spelling is not found by address.

Leaves to others: what the values mean for the dataplane (`felix.calc`), choosing the
flow's endpoints (`felix.trace.places`).
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from libcalico import keyspace

if TYPE_CHECKING:
    from libcalico.datastore import Datastore

V1_DIR = keyspace.V1 + "/"


@dataclass(frozen=True)
class Record:
    """One stored endpoint: its key (raw and parsed), its raw value and felix's parse of
    it (`model` None when felix finds it invalid)."""

    key: str
    parsed: Any  # keyspace.WorkloadEndpointKey | keyspace.HostEndpointKey
    raw: str
    model: Any  # WorkloadEndpoint | HostEndpoint | None

    @property
    def is_workload(self) -> bool:
        return isinstance(self.parsed, keyspace.WorkloadEndpointKey)

    def addresses(self, version: int) -> tuple[str, ...]:
        """Plain addresses of this endpoint in `version` (nets or expected addresses)."""
        if self.model is None:
            return ()
        if self.is_workload:
            nets = self.model.ipv4_nets if version == 4 else self.model.ipv6_nets
            return tuple(n.split("/", 1)[0] for n in nets)
        return (self.model.expected_ipv4_addrs if version == 4
                else self.model.expected_ipv6_addrs)


def _record(key: str, raw: str) -> Record | None:
    from felix.calc.parse import parse_update  # felix's own parser (imported when used:
    # the read starts before felix's modules load, see felix.trace.main)

    parsed = parse_update(key, raw)
    if parsed is None or not isinstance(parsed.key, keyspace.WorkloadEndpointKey
                                        | keyspace.HostEndpointKey):
        return None
    return Record(key, parsed.key, raw, parsed.value)


def _plain(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _wire(data: bytes) -> str:
    from libcalico.etcdwire import kv_value

    return kv_value(data).decode("utf-8", "replace")


# Bytes that continue an address token: the address must not be part of a longer one.
_TOKEN = frozenset(b"0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ:.")


class Snapshot:
    """See the module docstring. State fields: `revision`; `_host` (key, data) of every
    key under /calico/v1/host/ - data the value's bytes, or the whole serialized
    KeyValue for a snapshot read from etcd (`_text` turns data into the value);
    `_policies` (key -> value under /calico/v1/policy/tier/), `_profiles` (profile name ->
    its items; complete for a snapshot built from items, filled as asked for by one read
    from etcd), `pool_items` (under /calico/v1/ipam/), `global_config` (name -> text);
    `_store` (for the lazy reads; None for a snapshot built from items, which may then
    carry the BGP host keys itself)."""

    def __init__(self, items: Iterable[tuple[str, str]], revision: int = 0,
                 store: Datastore | None = None) -> None:
        self.revision = revision
        self._store = store
        self._host: list[tuple[str, bytes]] = []
        self._text: Callable[[bytes], str] = _plain
        self._policies: dict[str, str] = {}
        self._profiles: dict[str, list[tuple[str, str]]] = {}
        self._profiles_complete = True  # every profile is in _profiles (or absent)
        self.pool_items: list[tuple[str, str]] = []
        self.global_config: dict[str, str] = {}
        self._bgp: dict[str, str] | None = None
        bgp: dict[str, str] = {}
        self._holding: dict[str, list[Record]] = {}  # address -> endpoints (memo)
        self._heps: dict[str, list[Record]] = {}  # hostname -> host endpoints (memo)
        self._by_host: dict[str, list[tuple[str, str]]] = {}  # hostname -> items (memo)
        self._keys: list[str] = []  # _host's keys, in order (items_of bisects them)
        self._joined: bytes | None = None  # _host's data joined by NUL (endpoints_holding)
        self._starts: list[int] = []  # where each entry's data starts in _joined
        for key, value in items:
            if key.startswith(keyspace.HOST_DIR):
                self._host.append((key, value.encode()))
            elif key.startswith(keyspace.PROFILE_DIR):
                name = key[len(keyspace.PROFILE_DIR):key.rfind("/")]
                self._profiles.setdefault(name, []).append((key, value))
            elif key.startswith(keyspace.TIER_DIR):
                self._policies[key] = value
            elif key.startswith(keyspace.CONFIG_DIR):
                self.global_config[key[len(keyspace.CONFIG_DIR):]] = value
            elif key.startswith(keyspace.POOL_DIR):
                self.pool_items.append((key, value))
            elif key.startswith(keyspace.BGP_HOST_DIR):
                bgp[key] = value
        if bgp:
            self._bgp = bgp
        self._host.sort(key=lambda entry: entry[0])
        self._keys = [key for key, _ in self._host]

    @classmethod
    def read(cls, store: Datastore) -> Snapshot:
        """What a trace can need (see the module docstring), read at one revision."""
        from libcalico.etcdwire import kv_key

        kvs, revision = store.list_encoded(keyspace.HOST_DIR)
        small: list[tuple[str, str]] = []
        for prefix in (keyspace.CONFIG_DIR, keyspace.TIER_DIR, keyspace.POOL_DIR):
            small += store.list_items(prefix, revision)[0]
        snapshot = cls(small, revision, store)
        snapshot._host = [(kv_key(kv).decode("utf-8", "replace"), kv) for kv in kvs]
        snapshot._keys = [key for key, _ in snapshot._host]  # etcd lists keys in order
        snapshot._text = _wire
        snapshot._profiles_complete = False
        return snapshot

    # ---- hosts -------------------------------------------------------------------------

    def items_of(self, hostname: str) -> list[tuple[str, str]]:
        """The keys and values under the host's directory (found by bisection: `_host`
        is in key order, as etcd lists it)."""
        if hostname not in self._by_host:
            prefix = f"{keyspace.HOST_DIR}{hostname}/"
            lo = bisect.bisect_left(self._keys, prefix)
            hi = bisect.bisect_left(self._keys, prefix[:-1] + chr(ord("/") + 1), lo)
            self._by_host[hostname] = [(k, self._text(d)) for k, d in self._host[lo:hi]]
        return self._by_host[hostname]

    def host_config(self, hostname: str) -> dict[str, str]:
        prefix = keyspace.host_config_dir(hostname)
        return {k[len(prefix):]: v for k, v in self.items_of(hostname) if k.startswith(prefix)}

    def hostnames(self) -> set[str]:
        start = len(keyspace.HOST_DIR)
        return {key[start:key.find("/", start)] for key, _ in self._host}

    def node_address(self, hostname: str, version: int) -> str | None:
        """The node's registered address (`bird_ip`, or its BGP ip_addr_v6)."""
        if version == 4:
            key = keyspace.host_bird_ip_key(hostname)
            return next((v.strip() for k, v in self.items_of(hostname) if k == key), None)
        value = self._bgp_values().get(keyspace.bgp_host_key(hostname, "ip_addr_v6"))
        return value.strip() if value else None

    def host_of_node_address(self, address: str) -> str | None:
        """The host whose registered node address is `address`."""
        if ipaddress.ip_address(address).version == 4:
            needle = address.encode()
            for key, data in self._host:
                if key.endswith("/bird_ip") and needle in data \
                        and self._text(data).strip() == address:
                    parsed = keyspace.parse_key(key)
                    if isinstance(parsed, keyspace.HostBirdIPKey):
                        return parsed.hostname
            return None
        for key, value in self._bgp_values().items():
            parsed = keyspace.parse_key(key)
            if (isinstance(parsed, keyspace.BGPHostKey) and parsed.name == "ip_addr_v6"
                    and value.strip() == address):
                return parsed.hostname
        return None

    def node_address_items(self, addresses: Iterable[str]) -> list[tuple[str, str]]:
        """The BGP keys (`ip_addr_v4`) of the nodes registered with one of `addresses`:
        felix's all-hosts set holds exactly these of them."""
        wanted = set(addresses)
        out = []
        for key, value in self._bgp_values().items():
            if value.strip() not in wanted:
                continue
            parsed = keyspace.parse_key(key)
            if isinstance(parsed, keyspace.BGPHostKey) and parsed.name == "ip_addr_v4":
                out.append((key, value))
        return out

    def _bgp_values(self) -> dict[str, str]:
        if self._bgp is None:
            self._bgp = {}
            if self._store is not None:
                kvs, _ = self._store.list(keyspace.BGP_HOST_DIR, self.revision)
                self._bgp = {kv.key: kv.value for kv in kvs}
        return self._bgp

    # ---- endpoints ---------------------------------------------------------------------

    def endpoints_holding(self, address: str) -> list[Record]:
        """Every endpoint (workload or host, any host) with `address` among its
        addresses, valid or not for felix (an invalid one holds nothing). A value is
        parsed only when its bytes hold `address` as a whole token (not inside a longer
        address: 198.19.0.1 is not in 198.19.0.10/32)."""
        if address in self._holding:
            return self._holding[address]
        version = ipaddress.ip_address(address).version
        if self._joined is None:  # every entry's data in one buffer: one find per hit
            self._starts = list(itertools.accumulate(
                (len(data) + 1 for _, data in self._host), initial=0))
            self._joined = b"\0".join(data for _, data in self._host)
        buf, needle = self._joined, address.encode()
        candidates: list[int] = []
        pos = buf.find(needle)
        while pos >= 0:
            end = pos + len(needle)
            if (pos == 0 or buf[pos - 1] not in _TOKEN) and \
                    (end == len(buf) or buf[end] not in _TOKEN):
                index = bisect.bisect_right(self._starts, pos) - 1
                if not candidates or candidates[-1] != index:
                    candidates.append(index)
            pos = buf.find(needle, end)
        out = []
        for index in candidates:
            key, data = self._host[index]
            rec = _record(key, self._text(data))
            if rec is not None and address in rec.addresses(version):
                out.append(rec)
        self._holding[address] = out
        return out

    def workload_endpoints_named(self, name: str) -> list[Record]:
        """Workload endpoints named `WORKLOAD`, `WORKLOAD/ENDPOINT_ID` or
        `HOST/ORCHESTRATOR/WORKLOAD/ENDPOINT_ID`."""
        parts = name.split("/")
        out = []
        for key, data in self._host:
            if f"/{parts[-1]}" not in key:
                continue
            parsed = keyspace.parse_key(key)
            if not isinstance(parsed, keyspace.WorkloadEndpointKey):
                continue
            ident = (parsed.hostname, parsed.orchestrator, parsed.workload, parsed.endpoint_id)
            if ((len(parts) == 1 and parsed.workload == name)
                    or (len(parts) == 2 and (parsed.workload, parsed.endpoint_id) == tuple(parts))
                    or (len(parts) == 4 and ident == tuple(parts))):
                rec = _record(key, self._text(data))
                if rec is not None:
                    out.append(rec)
        return out

    def host_endpoints(self, hostname: str) -> list[Record]:
        """The host endpoints of `hostname` (valid or not)."""
        if hostname not in self._heps:
            recs = (_record(k, v) for k, v in self.items_of(hostname)
                    if isinstance(keyspace.parse_key(k), keyspace.HostEndpointKey))
            self._heps[hostname] = [r for r in recs if r is not None]
        return self._heps[hostname]

    def workload_endpoints_on(self, hostname: str, ifname: str) -> list[Record]:
        """The workload endpoints of `hostname` whose value names interface `ifname`
        (several may claim one interface; felix picks one)."""
        quoted = f'"{ifname}"'
        out = []
        for key, value in self.items_of(hostname):
            if quoted in value:
                rec = _record(key, value)
                if rec is not None and rec.model is not None and rec.model.name == ifname:
                    out.append(rec)
        return out

    # ---- policy ------------------------------------------------------------------------

    def profile_items(self, names: Iterable[str]) -> list[tuple[str, str]]:
        """The keys (rules, tags, labels) of the named profiles."""
        out = []
        for name in sorted(set(names)):
            if name not in self._profiles and not self._profiles_complete \
                    and self._store is not None:
                prefix = keyspace.profile_dir(name)
                items, _ = self._store.list_items(prefix, self.revision)
                self._profiles[name] = [(k, v) for k, v in items if "/" not in k[len(prefix):]]
            out += self._profiles.get(name, [])
        return sorted(out)  # in key order, as etcd lists them

    def tier_and_policy_items(self) -> list[tuple[str, str]]:
        return list(self._policies.items())

    def policy_value(self, key: str) -> str | None:
        """The stored value of a policy or (already read) profile key."""
        if key in self._policies:
            return self._policies[key]
        if key.startswith(keyspace.PROFILE_DIR):
            name = key[len(keyspace.PROFILE_DIR):key.rfind("/")]
            return next((v for k, v in self.profile_items([name]) if k == key), None)
        return None
