"""The MTU of a workload's interface: the tunnel's when its addresses come from a pool
with an encapsulation, so that a full-sized packet still fits once encapsulated.

Owns: `choose_mtu` (pure: the smallest tunnel MTU among the encapsulations of the pools
the addresses are in; None - the kernel's default - when none is encapsulated),
`tunnel_mtus` (felix's tunnel MTU parameters as the datastore holds them: this host's
value, else the global one, else the default: VXLANMTU 1450, IpInIpMtu 1480) and
`workload_mtu`, which puts the two together for `workload.provision`.

Felix reads the same parameters for its tunnel devices; a value set only in felix's
config file or environment on the host is not visible here (set it in etcd, as
`calicoctl config felix VXLANMTU 1400`). An interface keeps its MTU when its pool's
encapsulation changes later: recreate the workload to pick up the new one.

Leaves to others: setting the MTU (`workload.veth`), which pool an address came from
(IPAM), the parameters' declaration (felix's config table).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from libcalico.model import IPPool
from libcalico.model.tunnel import MTU_PARAMS

if TYPE_CHECKING:
    from libcalico.client import CalicoClient

_log = logging.getLogger(__name__)


def pool_of(pools: Sequence[IPPool], ip: str) -> IPPool | None:
    addr = ipaddress.ip_address(ip)
    return next((p for p in pools if addr in ipaddress.ip_network(p.cidr)), None)


def choose_mtu(pools: Sequence[IPPool], ips: Sequence[str],
               tunnel_mtus: Mapping[str, int]) -> int | None:
    """The smallest tunnel MTU of the encapsulated pools holding `ips`; None if none is."""
    mtus = [tunnel_mtus[pool.encapsulation] for ip in ips
            if (pool := pool_of(pools, ip)) is not None and pool.encapsulation is not None]
    return min(mtus) if mtus else None


def tunnel_mtus(client: CalicoClient, hostname: str) -> dict[str, int]:
    """Encapsulation -> MTU from felix's parameters in etcd (host, global, default)."""
    host = client.get_felix_config(hostname).values
    glob = client.get_felix_config(None).values
    out: dict[str, int] = {}
    for encap, (param, default) in MTU_PARAMS.items():
        text = host.get(param, glob.get(param))
        try:
            value = int(text) if text is not None else default
        except ValueError:
            _log.warning("ignoring felix parameter %s=%r: not an integer", param, text)
            value = default
        out[encap] = value
    return out


def workload_mtu(client: CalicoClient, hostname: str, ips: Sequence[str]) -> int | None:
    """The MTU a new interface with `ips` on `hostname` gets (None: the default)."""
    pools = [p for p in client.list_pools() if p.encapsulation is not None]
    if not any(pool_of(pools, ip) is not None for ip in ips):
        return None  # no encapsulation: no need to read felix's parameters
    return choose_mtu(pools, ips, tunnel_mtus(client, hostname))
