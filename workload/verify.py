"""Checking a workload against its endpoint: does the kernel have what the endpoint says?

Owns: `compare(ep, iface, host_iface)` (pure: the differences between an endpoint record
and the two ends of its veth as read back) and `verify_workload(ep, netns, ifname)`,
which reads both ends (`workload.veth.read_interface`) and compares. What is checked,
for the workload side (`ifname` in the workload's namespace): it exists and is up, its
MAC is the endpoint's, its global addresses are exactly the endpoint's, and for each IP
version it has the default route via that version's gateway and a permanent neighbour
entry for the gateway pointing at the host end's MAC; for the host side (the endpoint's
`name`): it exists and is up. The endpoint itself must be active.

Used by the CNI plugin's CHECK; any way in may use it to tell whether a workload's
plumbing is intact.

Leaves to others: reading the kernel (`workload.veth`), what to do about a difference
(the caller), policy and routes on the host (felix).
"""

from __future__ import annotations

from libcalico.model import WorkloadEndpoint
from workload import veth
from workload.gateway import gateway_route, ip_version
from workload.veth import InterfaceState


def compare(ep: WorkloadEndpoint, iface: InterfaceState | None,
            host_iface: InterfaceState | None, ifname: str) -> list[str]:
    """What differs between the endpoint and its interfaces (empty: nothing)."""
    problems: list[str] = []
    if ep.state != "active":
        problems.append(f"endpoint {ep.endpoint_id} is {ep.state}")
    if host_iface is None:
        problems.append(f"host interface {ep.name} does not exist")
    elif not host_iface.up:
        problems.append(f"host interface {ep.name} is down")
    if iface is None:
        problems.append(f"interface {ifname} does not exist in the workload's namespace")
        return problems
    if not iface.up:
        problems.append(f"interface {ifname} is down")
    if ep.mac is not None and iface.mac != ep.mac:
        problems.append(f"interface {ifname} has MAC {iface.mac}, the endpoint {ep.mac}")
    want = sorted(n.split("/")[0] for n in (*ep.ipv4_nets, *ep.ipv6_nets))
    have = list(iface.addresses)
    missing = [a for a in want if a not in have]
    extra = [a for a in have if a not in want]
    if missing:
        problems.append(f"interface {ifname} lacks address(es) {', '.join(missing)}")
    if extra:
        problems.append(f"interface {ifname} has address(es) {', '.join(extra)} that the "
                        "endpoint does not list")
    host_mac = host_iface.mac if host_iface is not None else None
    for version in sorted({ip_version(a) for a in want}):
        gw = gateway_route(version)
        if (gw.default, gw.gateway) not in iface.routes:
            problems.append(f"interface {ifname} has no default route via {gw.gateway}")
        entries = [(mac, permanent) for ip, mac, permanent in iface.neighbours
                   if ip == gw.gateway]
        if host_mac is not None and (host_mac, True) not in entries:
            problems.append(f"interface {ifname} has no permanent neighbour entry for "
                            f"{gw.gateway} at {host_mac}")
    return problems


def verify_workload(ep: WorkloadEndpoint, netns: str, ifname: str, *,
                    host_netns: str | None = None) -> list[str]:
    """Read the endpoint's interfaces (`ifname` in `netns`, `ep.name` in `host_netns`)
    and compare them with it; the differences (empty: the workload is as recorded).
    `NotFound` if the workload's namespace does not exist."""
    iface = veth.read_interface(ifname, netns=netns)
    host_iface = veth.read_interface(ep.name, netns=host_netns)
    return compare(ep, iface, host_iface, ifname)
