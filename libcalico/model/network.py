"""Network and configuration resources: IP pools, nodes, BGP peers and settings,
felix configuration and IPAM configuration.

Owns: `IPPool`, `Node`, `BGPPeer`, `BGPGlobalConfig`, `FelixConfig`, `IPAMConfig`,
their validation, their Calico v1 JSON and their resource documents, and
`parse_as_num` (plain "64512" and asdot "1.10" AS numbers).

Leaves to others: the keys (`libcalico.keyspace`): several of these are stored as
one etcd key per field (a node's BGP settings, the global BGP settings, felix
parameters), so their `to_json` returns one entry per key and the datastore layer
writes each entry. Felix's own parameter table validates felix config values;
here they are only names and strings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.base import JSONDict, Resource
from libcalico.model.tunnel import ENCAP_MODES, IPIP, IPIP_INTERFACE, VXLAN, VXLAN_INTERFACE
from libcalico.model.validate import (
    canonical_address,
    canonical_mac,
    canonical_net,
    check_keys,
    is_decimal,
    validate_bool,
    validate_id,
    validate_int,
    validate_mapping,
)

__all__ = ["BGPGlobalConfig", "BGPPeer", "FelixConfig", "IPAMConfig", "IPPool", "Node",
           "BGP_LOGLEVELS", "DEFAULT_AS_NUM", "NODE_KEYS", "NODE_RUNTIME_FIELDS",
           "parse_as_num"]

AS_MAX = 4294967295
DEFAULT_AS_NUM = 64512
BGP_LOGLEVELS = ("none", "debug", "info")
_FELIX_NAME_RE = re.compile(r"^[A-Za-z0-9]+\Z")


def parse_as_num(field_name: str, value: Any) -> int:
    """An AS number, 0..4294967295, from an int, "64512" (asplain) or "1.10" (asdot)."""
    if isinstance(value, str) and "." in value:
        high, _, low = value.strip().partition(".")
        if not (is_decimal(high) and is_decimal(low) and int(high) <= 65535
                and int(low) <= 65535):
            raise ValidationError(field_name, value,
                                  "asdot AS numbers are two numbers from 0 to 65535")
        return int(high) * 65536 + int(low)
    return validate_int(field_name, value, 0, AS_MAX)


def _loglevel(field_name: str, value: Any) -> str:
    if value not in BGP_LOGLEVELS:
        raise ValidationError(field_name, value, f"must be one of {', '.join(BGP_LOGLEVELS)}")
    return str(value)


def _optional(data: Mapping[str, Any], key: str) -> Any:
    """A value that may be absent, null or "" (all meaning unset)."""
    value = data.get(key)
    return None if value in (None, "") else value


# --- IP pools ----------------------------------------------------------------------------

_POOL_SPEC = ("ipip", "ipip_mode", "vxlan", "vxlan_mode", "nat_outgoing", "disabled", "ipam",
              "block_size")


def _encap_device(field_name: str, value: Any) -> bool:
    """`"ipip": "tunl0"` / `"vxlan": "vxlan.calico"` (or a boolean) in pool JSON."""
    if not isinstance(value, str | bool | None):
        raise ValidationError(field_name, value, "must be an interface name")
    return bool(value)


@dataclass(frozen=True)
class IPPool(Resource):
    """An IP pool. `block_size` is resolved on construction (26 for IPv4, 122 for IPv6).

    Encapsulation: at most one of `ipip` and `vxlan` (IPv4 pools only), each with a mode,
    `always` (every packet between hosts is encapsulated) or `cross-subnet` (only packets
    to hosts outside this host's subnet). A mode other than `always` without its
    encapsulation is an error."""

    KIND = "ipPool"

    cidr: str
    ipip: bool = False
    nat_outgoing: bool = False
    disabled: bool = False
    ipam: bool = True
    block_size: int | None = None
    ipip_mode: str = "always"
    vxlan: bool = False
    vxlan_mode: str = "always"

    def __post_init__(self) -> None:
        cidr = canonical_net("cidr", self.cidr, strict=True)
        object.__setattr__(self, "cidr", cidr)
        for name in ("ipip", "vxlan", "nat_outgoing", "disabled", "ipam"):
            validate_bool(name, getattr(self, name))
        for name, on in (("ipip", self.ipip), ("vxlan", self.vxlan)):
            mode = getattr(self, f"{name}_mode")
            if mode not in ENCAP_MODES:
                raise ValidationError(f"{name}_mode", mode,
                                      f"must be one of {', '.join(ENCAP_MODES)}")
            if mode != "always" and not on:
                raise ValidationError(f"{name}_mode", mode, f"needs {name} to be on")
            if on and self.version != 4:
                raise ValidationError(name, on, f"{name.upper()} is only supported for "
                                      "IPv4 pools")
        if self.ipip and self.vxlan:
            raise ValidationError("vxlan", self.vxlan, "a pool uses at most one "
                                  "encapsulation: ipip and vxlan are exclusive")
        net = ipaddress.ip_network(cidr)
        size = self.default_block_size if self.block_size is None else self.block_size
        validate_int("block_size", size, net.prefixlen, net.max_prefixlen)
        object.__setattr__(self, "block_size", size)

    @property
    def version(self) -> int:
        return 6 if ":" in self.cidr else 4

    @property
    def default_block_size(self) -> int:
        return 26 if self.version == 4 else 122

    @property
    def encapsulation(self) -> str | None:
        """"vxlan", "ipip" or None (workloads reached by plain routes, announced by BGP)."""
        return VXLAN if self.vxlan else IPIP if self.ipip else None

    @property
    def encap_mode(self) -> str | None:
        """The mode of the pool's encapsulation; None without one."""
        return self.vxlan_mode if self.vxlan else self.ipip_mode if self.ipip else None

    def to_json(self) -> JSONDict:
        """Calico v1 pool JSON: optional keys only when they differ from the default."""
        out: JSONDict = {"cidr": self.cidr}
        if self.ipip:
            out["ipip"] = IPIP_INTERFACE
            if self.ipip_mode != "always":
                out["ipip_mode"] = self.ipip_mode
        if self.vxlan:
            out["vxlan"] = VXLAN_INTERFACE
            if self.vxlan_mode != "always":
                out["vxlan_mode"] = self.vxlan_mode
        if self.nat_outgoing:
            out["masquerade"] = True
        if not self.ipam:
            out["ipam"] = False
        if self.disabled:
            out["disabled"] = True
        if self.block_size != self.default_block_size:
            out["block_size"] = self.block_size
        return out

    @classmethod
    def from_json(cls, data: Any) -> IPPool:
        data = validate_mapping("ip pool", data)
        check_keys("ip pool", data, ("cidr", "ipip", "ipip_mode", "vxlan", "vxlan_mode",
                                     "masquerade", "ipam", "disabled", "block_size"))
        return cls(data.get("cidr", ""),
                   ipip=_encap_device("ipip", data.get("ipip")),
                   ipip_mode=data.get("ipip_mode") or "always",
                   vxlan=_encap_device("vxlan", data.get("vxlan")),
                   vxlan_mode=data.get("vxlan_mode") or "always",
                   nat_outgoing=data.get("masquerade", False),
                   disabled=data.get("disabled", False),
                   ipam=data.get("ipam", True),
                   block_size=data.get("block_size"))

    def to_resource(self) -> JSONDict:
        spec: JSONDict = {}
        if self.ipip:
            spec.update(ipip=True, ipip_mode=self.ipip_mode)
        if self.vxlan:
            spec.update(vxlan=True, vxlan_mode=self.vxlan_mode)
        for name in ("nat_outgoing", "disabled"):
            if getattr(self, name):
                spec[name] = True
        if not self.ipam:
            spec["ipam"] = False
        if self.block_size != self.default_block_size:
            spec["block_size"] = self.block_size
        return self._envelope({"cidr": self.cidr}, spec)

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> IPPool:
        meta, spec = cls._unwrap(doc, ("cidr",), _POOL_SPEC)
        return cls(meta.get("cidr", ""), **spec)


# --- nodes and BGP -------------------------------------------------------------------------

# Attribute -> the key under /calico/bgp/v1/host/<host>/ that stores it (one plain string
# per key). `network_v4` is the subnet of the node's IPv4 address (the name Calico's
# v1 compatibility layer used); the tunnel fields are written by the node itself.
NODE_KEYS = {"ipv4": "ip_addr_v4", "ipv6": "ip_addr_v6", "as_num": "as_num",
             "rr_cluster_id": "rr_cluster_id", "loglevel": "loglevel",
             "ipv4_network": "network_v4", "vxlan_tunnel_addr": "vxlan_tunnel_addr_v4",
             "vxlan_tunnel_mac": "vxlan_tunnel_mac", "ipip_tunnel_addr": "ipip_tunnel_addr_v4"}
# The fields a node writes about itself at run time (its tunnels): writes of the whole
# node (start-up, `calicoctl apply`) leave them as stored unless they set them.
NODE_RUNTIME_FIELDS = ("vxlan_tunnel_addr", "vxlan_tunnel_mac", "ipip_tunnel_addr")


def _split_interface(field_name: str, value: str) -> tuple[str, str]:
    """"198.18.1.1/24" -> ("198.18.1.1", "198.18.1.0/24")."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValidationError(field_name, value, "not a valid IP address or "
                              "address/prefix length") from None
    if iface.version != 4:
        raise ValidationError(field_name, value, "must be an IPv4 address")
    if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address,
                                                      iface.network.broadcast_address):
        raise ValidationError(field_name, value, "is the address of the network itself "
                              "(or its broadcast), not of a host")
    return str(iface.ip), str(iface.network)


@dataclass(frozen=True)
class Node(Resource):
    """A node: its BGP identity (addresses, AS, route reflection, log level), the subnet
    of its IPv4 address (`ipv4_network`, for cross-subnet encapsulation) and its tunnel
    endpoints (VXLAN address and MAC, IPIP address), which the node records itself.

    `as_num` None means the global default AS; `loglevel` None the global BGP log level.
    `ipv4` may be given as "address/prefix length", which sets `ipv4_network` too."""

    KIND = "node"

    hostname: str
    ipv4: str | None = None
    ipv6: str | None = None
    as_num: int | None = None
    rr_cluster_id: str | None = None
    loglevel: str | None = None
    ipv4_network: str | None = None
    vxlan_tunnel_addr: str | None = None
    vxlan_tunnel_mac: str | None = None
    ipip_tunnel_addr: str | None = None

    def __post_init__(self) -> None:
        validate_id("hostname", self.hostname)
        if isinstance(self.ipv4, str) and "/" in self.ipv4:
            ip, network = _split_interface("ipv4", self.ipv4)
            if self.ipv4_network is not None and canonical_net(
                    "ipv4_network", self.ipv4_network, 4) != network:
                raise ValidationError("ipv4_network", self.ipv4_network,
                                      f"differs from the network of ipv4 {self.ipv4}")
            object.__setattr__(self, "ipv4", ip)
            object.__setattr__(self, "ipv4_network", network)
        if self.ipv4 is not None:
            object.__setattr__(self, "ipv4", canonical_address("ipv4", self.ipv4, 4))
        if self.ipv6 is not None:
            object.__setattr__(self, "ipv6", canonical_address("ipv6", self.ipv6, 6))
        if self.as_num is not None:
            object.__setattr__(self, "as_num", parse_as_num("as_num", self.as_num))
        if self.rr_cluster_id is not None:
            object.__setattr__(self, "rr_cluster_id",
                               canonical_address("rr_cluster_id", self.rr_cluster_id, 4))
        if self.loglevel is not None:
            _loglevel("loglevel", self.loglevel)
        if self.ipv4_network is not None:
            object.__setattr__(self, "ipv4_network",
                               canonical_net("ipv4_network", self.ipv4_network, 4))
        for name in ("vxlan_tunnel_addr", "ipip_tunnel_addr"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, canonical_address(name, getattr(self, name), 4))
        if self.vxlan_tunnel_mac is not None:
            object.__setattr__(self, "vxlan_tunnel_mac",
                               canonical_mac("vxlan_tunnel_mac", self.vxlan_tunnel_mac))

    def check_consistent(self) -> Node:
        """Cross-field checks for input from users (stored values are taken field by
        field): the IPv4 address lies in `ipv4_network`."""
        if (self.ipv4 is not None and self.ipv4_network is not None
                and ipaddress.ip_address(self.ipv4) not in ipaddress.ip_network(
                    self.ipv4_network)):
            raise ValidationError("ipv4_network", self.ipv4_network,
                                  f"does not contain the node's IPv4 address {self.ipv4}")
        return self

    def to_json(self) -> dict[str, str]:
        """One string per `/calico/bgp/v1/host/<host>/<key>` key (`NODE_KEYS`), only for
        set fields."""
        out: dict[str, str] = {}
        for attr, key in NODE_KEYS.items():
            value = getattr(self, attr)
            if value is not None:
                out[key] = str(value)
        return out

    @classmethod
    def from_json(cls, hostname: str, data: Any) -> Node:
        """Parse the per-key values; absent keys and "" mean unset."""
        data = validate_mapping("node", data)
        check_keys("node", data, NODE_KEYS.values())
        return cls(hostname, **{attr: _optional(data, key) for attr, key in NODE_KEYS.items()})

    def to_resource(self) -> JSONDict:
        spec: JSONDict = {k: getattr(self, k) for k in NODE_KEYS
                          if getattr(self, k) is not None}
        return self._envelope({"hostname": self.hostname}, spec)

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> Node:
        meta, spec = cls._unwrap(doc, ("hostname",), NODE_KEYS)
        return cls(meta.get("hostname", ""), **spec).check_consistent()


@dataclass(frozen=True)
class BGPPeer(Resource):
    """A BGP peer: global when `hostname` is None, otherwise for that node only."""

    KIND = "bgpPeer"

    ip: str
    as_num: int
    hostname: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", canonical_address("ip", self.ip))
        object.__setattr__(self, "as_num", parse_as_num("as_num", self.as_num))
        if self.hostname is not None:
            validate_id("hostname", self.hostname)

    @property
    def version(self) -> int:
        return 6 if ":" in self.ip else 4

    def to_json(self) -> JSONDict:
        """`{"ip": "...", "as_num": "64512"}`: the AS is a string, as Calico v1 wrote it."""
        return {"ip": self.ip, "as_num": str(self.as_num)}

    @classmethod
    def from_json(cls, data: Any, hostname: str | None = None) -> BGPPeer:
        data = validate_mapping("bgp peer", data)
        check_keys("bgp peer", data, ("ip", "as_num"))
        if "as_num" not in data:
            raise ValidationError("as_num", None, "a BGP peer needs an AS number")
        return cls(data.get("ip", ""), data["as_num"], hostname)

    def to_resource(self) -> JSONDict:
        meta: JSONDict = {"ip": self.ip}
        if self.hostname is not None:
            meta["hostname"] = self.hostname
        return self._envelope(meta, {"as_num": self.as_num})

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> BGPPeer:
        meta, spec = cls._unwrap(doc, ("ip", "hostname"), ("as_num",))
        if "as_num" not in spec:
            raise ValidationError("as_num", None, "a BGP peer needs an AS number")
        return cls(meta.get("ip", ""), spec["as_num"], meta.get("hostname"))


@dataclass(frozen=True)
class BGPGlobalConfig(Resource):
    """Cluster-wide BGP settings: default AS, full node-to-node mesh, BIRD log level."""

    KIND = "bgpConfig"

    as_num: int = DEFAULT_AS_NUM
    node_mesh: bool = True
    loglevel: str = "info"

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_num", parse_as_num("as_num", self.as_num))
        validate_bool("node_mesh", self.node_mesh)
        _loglevel("loglevel", self.loglevel)

    def to_json(self) -> JSONDict:
        """One value per `/calico/bgp/v1/global/<key>` key: as_num (a string), node_mesh
        (`{"enabled": bool}`, stored as JSON text) and loglevel (a string)."""
        return {"as_num": str(self.as_num), "node_mesh": {"enabled": self.node_mesh},
                "loglevel": self.loglevel}

    @classmethod
    def from_json(cls, data: Any) -> BGPGlobalConfig:
        """Parse the per-key values; a missing key takes its default."""
        data = validate_mapping("bgp config", data)
        check_keys("bgp config", data, ("as_num", "node_mesh", "loglevel"))
        mesh = data.get("node_mesh", True)
        if isinstance(mesh, Mapping):
            check_keys("node_mesh", mesh, ("enabled",))
            mesh = mesh.get("enabled", True)
        as_num = _optional(data, "as_num")
        loglevel = _optional(data, "loglevel")
        return cls(DEFAULT_AS_NUM if as_num is None else as_num, mesh,
                   "info" if loglevel is None else loglevel)

    def to_resource(self) -> JSONDict:
        return self._envelope({}, {"as_num": self.as_num, "node_mesh": self.node_mesh,
                                   "loglevel": self.loglevel})

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> BGPGlobalConfig:
        _, spec = cls._unwrap(doc, (), ("as_num", "node_mesh", "loglevel"))
        return cls(**spec)


# --- felix and IPAM configuration ------------------------------------------------------------

def _felix_value(name: str, value: Any) -> str:
    """Felix config values are strings; YAML scalars (numbers, booleans) are converted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValidationError(name, value, "must be a string")
    return value


@dataclass(frozen=True)
class FelixConfig(Resource):
    """Felix parameters, global (`scope_host` None) or for one host; names key-sorted."""

    KIND = "felixConfig"

    scope_host: str | None = None
    values: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.scope_host is not None:
            validate_id("hostname", self.scope_host)
        values = validate_mapping("values", self.values)
        for name, value in values.items():
            if not isinstance(name, str) or not _FELIX_NAME_RE.match(name):
                raise ValidationError("felix config name", name, "must be letters and digits")
            if not isinstance(value, str):
                raise ValidationError(name, value, "must be a string")
        object.__setattr__(self, "values", dict(sorted(values.items())))

    def to_json(self) -> dict[str, str]:
        """One string per `/calico/v1/[host/<host>/]config/<name>` key."""
        return dict(self.values)

    @classmethod
    def from_json(cls, scope_host: str | None, data: Any) -> FelixConfig:
        return cls(scope_host, validate_mapping("felix config", data))

    def to_resource(self) -> JSONDict:
        meta = {} if self.scope_host is None else {"hostname": self.scope_host}
        return self._envelope(meta, dict(self.values))

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> FelixConfig:
        meta, spec = cls._unwrap(doc, ("hostname",), None)
        return cls(meta.get("hostname"),
                   {str(k): _felix_value(str(k), v) for k, v in spec.items()})


@dataclass(frozen=True)
class IPAMConfig(Resource):
    """IPAM settings: strict host affinity, and whether hosts claim new blocks."""

    KIND = "ipamConfig"

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True

    def __post_init__(self) -> None:
        validate_bool("strict_affinity", self.strict_affinity)
        validate_bool("auto_allocate_blocks", self.auto_allocate_blocks)

    def to_json(self) -> JSONDict:
        return {"strict_affinity": self.strict_affinity,
                "auto_allocate_blocks": self.auto_allocate_blocks}

    @classmethod
    def from_json(cls, data: Any) -> IPAMConfig:
        data = validate_mapping("ipam config", data)
        check_keys("ipam config", data, ("strict_affinity", "auto_allocate_blocks"))
        return cls(**data)

    def to_resource(self) -> JSONDict:
        return self._envelope({}, self.to_json())

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> IPAMConfig:
        _, spec = cls._unwrap(doc, (), ("strict_affinity", "auto_allocate_blocks"))
        return cls(**spec)
