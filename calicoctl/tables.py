"""Table layouts of `calicoctl get KIND`: the columns of each kind, plain and wide.

Owns: `table_for(kind, resources, wide)` -> (headers, rows), one layout per resource
kind. Pure: it only reads resource attributes.

Leaves to others: rendering (`calicoctl.output`), fetching (`libcalico.client`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Rows = list[tuple[Any, ...]]


def _order(o: float | None) -> str:
    if o is None:
        return "default"
    return str(int(o)) if float(o).is_integer() else str(o)


def _yes(flag: bool) -> str:
    return "true" if flag else "false"


def _join(items: Sequence[str], sep: str = ",") -> str:
    return sep.join(items)


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _pools(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["CIDR", "IPIP", "VXLAN", "NAT"] + (["DISABLED", "IPAM", "BLOCK SIZE"] if wide
                                                   else [])
    rows = [(p.cidr, p.ipip_mode if p.ipip else "never", p.vxlan_mode if p.vxlan else "never",
             _yes(p.nat_outgoing))
            + ((_yes(p.disabled), _yes(p.ipam), p.block_size) if wide else ()) for p in rs]
    return headers, rows


def _profiles(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["NAME", "TAGS"] + (["LABELS", "INBOUND RULES", "OUTBOUND RULES"] if wide else [])
    rows = [(p.name, _join(p.tags))
            + ((_labels(p.labels), len(p.rules.inbound), len(p.rules.outbound)) if wide
               else ()) for p in rs]
    return headers, rows


def _tiers(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    return ["NAME", "ORDER"], [(t.name, _order(t.order)) for t in rs]


def _policies(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["TIER", "NAME", "ORDER", "SELECTOR"] + (["INBOUND RULES", "OUTBOUND RULES"]
                                                      if wide else [])
    rows = [(p.tier, p.name, _order(p.order), p.selector)
            + ((len(p.inbound_rules), len(p.outbound_rules)) if wide else ()) for p in rs]
    return headers, rows


def _weps(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["HOSTNAME", "ORCHESTRATOR", "WORKLOAD", "NAME", "ADDRESSES"] + (
        ["INTERFACE", "MAC", "PROFILES", "STATE"] if wide else [])
    rows = [(e.hostname, e.orchestrator, e.workload, e.endpoint_id,
             _join((*e.ipv4_nets, *e.ipv6_nets)))
            + ((e.name, e.mac or "", _join(e.profile_ids), e.state) if wide else ())
            for e in rs]
    return headers, rows


def _heps(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["HOSTNAME", "NAME", "INTERFACE"] + (["EXPECTED IPS", "PROFILES"] if wide
                                                   else [])
    rows = [(e.hostname, e.endpoint_id, e.name or "")
            + ((_join((*e.expected_ipv4_addrs, *e.expected_ipv6_addrs)),
                _join(e.profile_ids)) if wide else ()) for e in rs]
    return headers, rows


def _nodes(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    headers = ["HOSTNAME", "IPV4", "IPV6", "ASN"] + (["RR CLUSTER ID", "LOGLEVEL"] if wide
                                                     else [])
    rows = [(n.hostname, n.ipv4 or "", n.ipv6 or "",
             "(global)" if n.as_num is None else n.as_num)
            + ((n.rr_cluster_id or "", n.loglevel or "") if wide else ()) for n in rs]
    return headers, rows


def _peers(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    return ["SCOPE", "PEER IP", "ASN"], [(p.hostname or "global", p.ip, p.as_num) for p in rs]


def _bgp(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    return (["ASN", "NODE MESH", "LOGLEVEL"],
            [(c.as_num, "on" if c.node_mesh else "off", c.loglevel) for c in rs])


def _felix(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    return (["SCOPE", "NAME", "VALUE"],
            [(c.scope_host or "global", k, v) for c in rs for k, v in c.values.items()])


def _ipam(rs: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    return (["STRICT AFFINITY", "AUTO ALLOCATE BLOCKS"],
            [(_yes(c.strict_affinity), _yes(c.auto_allocate_blocks)) for c in rs])


LAYOUTS: dict[str, Callable[[Sequence[Any], bool], tuple[list[str], Rows]]] = {
    "ipPool": _pools, "profile": _profiles, "tier": _tiers, "policy": _policies,
    "workloadEndpoint": _weps, "hostEndpoint": _heps, "node": _nodes, "bgpPeer": _peers,
    "bgpConfig": _bgp, "felixConfig": _felix, "ipamConfig": _ipam,
}


def table_for(kind: str, resources: Sequence[Any], wide: bool) -> tuple[list[str], Rows]:
    """(headers, rows) for `resources` of `kind` (a canonical KIND name)."""
    return LAYOUTS[kind](resources, wide)
