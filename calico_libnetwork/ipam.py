"""The IpamDriver calls of the `calico-ipam` driver: Docker's addresses from Calico pools.

Owns:
- GetCapabilities (no MAC needed) and GetDefaultAddressSpaces (Calico's two names);
- RequestPool: without `--subnet`, every Calico pool of the version (pool id
  `CalicoPoolIPv4`/`CalicoPoolIPv6`, shown to Docker as 0.0.0.0/0 or ::/0), refused when
  no such pool exists; with `--subnet`, exactly that Calico pool (its CIDR is the pool
  id), refused when it is not one; `--ip-range` is refused. The gateway Docker records
  is a placeholder, so Docker never takes one of the pool's addresses for it;
- RequestAddress: one address through `workload.addresses` (auto-assign from the pool,
  this host's blocks first, or exactly `--ip`), recorded in IPAM under a handle of its
  own with the host and orchestrator `libnetwork`; a gateway request (`--gateway`) is
  refused: Calico's gateway is link-local;
- ReleaseAddress: releases the address while IPAM holds it for this driver on this host
  (the one place a Docker address is released; DeleteEndpoint leaves it here);
- ReleasePool: nothing to release (pools are the operator's).

Every call reads its fields through `calico_libnetwork.request` before it acts.

Leaves to others: allocation (`libcalico.ipam`), the request grammar
(`workload.addresses`), the endpoint (`calico_libnetwork.network`).
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from calico_libnetwork import api
from calico_libnetwork import request as rq
from calico_libnetwork.api import PluginError
from libcalico.errors import AddressInUse, PoolsExhausted, ValidationError
from workload import addresses
from workload.gateway import host_net

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.ipam import IPAMClient

_log = logging.getLogger(__name__)

Request = Mapping[str, Any]


class IpamDriver:
    """The `calico-ipam` driver of one host."""

    def __init__(self, client: CalicoClient, ipam: IPAMClient, hostname: str) -> None:
        self.client = client
        self.ipam = ipam
        self.hostname = hostname

    def calls(self) -> dict[str, Callable[[Request], dict[str, Any]]]:
        return {
            "IpamDriver.GetCapabilities": lambda req: dict(api.IPAM_CAPABILITIES),
            "IpamDriver.GetDefaultAddressSpaces": lambda req: {
                "LocalDefaultAddressSpace": api.LOCAL_ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": api.GLOBAL_ADDRESS_SPACE},
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": lambda req: {},
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    def request_pool(self, req: Request) -> dict[str, Any]:
        version = 6 if rq.flag(req, "V6") else 4
        rq.obj(req, "Options")
        sub_pool = rq.text(req, "SubPool", max_len=64)
        if sub_pool:
            raise PluginError(f"--ip-range {rq.shown(sub_pool)} is not supported by "
                              "calico-ipam: use a whole Calico pool as --subnet")
        subnet = rq.text(req, "Pool", label="Pool (--subnet)", max_len=64)
        data = {api.GATEWAY_DATA_KEY: api.GATEWAY_PLACEHOLDER[version]}
        if not subnet:
            pools = [p for p in self.client.list_pools(version) if not p.disabled and p.ipam]
            if not pools:
                raise PluginError(f"no Calico IPv{version} pool exists to give addresses "
                                  "from; add one with `calicoctl pool add CIDR`")
            return {"PoolID": api.ANY_POOL[version], "Pool": api.ANY_POOL_CIDR[version],
                    "Data": data}
        try:
            cidr = str(ipaddress.ip_network(subnet, strict=True))
        except ValueError:
            raise PluginError(f"--subnet {rq.shown(subnet)} is not a CIDR") from None
        if ipaddress.ip_network(cidr).version != version:
            raise PluginError(f"--subnet {cidr} is not an IPv{version} CIDR")
        pool = self.client.get_pool(cidr)
        if pool is None or pool.disabled or not pool.ipam:
            raise PluginError(f"--subnet {subnet} is not a Calico IP pool; give the CIDR of "
                              "one (`calicoctl pool show`) or leave --subnet out")
        return {"PoolID": cidr, "Pool": cidr, "Data": data}

    def request_address(self, req: Request) -> dict[str, Any]:
        pool_id = rq.text(req, "PoolID", required=True, max_len=64)
        options = rq.obj(req, "Options")
        kind = rq.text(options, api.REQUEST_ADDRESS_TYPE, label=api.REQUEST_ADDRESS_TYPE)
        if kind == api.GATEWAY_REQUEST:
            raise PluginError("--gateway is not supported by calico-ipam: Calico workloads "
                              "use the link-local gateways 169.254.1.1 and fe80::1")
        wanted = rq.text(req, "Address", label="Address (--ip)", max_len=64)
        any_pool = pool_id in api.ANY_POOL.values()
        if not any_pool:
            try:
                net = ipaddress.ip_network(pool_id, strict=True)
            except ValueError:
                raise rq.invalid("PoolID", pool_id, "not a pool id of calico-ipam") from None
            pool_id = str(net)
        version = 6 if pool_id == api.ANY_POOL[6] or ":" in pool_id else 4
        try:
            if wanted:
                request = addresses.parse_request(wanted, field="--ip")
                if request.address is None:
                    raise PluginError(f"--ip {rq.shown(wanted)} is not an address")
                if ipaddress.ip_address(request.address).version != version:
                    raise PluginError(f"--ip {wanted} is not an IPv{version} address")
                if not any_pool and ipaddress.ip_address(request.address) \
                        not in ipaddress.ip_network(pool_id):
                    raise PluginError(f"--ip {wanted} is not in the network's subnet "
                                      f"{pool_id}")
            elif any_pool:
                request = addresses.parse_request(f"ipv{version}")
            else:
                request = addresses.check_requests(self.client, [pool_id], field="--subnet")[0]
            handle = f"{api.ORCHESTRATOR}-{uuid.uuid4().hex}"
            attrs = {"host": self.hostname, "orchestrator": api.ORCHESTRATOR, "pool": pool_id}
            ip = addresses.assign_address(self.ipam, request, handle, attrs, self.hostname)
        except AddressInUse:
            raise PluginError(f"address {request.address} is already in use") from None
        except PoolsExhausted:
            where = "" if any_pool else f" in {pool_id}"
            raise PluginError(f"no IPv{version} address is free{where}") from None
        except ValidationError as exc:
            raise PluginError(f"--ip {wanted}: {exc.reason}" if wanted else str(exc)) from None
        _log.info("assigned %s (pool %s)", ip, pool_id)
        return {"Address": host_net(ip), "Data": {}}

    def release_address(self, req: Request) -> dict[str, Any]:
        address = rq.text(req, "Address", required=True, max_len=64)
        try:
            ip = str(ipaddress.ip_interface(address).ip)
        except ValueError:
            raise rq.invalid("Address", address, "not an address") from None
        assignment = self.ipam.get_assignment_attributes(ip)
        if assignment is None:
            return {}  # released already
        attrs = assignment.attributes or {}
        if attrs.get("orchestrator") != api.ORCHESTRATOR or attrs.get("host") != self.hostname:
            _log.warning("not releasing %s: IPAM holds it for %s on %s, not for this driver",
                         ip, attrs.get("orchestrator"), attrs.get("host"))
            return {}
        self.ipam.release_ips([ip])
        _log.info("released %s", ip)
        return {}
