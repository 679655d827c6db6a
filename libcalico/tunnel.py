"""A node's tunnel endpoints: its VXLAN and IPIP tunnel addresses and its VXLAN MAC.

Owns `reconcile_tunnels(client, ipam, hostname)`, Calico's `allocate-tunnel-addrs` for one
node: while an IPv4 pool with an encapsulation exists, the node holds one tunnel address
for it, allocated through IPAM with the node's affinity under the handle
`<vxlan|ipip>-tunnel-addr-<host>` (`libcalico.model.tunnel.tunnel_handle`), and records
it on the node (`vxlan_tunnel_addr_v4` / `ipip_tunnel_addr_v4`), with a stable MAC for
VXLAN (`vxlan_tunnel_mac`, derived from the node's name). An address that is no longer
inside a pool with that encapsulation (the mode was turned off, the pool removed) is
released and the node's field cleared; an address IPAM holds for the handle but the
node does not record (a writer died in between, an operator's `apply` dropped it) is
recorded again rather than replaced. It is idempotent, so the node's agent (felix) runs
it whenever pools or the node change and on its refresh timer. `release_tunnels` gives
everything back (`calicoctl node remove`).

The pure part is `choose_address`; the writes are IPAM's (its one write path,
`libcalico.ipam.commit`) and the node's run-time fields (`NetworkClient.set_node_runtime`).

Leaves to others: when to run (felix's tunnel keeper), the dataplane (felix), which pools
exist (the operator).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from libcalico.client.network import NetworkClient
from libcalico.errors import PoolsExhausted
from libcalico.ipam import IPAMClient
from libcalico.model import IPPool
from libcalico.model.tunnel import ENCAPSULATIONS, VXLAN, tunnel_handle, vxlan_mac_for

_log = logging.getLogger(__name__)

ADDRESS_FIELDS = {VXLAN: "vxlan_tunnel_addr", "ipip": "ipip_tunnel_addr"}


@dataclass(frozen=True)
class TunnelChange:
    """What one reconcile changed: node fields set (None: cleared), addresses allocated
    and released, and why an encapsulation got no address (`problems`)."""

    fields: dict[str, str | None]
    allocated: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fields or self.allocated or self.released)


def _in_pools(ip: str, pools: Sequence[IPPool]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(p.cidr) for p in pools)


def choose_address(recorded: str | None, held: Sequence[str],
                   pools: Sequence[IPPool]) -> str | None:
    """The tunnel address to keep (pure): the recorded one if IPAM holds it for the node
    and it lies in one of `pools` (the pools with this encapsulation, disabled ones
    included: addresses in use stay), else the first such address IPAM holds; None
    when a new one is needed (or, with no pools, none is)."""
    if recorded is not None and recorded in held and _in_pools(recorded, pools):
        return recorded
    return next((ip for ip in held if _in_pools(ip, pools)), None)


def reconcile_tunnels(client: NetworkClient, ipam: IPAMClient, hostname: str) -> TunnelChange:
    """Bring the node's tunnel addresses and VXLAN MAC in line with the pools (see the
    module docstring). A node that is not registered is left alone."""
    node = client.get_node(hostname)
    if node is None:
        _log.debug("node %s is not registered: no tunnel addresses", hostname)
        return TunnelChange({})
    pools = [p for p in client.list_pools(4) if p.encapsulation is not None]
    fields: dict[str, str | None] = {}
    allocated: list[str] = []
    released: list[str] = []
    problems: list[str] = []
    for encap in ENCAPSULATIONS:
        field = ADDRESS_FIELDS[encap]
        mine = [p for p in pools if p.encapsulation == encap]
        handle = tunnel_handle(encap, hostname)
        held = ipam.ips_by_handle(handle)
        keep = choose_address(getattr(node, field), held, mine)
        if keep is None and mine:
            usable = [p.cidr for p in mine if p.ipam and not p.disabled]
            if not usable:
                problems.append(f"no enabled {encap} pool to take a tunnel address from")
            else:
                try:
                    got = ipam.auto_assign(1, 0, handle, {"host": hostname,
                                                          "type": f"{encap}TunnelAddress"},
                                           hostname, pools=usable).raise_if_short()
                    keep = got.ipv4s[0]
                    allocated.append(keep)
                except PoolsExhausted as exc:
                    problems.append(f"{encap} tunnel address: {exc}")
        stale = [ip for ip in held if ip != keep]
        if stale:
            ipam.release_ips(stale)
            released += stale
        if keep != getattr(node, field):
            fields[field] = keep
    # The MAC: kept once recorded (stable across restarts), derived from the name if not.
    has_vxlan = fields.get("vxlan_tunnel_addr", node.vxlan_tunnel_addr) is not None
    mac = (node.vxlan_tunnel_mac or vxlan_mac_for(hostname)) if has_vxlan else None
    if mac != node.vxlan_tunnel_mac:
        fields["vxlan_tunnel_mac"] = mac
    if fields:
        client.set_node_runtime(hostname, **fields)
        _log.info("node %s tunnel endpoints: %s", hostname,
                  ", ".join(f"{k}={v}" for k, v in sorted(fields.items())))
    return TunnelChange(fields, tuple(allocated), tuple(released), tuple(problems))


def release_tunnels(ipam: IPAMClient, hostname: str) -> list[str]:
    """Release every tunnel address IPAM holds for the node (its fields go with it)."""
    released: list[str] = []
    for encap in ENCAPSULATIONS:
        released += ipam.release_by_handle(tunnel_handle(encap, hostname))
    return released


__all__ = ["TunnelChange", "choose_address", "reconcile_tunnels", "release_tunnels"]
