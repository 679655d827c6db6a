"""The datastore as the trace sees it: one consistent read, looked up cheaply.

Owns: `Snapshot`, every key under `/calico/v1/` read at one revision (felix's own
config, endpoints of every host, profiles, tiers, policies, pools, node addresses), and
the lookups the trace needs, each costing a scan of key or value text before anything
is parsed: endpoints by name, endpoints holding an address (a value is parsed only when
its text contains the address), a host's endpoints and config, nodes' addresses (a
host's IPv6 address and the BGP address felix's all-hosts set holds live in the BGP
keys, read at the same revision only when asked for). Values are parsed
by felix's own parser (`felix.calc.parse.parse_update`), so what is invalid for felix
is invalid here.

Addresses are found in the canonical text libcalico writes (lower-case, compressed
IPv6); a value written by hand in another spelling is not found by address.

Leaves to others: what the values mean for the dataplane (`felix.calc`), choosing the
flow's endpoints (`felix.trace.places`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from felix.calc.parse import parse_update
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
    parsed = parse_update(key, raw)
    if parsed is None or not isinstance(parsed.key, keyspace.WorkloadEndpointKey
                                        | keyspace.HostEndpointKey):
        return None
    return Record(key, parsed.key, raw, parsed.value)


class Snapshot:
    """See the module docstring. State fields: `revision`; `host_items` (every key and
    value under /calico/v1/host/), `policy_items` (under /calico/v1/policy/),
    `pool_items` (under /calico/v1/ipam/), `global_config` (name -> text); `_store` (for
    the few lazy BGP reads; None for a snapshot built from items, which may then carry
    the BGP host keys itself)."""

    def __init__(self, items: Iterable[tuple[str, str]], revision: int = 0,
                 store: Datastore | None = None) -> None:
        self.revision = revision
        self._store = store
        self.host_items: list[tuple[str, str]] = []
        self.policy_items: list[tuple[str, str]] = []
        self.pool_items: list[tuple[str, str]] = []
        self.global_config: dict[str, str] = {}
        self._bgp: dict[str, str] | None = None
        bgp: dict[str, str] = {}
        self._holding: dict[str, list[Record]] = {}  # address -> endpoints (memo)
        self._heps: dict[str, list[Record]] = {}  # hostname -> host endpoints (memo)
        self._by_host: dict[str, list[tuple[str, str]]] | None = None  # hostname -> items
        for key, value in items:
            if key.startswith(keyspace.HOST_DIR):
                self.host_items.append((key, value))
            elif key.startswith(keyspace.POLICY_DIR):
                self.policy_items.append((key, value))
            elif key.startswith(keyspace.CONFIG_DIR):
                self.global_config[key[len(keyspace.CONFIG_DIR):]] = value
            elif key.startswith(keyspace.POOL_DIR):
                self.pool_items.append((key, value))
            elif key.startswith(keyspace.BGP_HOST_DIR):
                bgp[key] = value
        if bgp:
            self._bgp = bgp

    @classmethod
    def read(cls, store: Datastore) -> Snapshot:
        """Every key under /calico/v1/ in one consistent read."""
        items, revision = store.list_items(V1_DIR)
        return cls(items, revision, store)

    # ---- hosts -------------------------------------------------------------------------

    def items_of(self, hostname: str) -> list[tuple[str, str]]:
        """The keys and values under the host's directory."""
        if self._by_host is None:
            self._by_host = {}
            start = len(keyspace.HOST_DIR)
            for key, value in self.host_items:
                self._by_host.setdefault(key[start:key.find("/", start)], []).append(
                    (key, value))
        return self._by_host.get(hostname, [])

    def host_config(self, hostname: str) -> dict[str, str]:
        prefix = keyspace.host_config_dir(hostname)
        return {k[len(prefix):]: v for k, v in self.items_of(hostname) if k.startswith(prefix)}

    def hostnames(self) -> set[str]:
        self.items_of("")
        assert self._by_host is not None
        return set(self._by_host)

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
            for key, value in self.host_items:
                if value.strip() == address:
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
        addresses, valid or not for felix (an invalid one holds nothing)."""
        if address in self._holding:
            return self._holding[address]
        version = ipaddress.ip_address(address).version
        out = []
        for key, value in self.host_items:
            if address not in value:
                continue
            rec = _record(key, value)
            if rec is not None and address in rec.addresses(version):
                out.append(rec)
        self._holding[address] = out
        return out

    def workload_endpoints_named(self, name: str) -> list[Record]:
        """Workload endpoints named `WORKLOAD`, `WORKLOAD/ENDPOINT_ID` or
        `HOST/ORCHESTRATOR/WORKLOAD/ENDPOINT_ID`."""
        parts = name.split("/")
        out = []
        for key, value in self.host_items:
            if f"/{parts[-1]}" not in key:
                continue
            parsed = keyspace.parse_key(key)
            if not isinstance(parsed, keyspace.WorkloadEndpointKey):
                continue
            ident = (parsed.hostname, parsed.orchestrator, parsed.workload, parsed.endpoint_id)
            if ((len(parts) == 1 and parsed.workload == name)
                    or (len(parts) == 2 and (parsed.workload, parsed.endpoint_id) == tuple(parts))
                    or (len(parts) == 4 and ident == tuple(parts))):
                rec = _record(key, value)
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
        wanted = {keyspace.profile_dir(n) for n in names}
        return [(k, v) for k, v in self.policy_items
                if k.startswith(keyspace.PROFILE_DIR) and k[:k.rfind("/") + 1] in wanted]

    def tier_and_policy_items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.policy_items if k.startswith(keyspace.TIER_DIR)]
