"""A node's tunnel endpoints against a real etcd: `libcalico.tunnel.reconcile_tunnels`
allocates through IPAM with the node's affinity and records address and MAC on the node,
keeps them across node restarts and whole-node writes, releases them when the
encapsulation goes; the IPAM check does not call them leaks; a pool holding only tunnel
addresses can be removed; `calicoctl node remove` gives them back; the workload MTU
follows the pool's tunnel."""

from __future__ import annotations

import pytest

from calicoctl.nodestart import register_node
from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.ipam import IPAMClient, check
from libcalico.model import IPPool, Node
from libcalico.model.tunnel import tunnel_handle, vxlan_mac_for
from libcalico.tunnel import reconcile_tunnels, release_tunnels
from tests.support.ctl import Ctl
from workload.mtu import tunnel_mtus, workload_mtu

pytestmark = pytest.mark.etcd

POOL = "198.19.0.0/16"


@pytest.fixture
def client(datastore: Datastore) -> CalicoClient:
    c = CalicoClient(datastore)
    for host, ip in (("h1", "198.18.1.1"), ("h2", "198.18.2.1")):
        register_node(c, host, ip, None, None, f"{ip.rsplit('.', 1)[0]}.0/24")
    return c


def test_vxlan_pool_gives_each_node_an_address_and_mac_then_takes_them_back(
        client: CalicoClient, datastore: Datastore) -> None:
    ipam = IPAMClient(datastore)
    assert not reconcile_tunnels(client, ipam, "h1")  # no encapsulated pool: nothing
    client.add_pool(IPPool(POOL, vxlan=True))
    change = reconcile_tunnels(client, ipam, "h1")
    node = client.get_node("h1")
    assert node is not None and node.vxlan_tunnel_addr == change.allocated[0]
    assert node.vxlan_tunnel_mac == vxlan_mac_for("h1")
    assert node.ipv4_network == "198.18.1.0/24"
    held = ipam.get_assignment_attributes(node.vxlan_tunnel_addr)
    assert held is not None and held.handle_id == tunnel_handle("vxlan", "h1")
    assert held.block in ipam.host_blocks("h1")  # with the node's affinity
    assert not reconcile_tunnels(client, ipam, "h1")  # idempotent
    # A node restart (start-up rewrites the node) and a whole-node apply keep them.
    register_node(client, "h1", "198.18.1.1", None, None, "198.18.1.0/24")
    client.put_node(Node("h1", ipv4="198.18.1.1", as_num=64600))
    assert client.get_node("h1") == Node("h1", ipv4="198.18.1.1", as_num=64600,
                                         vxlan_tunnel_addr=node.vxlan_tunnel_addr,
                                         vxlan_tunnel_mac=node.vxlan_tunnel_mac)
    # Tunnel addresses are in use: not leaks.
    report = check(datastore, grace_period=0)
    assert report.ok and not report.leaks
    # The field lost (an operator's apply set it empty): the held address is recorded again.
    client.set_node_runtime("h1", vxlan_tunnel_addr=None)
    again = reconcile_tunnels(client, ipam, "h1")
    assert again.fields == {"vxlan_tunnel_addr": node.vxlan_tunnel_addr}
    assert not again.allocated
    # VXLAN off: released, fields cleared.
    client.add_pool(IPPool(POOL), replace=True)
    off = reconcile_tunnels(client, ipam, "h1")
    assert off.released == (node.vxlan_tunnel_addr,)
    gone = client.get_node("h1")
    assert gone is not None and gone.vxlan_tunnel_addr is None and gone.vxlan_tunnel_mac is None
    assert ipam.get_assignment_attributes(node.vxlan_tunnel_addr) is None


def test_ipip_and_disabled_pools(client: CalicoClient, datastore: Datastore) -> None:
    ipam = IPAMClient(datastore)
    client.add_pool(IPPool(POOL, ipip=True, disabled=True))
    change = reconcile_tunnels(client, ipam, "h2")
    assert not change and change.problems == ("no enabled ipip pool to take a tunnel "
                                              "address from",)
    client.add_pool(IPPool(POOL, ipip=True), replace=True)
    change = reconcile_tunnels(client, ipam, "h2")
    node = client.get_node("h2")
    assert node is not None and node.ipip_tunnel_addr == change.allocated[0]
    assert node.vxlan_tunnel_mac is None
    # Disabled again: the address in use stays.
    client.add_pool(IPPool(POOL, ipip=True, disabled=True), replace=True)
    assert not reconcile_tunnels(client, ipam, "h2")
    # IPIP -> VXLAN: the IPIP address goes, a VXLAN one comes.
    client.add_pool(IPPool(POOL, vxlan=True), replace=True)
    switch = reconcile_tunnels(client, ipam, "h2")
    assert switch.fields["ipip_tunnel_addr"] is None and switch.fields["vxlan_tunnel_addr"]


def test_pool_with_only_tunnel_addresses_can_be_removed_and_nodes_let_go(
        client: CalicoClient, datastore: Datastore, etcd_server: object) -> None:
    ipam = IPAMClient(datastore)
    client.add_pool(IPPool(POOL, vxlan=True))
    for host in ("h1", "h2"):
        reconcile_tunnels(client, ipam, host)
    ctl = Ctl(etcd_server.env())  # type: ignore[attr-defined]
    ctl("pool", "remove", POOL)
    assert not datastore.list(ks.BLOCK_DIR)[0]
    change = reconcile_tunnels(client, ipam, "h1")
    assert change.fields == {"vxlan_tunnel_addr": None, "vxlan_tunnel_mac": None}


def test_node_remove_releases_the_tunnel_address(client: CalicoClient, datastore: Datastore,
                                                 etcd_server: object) -> None:
    ipam = IPAMClient(datastore)
    client.add_pool(IPPool(POOL, vxlan=True))
    addr = reconcile_tunnels(client, ipam, "h1").allocated[0]
    ctl = Ctl(etcd_server.env())  # type: ignore[attr-defined]
    ctl("node", "remove", "--hostname", "h1")
    assert ipam.get_assignment_attributes(addr) is None
    assert not ipam.host_blocks("h1") and client.get_node("h1") is None
    assert release_tunnels(ipam, "h1") == []  # idempotent


def test_workload_mtu_follows_the_pool_and_felix_parameters(client: CalicoClient) -> None:
    client.add_pool(IPPool(POOL, vxlan=True))
    client.add_pool(IPPool("198.20.0.0/16"))
    assert tunnel_mtus(client, "h1") == {"vxlan": 1450, "ipip": 1480}
    assert workload_mtu(client, "h1", ["198.19.0.5"]) == 1450
    assert workload_mtu(client, "h1", ["198.20.0.5"]) is None
    client.set_felix_value("VXLANMTU", "1400")
    client.set_felix_value("VXLANMTU", "1350", hostname="h1")
    assert workload_mtu(client, "h1", ["198.19.0.5"]) == 1350
    assert workload_mtu(client, "h2", ["198.19.0.5"]) == 1400
