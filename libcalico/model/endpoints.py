"""Endpoint resources: workload endpoints (container interfaces) and host endpoints.

Owns: `WorkloadEndpoint` and `HostEndpoint` with their identities
(`WorkloadEndpointId`, `HostEndpointId`), validation (interface names, MACs,
/32 and /128 nets, gateways, profile ids, labels), the libcalico JSON shape and the
resource documents. Identity fields never appear in the JSON: they come from the
etcd key, so `from_json` takes the identity and the decoded value separately.

Leaves to others: the keys (`libcalico.keyspace`), creating interfaces and routes
(the CNI/Docker plugins and felix), and choosing addresses (IPAM).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from libcalico.errors import ValidationError
from libcalico.model.base import JSONDict, Resource
from libcalico.model.validate import (
    canonical_address,
    canonical_mac,
    canonical_net,
    check_keys,
    validate_id,
    validate_interface,
    validate_labels,
    validate_mapping,
    validate_name,
    validate_str_list,
)

__all__ = ["HostEndpoint", "HostEndpointId", "WorkloadEndpoint", "WorkloadEndpointId",
           "ENDPOINT_STATES"]

ENDPOINT_STATES = ("active", "inactive")


def _sort_ips(values: Iterable[str]) -> tuple[str, ...]:
    """Sort canonical addresses or nets numerically and drop duplicates."""
    return tuple(sorted(set(values), key=lambda v: ipaddress.ip_interface(v)))


def _host_nets(field_name: str, value: Any, version: int) -> tuple[str, ...]:
    nets = []
    maxlen = 32 if version == 4 else 128
    for item in validate_str_list(field_name, value):
        net = canonical_net(field_name, item, version)
        if not net.endswith(f"/{maxlen}"):
            raise ValidationError(field_name, item, f"only /{maxlen} nets are supported")
        nets.append(net)
    return _sort_ips(nets)


def _addresses(field_name: str, value: Any, version: int) -> tuple[str, ...]:
    return _sort_ips(canonical_address(field_name, a, version)
                     for a in validate_str_list(field_name, value))


def _profile_ids(value: Any) -> tuple[str, ...]:
    ids = [validate_name("profile_ids", p) for p in validate_str_list("profile_ids", value)]
    for p in ids:
        if ids.count(p) > 1:
            raise ValidationError("profile_ids", p, "listed more than once")
    return tuple(ids)


def _read_profile_ids(data: Mapping[str, Any]) -> tuple[str, ...]:
    """`profile_ids`, or the legacy single `profile_id` (None or absent: no profiles)."""
    if "profile_ids" in data:
        return _profile_ids(data["profile_ids"])
    legacy = data.get("profile_id")
    return () if legacy is None else _profile_ids([legacy])


@dataclass(frozen=True)
class WorkloadEndpointId:
    """Where a workload endpoint lives: the four parts of its key."""

    hostname: str
    orchestrator: str
    workload: str
    endpoint_id: str

    def __post_init__(self) -> None:
        validate_id("hostname", self.hostname)
        validate_id("orchestrator", self.orchestrator)
        validate_id("workload", self.workload)
        validate_id("endpoint_id", self.endpoint_id)


_WEP_KEYS = ("state", "name", "mac", "profile_ids", "profile_id", "labels", "ipv4_nets",
             "ipv6_nets", "ipv4_gateway", "ipv6_gateway")
_WEP_IDENT = ("hostname", "orchestrator", "workload", "endpoint_id")


@dataclass(frozen=True)
class WorkloadEndpoint(Resource):
    """A container's interface. `name` is the host-side interface (e.g. cali1234567890a)."""

    KIND = "workloadEndpoint"

    hostname: str
    orchestrator: str
    workload: str
    endpoint_id: str
    name: str
    state: str = "active"
    mac: str | None = None
    ipv4_nets: tuple[str, ...] = ()
    ipv6_nets: tuple[str, ...] = ()
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    profile_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        WorkloadEndpointId(self.hostname, self.orchestrator, self.workload, self.endpoint_id)
        validate_interface("name", self.name)
        if self.state not in ENDPOINT_STATES:
            raise ValidationError("state", self.state, "must be active or inactive")
        if self.mac is not None:
            put("mac", canonical_mac("mac", self.mac))
        put("ipv4_nets", _host_nets("ipv4_nets", self.ipv4_nets, 4))
        put("ipv6_nets", _host_nets("ipv6_nets", self.ipv6_nets, 6))
        if self.ipv4_gateway is not None:
            put("ipv4_gateway", canonical_address("ipv4_gateway", self.ipv4_gateway, 4))
        if self.ipv6_gateway is not None:
            put("ipv6_gateway", canonical_address("ipv6_gateway", self.ipv6_gateway, 6))
        put("profile_ids", _profile_ids(self.profile_ids))
        put("labels", validate_labels("labels", self.labels))

    @property
    def ident(self) -> WorkloadEndpointId:
        return WorkloadEndpointId(self.hostname, self.orchestrator, self.workload,
                                  self.endpoint_id)

    def to_json(self) -> JSONDict:
        """libcalico's shape; mac and gateways only when set."""
        out: JSONDict = {"state": self.state, "name": self.name}
        if self.mac is not None:
            out["mac"] = self.mac
        out["profile_ids"] = list(self.profile_ids)
        out["labels"] = dict(self.labels)
        out["ipv4_nets"] = list(self.ipv4_nets)
        out["ipv6_nets"] = list(self.ipv6_nets)
        if self.ipv4_gateway is not None:
            out["ipv4_gateway"] = self.ipv4_gateway
        if self.ipv6_gateway is not None:
            out["ipv6_gateway"] = self.ipv6_gateway
        return out

    @classmethod
    def from_json(cls, ident: WorkloadEndpointId, data: Any) -> WorkloadEndpoint:
        """Parse the JSON stored at `ident`'s key; accepts the legacy `profile_id`."""
        data = validate_mapping("workload endpoint", data)
        check_keys("workload endpoint", data, _WEP_KEYS)
        if "name" not in data:
            raise ValidationError("name", None, "a workload endpoint needs an interface name")
        return cls(ident.hostname, ident.orchestrator, ident.workload, ident.endpoint_id,
                   name=data["name"], state=data.get("state", "active"),
                   mac=data.get("mac") or None,
                   ipv4_nets=data.get("ipv4_nets") or (),
                   ipv6_nets=data.get("ipv6_nets") or (),
                   ipv4_gateway=data.get("ipv4_gateway") or None,
                   ipv6_gateway=data.get("ipv6_gateway") or None,
                   profile_ids=_read_profile_ids(data),
                   labels=data.get("labels") or {})

    def to_resource(self) -> JSONDict:
        return self._envelope({k: getattr(self, k) for k in _WEP_IDENT}, self.to_json())

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> WorkloadEndpoint:
        meta, spec = cls._unwrap(doc, _WEP_IDENT, _WEP_KEYS)
        ident = WorkloadEndpointId(*(meta.get(k, "") for k in _WEP_IDENT))
        return cls.from_json(ident, spec)


