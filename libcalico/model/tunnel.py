"""Overlay facts every layer shares: the tunnel devices, their defaults and the pure
decisions about who is reached through which tunnel.

Owns: the names and defaults of the two encapsulations (`VXLAN`: device `vxlan.calico`,
VNI 4096, UDP 4789, MTU 1450 on a 1500-byte fabric; `IPIP`: device `tunl0`, MTU 1480),
the encapsulation modes (`always`, `cross-subnet`), the IPAM handle of a node's tunnel
address (`tunnel_handle`), a node's stable VXLAN MAC (`vxlan_mac_for`, derived from its
name, so it survives restarts and lost keys) and `same_subnet` (the cross-subnet test:
is the other node's address inside this node's subnet?).

Leaves to others: the pool and node values that carry these settings
(`libcalico.model.network`), allocating tunnel addresses (`libcalico.tunnel`), the
dataplane (felix), the configurable MTU values (felix's parameters, read by the
workload layer through the felix configuration in etcd).
"""

from __future__ import annotations

import hashlib
import ipaddress

ENCAP_MODES = ("always", "cross-subnet")
VXLAN = "vxlan"
IPIP = "ipip"
ENCAPSULATIONS = (VXLAN, IPIP)

VXLAN_INTERFACE = "vxlan.calico"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
IPIP_INTERFACE = "tunl0"

# A tunnel's MTU is the fabric's (1500 here) minus the encapsulation's overhead: VXLAN
# adds 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14), IP-in-IP 20.
FABRIC_MTU = 1500
VXLAN_OVERHEAD = 50
IPIP_OVERHEAD = 20
DEFAULT_VXLAN_MTU = FABRIC_MTU - VXLAN_OVERHEAD
DEFAULT_IPIP_MTU = FABRIC_MTU - IPIP_OVERHEAD

# The felix parameters that hold the tunnels' MTU (felix declares them; the workload
# layer reads them to give workloads in encapsulated pools the same MTU).
MTU_PARAMS = {VXLAN: ("VXLANMTU", DEFAULT_VXLAN_MTU), IPIP: ("IpInIpMtu", DEFAULT_IPIP_MTU)}


def tunnel_handle(encapsulation: str, hostname: str) -> str:
    """The IPAM handle of `hostname`'s tunnel address: `vxlan-tunnel-addr-<host>`."""
    return f"{encapsulation}-tunnel-addr-{hostname}"


def tunnel_handle_owner(handle_id: str | None) -> tuple[str, str] | None:
    """(encapsulation, hostname) of a tunnel-address handle; None for other handles."""
    for encap in ENCAPSULATIONS:
        prefix = f"{encap}-tunnel-addr-"
        if handle_id and handle_id.startswith(prefix) and len(handle_id) > len(prefix):
            return encap, handle_id[len(prefix):]
    return None


def vxlan_mac_for(hostname: str) -> str:
    """A stable, locally administered unicast MAC for `hostname`'s VXLAN device."""
    digest = hashlib.sha256(f"calico-vxlan:{hostname}".encode()).digest()
    octets = [0x66, *digest[:5]]  # 0x66: locally administered (bit 1), unicast (bit 0 off)
    return ":".join(f"{b:02x}" for b in octets)


def same_subnet(my_network: str | None, other_ip: str | None) -> bool:
    """Whether `other_ip` lies in this node's subnet `my_network` (a CIDR). Unknown on
    either side counts as another subnet: cross-subnet mode then encapsulates, which
    works wherever the plain route might not."""
    if not my_network or not other_ip:
        return False
    try:
        return ipaddress.ip_address(other_ip) in ipaddress.ip_network(my_network)
    except ValueError:
        return False
