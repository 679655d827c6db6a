"""One host's BGP configuration, calculated from the cluster-wide view.

Owns: the session topology seen from one host (the node-to-node mesh, route reflection,
global and node-specific peers, iBGP or eBGP by AS numbers), the stable protocol names
that keep a reconfigure from restarting unchanged sessions, and the prefixes the host
announces (its affine blocks as aggregates, the addresses it holds in other hosts'
blocks, all inside the pools and outside the encapsulated ones). Pure:
`calculate_host_config(view, hostname)`.

Rules (docs/confd.md has the operator's version):
- Node-to-node sessions are named `Mesh_<peer ip>` whether they come from the full mesh
  or, with the mesh off, from route reflection; so once the reflectors are named,
  switching the mesh off keeps the sessions between clients and reflectors up.
- Mesh on: a session to every other node that has an address of the same family.
  Mesh off: a reflector peers with every other node; a client only with reflectors.
  A reflector marks sessions to non-reflectors in its own AS `rr client`.
- Then node-specific peers (`Node_<ip>`), then global peers (`Global_<ip>`); an address
  gets one session (the first of mesh, node, global) and never our own address.
- Pools with an encapsulation (VXLAN, IPIP) belong to felix, which routes their blocks
  through the tunnels (or, cross-subnet, plainly) from the blocks in etcd: BIRD neither
  announces them nor programs routes to them into the kernel, so the two never hold
  routes to the same prefix (see docs/architecture.md, "Who owns which route").

Leaves to others: the text of BIRD's configuration (`confd.render` and the templates).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from confd.view import BGPView
from libcalico.errors import ValidationError
from libcalico.model.network import Node


@dataclass(frozen=True)
class Session:
    """One `protocol bgp` in the rendered configuration."""

    name: str
    kind: str  # "mesh", "node" or "global"
    version: int
    peer_ip: str
    peer_as: int
    local_ip: str
    rr_client: bool = False
    description: str = ""

    @property
    def external(self) -> bool:
        """Configured peers (not Calico nodes): their imports are limited to the pools."""
        return self.kind != "mesh"


@dataclass(frozen=True)
class HostConfig:
    """Everything the templates need for one host. Tuples are in address order."""

    hostname: str
    router_id: str | None
    local_as: int
    ipv4: str | None
    ipv6: str | None
    rr_cluster_id: str | None
    loglevel: str  # none, debug or info
    mesh_enabled: bool
    pools_v4: tuple[str, ...]
    pools_v6: tuple[str, ...]
    encap_pools_v4: tuple[str, ...]  # VXLAN and IPIP pools: felix routes them, not BIRD
    blocks_v4: tuple[str, ...]
    blocks_v6: tuple[str, ...]
    borrowed_v4: tuple[str, ...]
    borrowed_v6: tuple[str, ...]
    sessions: tuple[Session, ...]
    custom_filters_v4: tuple[str, ...]
    custom_filters_v6: tuple[str, ...]
    notes: tuple[str, ...]  # peers left out, and why (rendered as comments)


def protocol_name(kind: str, ip: str) -> str:
    """`Mesh_198_18_0_2`, `Global_fd00__1`: a BIRD symbol that depends only on the peer."""
    prefix = {"mesh": "Mesh", "node": "Node", "global": "Global"}[kind]
    addr = str(ipaddress.ip_address(ip))
    return f"{prefix}_{addr.replace('.', '_').replace(':', '_')}"


def _in_pools(cidr: str, pools: tuple[str, ...]) -> bool:
    net = ipaddress.ip_network(cidr)
    return any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
               for p in map(ipaddress.ip_network, pools))


def _node_as(view: BGPView, node: Node) -> int:
    return node.as_num if node.as_num is not None else view.global_as


def _address(node: Node, version: int) -> str | None:
    return node.ipv4 if version == 4 else node.ipv6


def calculate_host_config(view: BGPView, hostname: str) -> HostConfig:
    """The configuration of `hostname`; a ValidationError if it has no BGP address."""
    me = view.nodes.get(hostname)
    if me is None or (me.ipv4 is None and me.ipv6 is None):
        raise ValidationError("hostname", hostname,
                              "has no BGP address in the datastore (ip_addr_v4/ip_addr_v6)")
    local_as = _node_as(view, me)
    notes: list[str] = []
    sessions: list[Session] = []
    taken: set[str] = {a for a in (me.ipv4, me.ipv6) if a}

    def add(kind: str, peer_ip: str, peer_as: int, rr_client: bool, description: str) -> None:
        version = ipaddress.ip_address(peer_ip).version
        local_ip = _address(me, version)
        who = f"{kind} peer {peer_ip}" + (f" ({description})" if kind == "mesh" else "")
        if peer_ip in taken:
            notes.append(f"{who}: "
                         + ("our own address" if peer_ip in (me.ipv4, me.ipv6)
                            else "already has a session"))
            return
        if local_ip is None:
            notes.append(f"{who}: this node has no IPv{version} address")
            return
        taken.add(peer_ip)
        sessions.append(Session(protocol_name(kind, peer_ip), kind, version, peer_ip, peer_as,
                                local_ip, rr_client and peer_as == local_as, description))

    for other in view.nodes.values():
        if other.hostname == hostname:
            continue
        me_rr, other_rr = me.rr_cluster_id is not None, other.rr_cluster_id is not None
        if not view.mesh_enabled and not (me_rr or other_rr):
            continue
        for version in (4, 6):
            peer_ip = _address(other, version)
            if peer_ip is not None and _address(me, version) is not None:
                add("mesh", peer_ip, _node_as(view, other), me_rr and not other_rr,
                    other.hostname)
    for peer in view.node_peers.get(hostname, ()):
        add("node", peer.ip, peer.as_num, False, f"peer of {hostname}")
    for peer in view.global_peers:
        add("global", peer.ip, peer.as_num, False, "global peer")

    pools_v4 = tuple(p.cidr for p in view.pools if p.version == 4)
    pools_v6 = tuple(p.cidr for p in view.pools if p.version == 6)
    encap_v4 = tuple(p.cidr for p in view.pools if p.version == 4 and p.encapsulation)
    blocks = view.affinities.get(hostname, ())
    borrowed = view.borrowed.get(hostname, ())

    def family(items: tuple[str, ...], version: int, pools: tuple[str, ...]) -> tuple[str, ...]:
        kept = []
        for cidr in items:
            if ipaddress.ip_network(cidr).version != version:
                continue
            if _in_pools(cidr, encap_v4):
                continue  # felix's: reached through a tunnel, never announced
            if _in_pools(cidr, pools):
                kept.append(cidr)
            else:
                notes.append(f"{cidr} is outside every pool: not announced")
        return tuple(kept)

    sessions.sort(key=lambda s: (s.version, int(ipaddress.ip_address(s.peer_ip))))
    return HostConfig(
        hostname=hostname,
        router_id=me.ipv4,
        local_as=local_as,
        ipv4=me.ipv4,
        ipv6=me.ipv6,
        rr_cluster_id=me.rr_cluster_id,
        loglevel=me.loglevel or view.global_loglevel or "info",
        mesh_enabled=view.mesh_enabled,
        pools_v4=pools_v4,
        pools_v6=pools_v6,
        encap_pools_v4=encap_v4,
        blocks_v4=family(blocks, 4, pools_v4),
        blocks_v6=family(blocks, 6, pools_v6),
        borrowed_v4=family(borrowed, 4, pools_v4),
        borrowed_v6=family(borrowed, 6, pools_v6),
        sessions=tuple(sessions),
        custom_filters_v4=view.custom_filters.get(4, ()),
        custom_filters_v6=view.custom_filters.get(6, ()),
        notes=tuple(notes),
    )


__all__ = ["HostConfig", "Session", "calculate_host_config", "protocol_name"]