@dataclass(frozen=True)
class HostEndpointId:
    """Where a host endpoint lives: the two parts of its key."""

    hostname: str
    endpoint_id: str

    def __post_init__(self) -> None:
        validate_id("hostname", self.hostname)
        validate_id("endpoint_id", self.endpoint_id)


_HEP_KEYS = ("name", "expected_ipv4_addrs", "expected_ipv6_addrs", "profile_ids",
             "profile_id", "labels")
_HEP_IDENT = ("hostname", "endpoint_id")


@dataclass(frozen=True)
class HostEndpoint(Resource):
    """A host interface under policy: named by `name`, by expected addresses, or both."""

    KIND = "hostEndpoint"

    hostname: str
    endpoint_id: str
    name: str | None = None
    expected_ipv4_addrs: tuple[str, ...] = ()
    expected_ipv6_addrs: tuple[str, ...] = ()
    profile_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        HostEndpointId(self.hostname, self.endpoint_id)
        if self.name is not None:
            validate_interface("name", self.name)
        put("expected_ipv4_addrs", _addresses("expected_ipv4_addrs",
                                              self.expected_ipv4_addrs, 4))
        put("expected_ipv6_addrs", _addresses("expected_ipv6_addrs",
                                              self.expected_ipv6_addrs, 6))
        if self.name is None and not (self.expected_ipv4_addrs or self.expected_ipv6_addrs):
            raise ValidationError("name", None, "a host endpoint needs an interface name "
                                                "or an expected address")
        put("profile_ids", _profile_ids(self.profile_ids))
        put("labels", validate_labels("labels", self.labels))

    @property
    def ident(self) -> HostEndpointId:
        return HostEndpointId(self.hostname, self.endpoint_id)

    def to_json(self) -> JSONDict:
        out: JSONDict = {}
        if self.name is not None:
            out["name"] = self.name
        if self.expected_ipv4_addrs:
            out["expected_ipv4_addrs"] = list(self.expected_ipv4_addrs)
        if self.expected_ipv6_addrs:
            out["expected_ipv6_addrs"] = list(self.expected_ipv6_addrs)
        out["profile_ids"] = list(self.profile_ids)
        out["labels"] = dict(self.labels)
        return out

    @classmethod
    def from_json(cls, ident: HostEndpointId, data: Any) -> HostEndpoint:
        data = validate_mapping("host endpoint", data)
        check_keys("host endpoint", data, _HEP_KEYS)
        return cls(ident.hostname, ident.endpoint_id, name=data.get("name") or None,
                   expected_ipv4_addrs=data.get("expected_ipv4_addrs") or (),
                   expected_ipv6_addrs=data.get("expected_ipv6_addrs") or (),
                   profile_ids=_read_profile_ids(data),
                   labels=data.get("labels") or {})

    def to_resource(self) -> JSONDict:
        return self._envelope({k: getattr(self, k) for k in _HEP_IDENT}, self.to_json())

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> HostEndpoint:
        meta, spec = cls._unwrap(doc, _HEP_IDENT, _HEP_KEYS)
        return cls.from_json(HostEndpointId(meta.get("hostname", ""),
                                            meta.get("endpoint_id", "")), spec)
