"""The NetworkDriver calls of the `calico` driver.

Owns what each call does:
- GetCapabilities: scope local, connectivity scope global (`api.NETWORK_CAPABILITIES`);
- CreateNetwork: refuses a network whose addresses do not come from `calico-ipam`
  (Docker's default IPAM gives every host the same 172.x addresses) and any `-o`
  option; stores the network record; learns the network's name and labels from the
  engine in the background and creates profile <name> (default rules) when missing;
- DeleteNetwork: deletes the record, and the profile only if the driver created it and
  no other host's network of that name remains (`DriverState.release_profile`);
- CreateEndpoint: the host side of the container's interface through the workload
  layer (`workload.provision.add_veth_endpoint`: veth `cali<endpoint id[:11]>` with
  the gateways as its addresses, peer `tmp...` for Docker to move, and the workload
  endpoint with the network's profile and labels); answers the peer's MAC when Docker
  has none for it;
- Join: the peer's name, the gateways and routes (the first Calico endpoint of a
  sandbox gives the default route via 169.254.1.1 / fe80::1, with a connected route to
  169.254.1.1; further ones get connected routes to their network's own pools, since a
  sandbox can have one route to 169.254.1.1 only), `DisableGatewayService` (no
  docker_gwbridge); records the sandbox;
- Leave: forgets the sandbox; DeleteEndpoint: the endpoint inactive, the veth deleted,
  the endpoint deleted (`workload.provision.remove_workload`, addresses left to the
  IPAM driver's ReleaseAddress, which Docker calls next);
- EndpointOperInfo, the Discover and external-connectivity calls, AllocateNetwork and
  FreeNetwork: nothing to do, answered as the protocol expects.
Every removal is idempotent (Docker repeats calls after a driver restart). Every call
reads the fields it uses through `calico_libnetwork.request` before it acts, so a
malformed request is refused, naming the field, before anything is written.

Leaves to others: addresses (`calico_libnetwork.ipam`), the records
(`calico_libnetwork.state`), the engine's API (`calico_libnetwork.engine`), netlink and
endpoints (`workload`), proxy ARP, routes and policy (felix).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from calico_libnetwork import api
from calico_libnetwork import request as rq
from calico_libnetwork.api import PluginError
from calico_libnetwork.engine import NetworkLookup
from calico_libnetwork.state import DriverState, EndpointRecord, NetworkRecord
from libcalico.errors import AlreadyExists, CalicoError, ValidationError
from libcalico.model import WorkloadEndpointId
from workload import veth
from workload.gateway import GATEWAY_V4, GATEWAY_V6, host_net
from workload.provision import Workload, add_veth_endpoint, remove_workload

if TYPE_CHECKING:
    from libcalico.ipam import IPAMClient

_log = logging.getLogger(__name__)

NAME_WAIT_S = 30.0  # how long the background lookup waits for the engine to store a network
Request = Mapping[str, Any]


def _address(iface: Request, name: str, version: int) -> str | None:
    """Interface.Address '198.19.0.5/32' -> '198.19.0.5'; None for an empty field."""
    label = f"Interface.{name}"
    value = rq.text(iface, name, label=label, max_len=64)
    if not value:
        return None
    try:
        ip = ipaddress.ip_interface(value).ip
    except ValueError:
        raise rq.invalid(label, value, "not an address") from None
    if ip.version != version:
        raise rq.invalid(label, value, f"not an IPv{version} address")
    return str(ip)


class NetworkDriver:
    """The `calico` network driver of one host. `host_netns` is where host ends of veths
    go (None: this process's namespace, the host's)."""

    def __init__(self, state: DriverState, ipam: IPAMClient, lookup: NetworkLookup,
                 hostname: str, *, host_netns: str | None = None, mtu: int | None = None,
                 name_wait: float = NAME_WAIT_S) -> None:
        self.state = state
        self.client = state.client
        self.ipam = ipam
        self.lookup = lookup
        self.hostname = hostname
        self.host_netns = host_netns
        self.mtu = mtu
        self.name_wait = name_wait

    def calls(self) -> dict[str, Callable[[Request], dict[str, Any]]]:
        noop: Callable[[Request], dict[str, Any]] = lambda req: {}  # noqa: E731
        return {
            "NetworkDriver.GetCapabilities": lambda req: dict(api.NETWORK_CAPABILITIES),
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.leave,
            "NetworkDriver.DiscoverNew": noop,
            "NetworkDriver.DiscoverDelete": noop,
            "NetworkDriver.ProgramExternalConnectivity": noop,
            "NetworkDriver.RevokeExternalConnectivity": noop,
            "NetworkDriver.AllocateNetwork": lambda req: {"Options": {}},
            "NetworkDriver.FreeNetwork": noop,
        }

    def resume(self) -> None:
        """After a restart: look up the names of this host's networks whose name is not
        recorded yet (the engine may have stored them while the driver was away)."""
        try:
            pending = [r for r in self.state.networks()
                       if r.hostname == self.hostname and r.name is None]
        except CalicoError as exc:
            _log.warning("could not read the network records: %s", exc)
            return
        for record in pending:
            self._name_later(record.network_id)

    # --- networks ------------------------------------------------------------------------------

    def create_network(self, req: Request) -> dict[str, Any]:
        network_id = rq.docker_id(req, "NetworkID")
        options = rq.obj(req, "Options")
        generic = rq.obj(options, api.GENERIC_OPTIONS, label="Options." + api.GENERIC_OPTIONS)
        if generic:
            name = str(sorted(generic)[0])
            if not name.isprintable() or len(name) > 60:
                name = rq.shown(name)
            raise PluginError(f"option {name} is not supported by the calico network "
                              "driver (it takes none)")
        enable_ipv6 = rq.flag(options, api.ENABLE_IPV6, label=api.ENABLE_IPV6)
        pools: dict[int, list[str]] = {4: [], 6: []}
        data = {4: rq.items(req, "IPv4Data"), 6: rq.items(req, "IPv6Data")}
        for version in (4, 6):
            for item in data[version]:
                if item.get("AddressSpace") not in api.ADDRESS_SPACES:
                    raise PluginError(api.BARE_NETWORK_ERROR)
                pool = rq.text(item, "Pool", label=f"IPv{version}Data.Pool", max_len=64)
                if pool and pool != api.ANY_POOL_CIDR[version]:
                    try:
                        net = ipaddress.ip_network(pool)
                    except ValueError:
                        net = None
                    if net is None or net.version != version:
                        raise rq.invalid(f"IPv{version}Data.Pool", pool,
                                         f"not an IPv{version} CIDR")
                    pools[version].append(str(net))
        ipv6 = enable_ipv6 or bool(data[6])
        record = self.state.create_network(NetworkRecord(
            network_id, self.hostname, tuple(pools[4]), tuple(pools[6]), ipv6))
        if record.name is None:
            self._name_later(network_id)
        return {}

    def _name_later(self, network_id: str) -> None:
        """Learn the network's name once the engine has stored it (after this call has
        answered), then record it and make its profile."""
        def run() -> None:
            try:
                found = self.lookup.wait_for(network_id, self.name_wait)
                if found is None:
                    _log.warning("the engine never showed network %s; its name and profile "
                                 "come with its first endpoint", network_id[:12])
                    return
                self._record_name(network_id, *found)
            except Exception:  # noqa: BLE001 - a background task: log, CreateEndpoint retries
                _log.exception("naming network %s", network_id[:12])

        threading.Thread(target=run, name=f"name-{network_id[:12]}", daemon=True).start()

    def _record_name(self, network_id: str, name: str,
                     labels: Mapping[str, str]) -> NetworkRecord | None:
        try:
            record = self.state.name_network(network_id, name, labels)
        except ValidationError as exc:
            raise PluginError(f"network {name}: {exc}") from None
        if record is not None and record.name:
            self.state.ensure_profile(record.name)
        return record

    def _named_network(self, network_id: str) -> NetworkRecord:
        record = self.state.get_network(network_id)
        if record is None:
            raise PluginError(f"network {network_id[:12]} is not known to the calico driver "
                              f"(no record {api.ORCHESTRATOR}/{network_id[:12]} in etcd); "
                              "remove it and create it again")
        if record.name is None:
            found = self.lookup.network(network_id)
            if found is None:
                raise PluginError(f"the Docker engine does not know network "
                                  f"{network_id[:12]}")
            record = self._record_name(network_id, *found) or record
        elif not self.client.profile_exists(record.name):
            self.state.ensure_profile(record.name)
        return record

    def delete_network(self, req: Request) -> dict[str, Any]:
        network_id = rq.docker_id(req, "NetworkID")
        record = self.state.delete_network(network_id)
        if record is not None and record.name:
            self.state.release_profile(record.name)
        return {}

    # --- endpoints -----------------------------------------------------------------------------

    def _ident(self, endpoint_id: str) -> WorkloadEndpointId:
        return WorkloadEndpointId(self.hostname, api.ORCHESTRATOR, endpoint_id, endpoint_id)

    def create_endpoint(self, req: Request) -> dict[str, Any]:
        network_id = rq.docker_id(req, "NetworkID")
        endpoint_id = rq.docker_id(req, "EndpointID")
        iface = rq.obj(req, "Interface")
        ips = [ip for ip in (_address(iface, "Address", 4),
                             _address(iface, "AddressIPv6", 6)) if ip]
        mac = rq.mac(iface, "MacAddress", label="Interface.MacAddress")
        if not ips:
            raise PluginError(f"endpoint {endpoint_id[:12]} has no Interface.Address: "
                              f"{api.BARE_NETWORK_ERROR}")
        record = self._named_network(network_id)
        existing = self.client.get_workload_endpoint(self._ident(endpoint_id))
        if existing is not None:  # a repeated call: the same answer
            same = {host_net(ip) for ip in ips} == {*existing.ipv4_nets, *existing.ipv6_nets}
            if not same:
                raise PluginError(f"endpoint {endpoint_id[:12]} exists already with other "
                                  "addresses")
            return {} if mac else {"Interface": {"MacAddress": existing.mac}}
        host_ifname = veth.host_interface_name(endpoint_id)
        if veth.delete_veth(host_ifname, netns=self.host_netns):
            _log.info("deleted %s, left by an earlier attempt", host_ifname)
        where = Workload(self.hostname, api.ORCHESTRATOR, endpoint_id, netns="")
        try:
            ep, pair = add_veth_endpoint(
                self.client, where, endpoint_id, ips, mac=mac, mtu=self.mtu,
                profiles=(record.name,) if record.name else (), labels=record.labels,
                host_netns=self.host_netns)
        except AlreadyExists as exc:
            raise PluginError(f"endpoint {endpoint_id[:12]}: {exc}") from None
        _log.info("endpoint %s: %s on %s (network %s)", endpoint_id[:12],
                  ", ".join(ips), ep.name, record.name)
        return {} if mac else {"Interface": {"MacAddress": pair.peer_mac}}

    def join(self, req: Request) -> dict[str, Any]:
        network_id = rq.docker_id(req, "NetworkID")
        endpoint_id = rq.docker_id(req, "EndpointID")
        sandbox = rq.sandbox_key(req)
        ep = self.client.get_workload_endpoint(self._ident(endpoint_id))
        if ep is None:
            raise PluginError(f"endpoint {endpoint_id[:12]} does not exist on "
                              f"{self.hostname}")
        others = [r for r in self.state.endpoints(self.hostname)
                  if r.sandbox == sandbox and r.endpoint_id != endpoint_id]
        first = not any(r.gateway for r in others)
        self.state.put_endpoint(self.hostname,
                                EndpointRecord(endpoint_id, network_id, sandbox, first))
        answer: dict[str, Any] = {
            "InterfaceName": {"SrcName": veth.temp_peer_name(ep.name),
                              "DstPrefix": api.CONTAINER_IFPREFIX},
            "DisableGatewayService": True}
        routes: list[dict[str, Any]] = []
        if first:
            if ep.ipv4_nets:
                answer["Gateway"] = GATEWAY_V4
                routes.append({"Destination": host_net(GATEWAY_V4), "RouteType": 1})
            if ep.ipv6_nets:
                answer["GatewayIPv6"] = GATEWAY_V6
        else:
            record = self.state.get_network(network_id)
            for version, nets in ((4, ep.ipv4_nets), (6, ep.ipv6_nets)):
                if nets and record is not None:
                    routes += [{"Destination": pool, "RouteType": 1}
                               for pool in record.pools(version)]
        if routes:
            answer["StaticRoutes"] = routes
        return answer

    def leave(self, req: Request) -> dict[str, Any]:
        endpoint_id = rq.docker_id(req, "EndpointID")
        self.state.delete_endpoint(self.hostname, endpoint_id)
        return {}

    def delete_endpoint(self, req: Request) -> dict[str, Any]:
        endpoint_id = rq.docker_id(req, "EndpointID")
        removed = remove_workload(self.client, self.ipam, self.hostname, api.ORCHESTRATOR,
                                  endpoint_id, host_netns=self.host_netns, missing_ok=True,
                                  release=False)
        # The veth, even when the endpoint was never written (a failed CreateEndpoint).
        veth.delete_veth(veth.host_interface_name(endpoint_id), netns=self.host_netns)
        self.state.delete_endpoint(self.hostname, endpoint_id)
        if removed.endpoints:
            _log.info("endpoint %s removed", endpoint_id[:12])
        return {}

    def endpoint_oper_info(self, req: Request) -> dict[str, Any]:
        endpoint_id = rq.docker_id(req, "EndpointID")
        ep = self.client.get_workload_endpoint(self._ident(endpoint_id))
        if ep is None:
            return {"Value": {}}
        return {"Value": {"hostInterface": ep.name, "mac": ep.mac,
                          "addresses": [*ep.ipv4_nets, *ep.ipv6_nets]}}
