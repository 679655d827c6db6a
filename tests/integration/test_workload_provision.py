"""workload.provision against a real etcd and real namespaces and veths, with a failure
injected at each step: an add leaves nothing behind, and a removal repeated after a
failure at any step ends with the address released, the interface without it and the
endpoint without it.

Failures come from a real interface deleted underneath, or from a fake that wraps the
real client (etcd) or IPAM client and raises once at one method; the state asserted on
is the real one (etcd, IPAM, the kernel's interfaces)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from libcalico.client import CalicoClient
from libcalico.errors import AlreadyExists, CalicoError, NotFound, ValidationError
from libcalico.ipam import IPAMClient
from libcalico.model import IPPool, WorkloadEndpoint
from netsim.netns import Namespace
from workload import veth
from workload.provision import (
    Workload,
    add_address,
    add_workload,
    remove_address,
    remove_workload,
)

pytestmark = [pytest.mark.etcd, pytest.mark.root]

POOL4 = "198.18.72.0/24"
POOL6 = "fd00:72::/120"
HOST = "wlp-node"


class Injected(CalicoError):
    """The failure a test injects."""


class FailOnce:
    """Wraps a real client; the first call of `method` raises `Injected` (after the real
    call when `after`: the write happened but its caller never learnt so)."""

    def __init__(self, real: Any, method: str, after: bool = False) -> None:
        self._real, self._method, self._after = real, method, after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name != self._method or self.fired:
            return attr

        def failing(*args: Any, **kwargs: Any) -> Any:
            self.fired = True
            if self._after:
                attr(*args, **kwargs)
            raise Injected(f"injected failure in {name}")

        return failing


@dataclass
class Env:
    client: CalicoClient
    ipam: IPAMClient
    host: Namespace
    wl: Namespace

    @property
    def where(self) -> Workload:
        return Workload(HOST, "netns", self.wl.name, self.wl.name)

    def endpoints(self) -> list[WorkloadEndpoint]:
        return self.client.list_workload_endpoints(HOST)

    def endpoint(self) -> WorkloadEndpoint:
        (ep,) = self.endpoints()
        return ep

    def allocated(self) -> int:
        return sum(u.allocated for u in self.ipam.usage())

    def host_links(self) -> list[str]:
        return [link["ifname"] for link in json.loads(self.host.ip("-j", "link").stdout)]

    def wl_addresses(self, ifname: str = "eth1") -> list[str]:
        return veth.interface_addresses(ifname, netns=self.wl.name)


@pytest.fixture
def env(datastore) -> Iterator[Env]:
    client = CalicoClient(datastore)
    client.add_pool(IPPool(POOL4))
    client.add_pool(IPPool(POOL6, block_size=124))
    host = Namespace("wlp-h")
    wl = None
    try:
        wl = Namespace("wlp-w")
        yield Env(client, IPAMClient(datastore), host, wl)
    finally:
        for ns in (wl, host):
            if ns is not None:
                ns.delete()


def _add(env: Env, *requests: str) -> WorkloadEndpoint:
    return add_workload(env.client, env.ipam, env.where, list(requests), host_netns=env.host.name)


def test_add_configures_interface_endpoint_and_ipam(env: Env) -> None:
    ep = _add(env, "ipv4", "ipv6")
    (ip4,), (ip6,) = ep.ipv4_nets, ep.ipv6_nets
    assert env.endpoint() == ep and ep.state == "active"
    assert sorted(env.wl_addresses()) == sorted([ip4.split("/")[0], ip6.split("/")[0]])
    assert veth.link_mac("eth1", netns=env.wl.name) == ep.mac
    assert ep.name in env.host_links()
    info = env.ipam.get_assignment_attributes(ip4.split("/")[0])
    assert info is not None and info.handle_id == env.wl.name
    assert info.attributes == {"host": HOST, "orchestrator": "netns", "workload": env.wl.name,
                               "endpoint_id": ep.endpoint_id}
    routes = json.loads(env.wl.ip("-j", "route").stdout)
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth1"}.items() <= \
        routes[0].items() and "onlink" in routes[0]["flags"]
    assert "default via fe80::1 dev eth1" in env.wl.ip("-6", "route").stdout


def test_add_with_mtu_profiles_and_labels(env: Env) -> None:
    ep = add_workload(env.client, env.ipam, env.where, ["ipv4"], ifname="eth0", mtu=1400,
                      profiles=["p1", "p2"], labels={"app": "web"}, host_netns=env.host.name)
    assert ep.profile_ids == ("p1", "p2") and dict(ep.labels) == {"app": "web"}
    inside = json.loads(env.wl.ip("-j", "link", "show", "eth0").stdout)[0]
    outside = json.loads(env.host.ip("-j", "link", "show", ep.name).stdout)[0]
    assert inside["mtu"] == outside["mtu"] == 1400


@pytest.mark.parametrize("bad", [
    {"requests": ["ipv4", "banana"]}, {"requests": ["198.18.0.0/16"]},
    {"ifname": "a/b"}, {"mtu": 20}, {"profiles": ["bad name"]},
    {"labels": {"bad key!": "x"}}])
def test_bad_input_is_refused_before_anything_changes(env: Env, bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"ifname": "eth1", "host_netns": env.host.name}
    kwargs.update({k: v for k, v in bad.items() if k != "requests"})
    with pytest.raises(ValidationError):
        add_workload(env.client, env.ipam, env.where, bad.get("requests", ["ipv4"]), **kwargs)
    assert env.allocated() == 0 and env.endpoints() == []
    assert not any(n.startswith("cali") for n in env.host_links())


@pytest.mark.parametrize("step", ["second address", "interface", "endpoint"])
def test_add_failing_at_any_step_leaves_nothing(env: Env, step: str) -> None:
    client: Any = env.client
    ipam: Any = env.ipam
    if step == "second address":
        env.ipam.assign_ip("198.18.72.9", "someone-else", {}, HOST)  # taken: 2nd request fails
        requests = ["ipv4", "198.18.72.9"]
    else:
        requests = ["ipv4", "ipv6"]
    if step == "interface":
        env.wl.ip("link", "add", "eth1", "type", "veth", "peer", "name", "taken")  # name taken
    if step == "endpoint":
        client = FailOnce(env.client, "create_workload_endpoint")
    with pytest.raises(CalicoError):
        add_workload(client, ipam, env.where, requests, host_netns=env.host.name)
    assert env.endpoints() == []
    assert env.allocated() == (1 if step == "second address" else 0)
    assert not any(n.startswith(("cali", "tmp")) for n in env.host_links())
    assert env.wl_addresses() == []


def test_a_workload_is_added_once(env: Env) -> None:
    _add(env, "ipv4")
    with pytest.raises(AlreadyExists):
        _add(env, "ipv4")
    assert env.allocated() == 1 and len(env.endpoints()) == 1


@pytest.mark.parametrize("step", ["interface", "endpoint"])
def test_add_address_failing_leaves_the_workload_as_it_was(env: Env, step: str) -> None:
    ep = _add(env, "ipv4")
    client: Any = FailOnce(env.client, "update_workload_endpoint") if step == "endpoint" \
        else env.client
    ifname = "eth1" if step == "endpoint" else "eth9"  # no eth9: configuring it fails
    with pytest.raises(CalicoError):
        add_address(client, env.ipam, ep, env.wl.name, ifname, "ipv6", host_netns=env.host.name)
    assert env.endpoint() == ep
    assert env.allocated() == 1
    assert env.wl_addresses() == [ep.ipv4_nets[0].split("/")[0]]


# --- removing one address -------------------------------------------------------------------


def _two_addresses(env: Env) -> tuple[WorkloadEndpoint, str]:
    ep = _add(env, "ipv4")
    ip6 = add_address(env.client, env.ipam, ep, env.wl.name, "eth1", "ipv6",
                      host_netns=env.host.name)
    return env.endpoint(), ip6


def _assert_removed(env: Env, ep: WorkloadEndpoint, ip6: str) -> None:
    now = env.endpoint()
    assert now.ipv6_nets == () and now.ipv6_gateway is None
    assert now.ipv4_nets == ep.ipv4_nets
    assert env.wl_addresses() == [ep.ipv4_nets[0].split("/")[0]]
    assert "default" not in env.wl.ip("-6", "route").stdout
    assert env.ipam.get_assignment_attributes(ip6) is None
    assert env.allocated() == 1


@pytest.mark.parametrize("step, after", [
    ("endpoint", False), ("endpoint", True), ("interface", False), ("ipam", False),
    ("ipam", True)])
def test_remove_address_retried_after_a_failure_at_any_step_finishes(
        env: Env, monkeypatch: pytest.MonkeyPatch, step: str, after: bool) -> None:
    ep, ip6 = _two_addresses(env)
    client: Any = env.client
    ipam: Any = env.ipam
    if step == "endpoint":
        client = FailOnce(env.client, "update_workload_endpoint", after)
    elif step == "ipam":
        ipam = FailOnce(env.ipam, "release_ips", after)
    else:
        real = veth.remove_addresses

        def failing(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(veth, "remove_addresses", real)
            raise Injected("injected failure removing the address")

        monkeypatch.setattr(veth, "remove_addresses", failing)
    with pytest.raises(Injected):
        remove_address(client, ipam, ep, env.wl.name, "eth1", ip6)
    # The retry, as `calicoctl container C ip remove` does it: the endpoint read afresh.
    # When the failure came after the last step's write, all was done already.
    if step == "ipam" and after:
        with pytest.raises(NotFound):
            remove_address(env.client, env.ipam, env.endpoint(), env.wl.name, "eth1", ip6)
    else:
        remove_address(env.client, env.ipam, env.endpoint(), env.wl.name, "eth1", ip6)
    _assert_removed(env, ep, ip6)
    with pytest.raises(NotFound):
        remove_address(env.client, env.ipam, env.endpoint(), env.wl.name, "eth1", ip6)


def test_remove_address_when_the_interface_was_deleted_underneath(env: Env) -> None:
    ep, ip6 = _two_addresses(env)
    env.wl.ip("link", "del", "eth1")  # the host end goes with it
    remove_address(env.client, env.ipam, env.endpoint(), env.wl.name, "eth1", ip6)
    assert env.endpoint().ipv6_nets == ()
    assert env.ipam.get_assignment_attributes(ip6) is None


def test_a_retried_remove_address_never_frees_an_address_another_workload_got(
        env: Env) -> None:
    ep, ip6 = _two_addresses(env)
    ipam: Any = FailOnce(env.ipam, "release_ips", after=True)
    with pytest.raises(Injected):
        remove_address(env.client, ipam, ep, env.wl.name, "eth1", ip6)
    env.ipam.assign_ip(ip6, "other-workload", {"endpoint_id": "other"}, HOST)
    with pytest.raises(NotFound):
        remove_address(env.client, env.ipam, env.endpoint(), env.wl.name, "eth1", ip6)
    info = env.ipam.get_assignment_attributes(ip6)
    assert info is not None and info.handle_id == "other-workload"


# --- removing the workload ------------------------------------------------------------------


@pytest.mark.parametrize("step, after", [
    ("mark inactive", False), ("interface", False), ("ipam", False), ("ipam", True),
    ("endpoint", False), ("endpoint", True)])
def test_remove_workload_retried_after_a_failure_at_any_step_finishes(
        env: Env, monkeypatch: pytest.MonkeyPatch, step: str, after: bool) -> None:
    ep = _add(env, "ipv4", "ipv6")
    client: Any = env.client
    ipam: Any = env.ipam
    if step == "mark inactive":
        client = FailOnce(env.client, "update_workload_endpoint")
    elif step == "endpoint":
        client = FailOnce(env.client, "delete_workload_endpoint", after)
    elif step == "ipam":
        ipam = FailOnce(env.ipam, "release_ips", after)
    else:
        real = veth.delete_veth

        def failing(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(veth, "delete_veth", real)
            raise Injected("injected failure deleting the veth")

        monkeypatch.setattr(veth, "delete_veth", failing)
    with pytest.raises(Injected):
        remove_workload(client, ipam, HOST, "netns", env.wl.name, host_netns=env.host.name)
    if not (step == "endpoint" and after):
        # Until the last step the endpoint stays, inactive once the first step is done:
        # felix has withdrawn its routes, and the retry finds it.
        assert [e.state for e in env.endpoints()] == \
            ["active" if step == "mark inactive" else "inactive"]
        removed = remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                                  host_netns=env.host.name)
        assert [e.endpoint_id for e in removed.endpoints] == [ep.endpoint_id]
    else:
        with pytest.raises(NotFound):
            remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                            host_netns=env.host.name)
    assert env.endpoints() == []
    assert env.allocated() == 0
    assert ep.name not in env.host_links()
    assert env.wl_addresses() == []
    assert remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                           missing_ok=True).endpoints == ()


def test_a_retried_remove_workload_never_frees_an_address_another_workload_got(
        env: Env) -> None:
    ep = _add(env, "ipv4")
    ip = ep.ipv4_nets[0].split("/")[0]
    client: Any = FailOnce(env.client, "delete_workload_endpoint")
    with pytest.raises(Injected):
        remove_workload(client, env.ipam, HOST, "netns", env.wl.name, host_netns=env.host.name)
    assert env.ipam.get_assignment_attributes(ip) is None
    env.ipam.assign_ip(ip, "other-workload", {"endpoint_id": "other"}, HOST)
    remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name, host_netns=env.host.name)
    assert env.endpoints() == []
    info = env.ipam.get_assignment_attributes(ip)
    assert info is not None and info.handle_id == "other-workload"


# --- several attachments per workload, assigned addresses, verification ------------------------


def test_one_endpoint_per_attachment_when_not_exclusive(env: Env) -> None:
    """A runtime that attaches one container to two networks: two endpoints of one
    workload, with host interface names of its choosing; each removed on its own."""
    first = add_workload(env.client, env.ipam, env.where, ["ipv4"], ifname="eth0",
                         endpoint_id="att.eth0", host_ifname="caliatt000eth0",
                         exclusive=False, host_netns=env.host.name)
    second = add_workload(env.client, env.ipam, env.where, ["ipv4"], ifname="eth1",
                          endpoint_id="att.eth1", host_ifname="caliatt000eth1",
                          exclusive=False, host_netns=env.host.name)
    assert (first.name, second.name) == ("caliatt000eth0", "caliatt000eth1")
    assert len(env.endpoints()) == 2 and env.allocated() == 2
    with pytest.raises(AlreadyExists):  # the same attachment twice
        add_workload(env.client, env.ipam, env.where, ["ipv4"], ifname="eth2",
                     endpoint_id="att.eth0", exclusive=False, host_netns=env.host.name)
    with pytest.raises(AlreadyExists):  # exclusive (the default) refuses a second one
        _add(env, "ipv4")
    with pytest.raises(ValidationError):
        add_workload(env.client, env.ipam, env.where, ["ipv4"], ifname="eth2",
                     host_ifname="a-name-too-long-for-linux", exclusive=False)
    assert env.allocated() == 2
    removed = remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                              endpoint_id="att.eth1", host_netns=env.host.name)
    assert [ep.endpoint_id for ep in removed.endpoints] == ["att.eth1"]
    assert [ep.endpoint_id for ep in env.endpoints()] == ["att.eth0"]
    assert "caliatt000eth1" not in env.host_links() and "caliatt000eth0" in env.host_links()
    assert env.allocated() == 1 and env.wl_addresses("eth1") == []
    with pytest.raises(NotFound):
        remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                        endpoint_id="att.eth1")
    assert remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                           endpoint_id="att.eth1", missing_ok=True).endpoints == ()


def test_addresses_assigned_elsewhere_are_configured_never_released(env: Env) -> None:
    ep = add_workload(env.client, env.ipam, env.where, [], assigned=["198.18.150.7"],
                      host_netns=env.host.name)
    assert ep.ipv4_nets == ("198.18.150.7/32",) and env.allocated() == 0
    assert env.wl_addresses() == ["198.18.150.7"]
    removed = remove_workload(env.client, env.ipam, HOST, "netns", env.wl.name,
                              host_netns=env.host.name)
    assert removed.released == () and env.endpoints() == []
    with pytest.raises(ValidationError):
        add_workload(env.client, env.ipam, env.where, [], assigned=["not-an-ip"])


def test_requests_are_checked_before_anything_is_assigned(env: Env) -> None:
    from workload.addresses import auto_request

    with pytest.raises(ValidationError, match="in no IP pool"):
        _add(env, "ipv4", "198.18.250.1")
    with pytest.raises(ValidationError, match="198.18.73.0/24"):
        add_workload(env.client, env.ipam, env.where,
                     ["ipv6", auto_request(4, ["198.18.73.0/24"], "ipv4_pools")])
    assert env.allocated() == 0 and env.endpoints() == []
    # Any of several pools: the one that exists serves.
    env.client.add_pool(IPPool("198.18.74.0/24"))
    ep = add_workload(env.client, env.ipam, env.where,
                      [auto_request(4, ["198.18.74.0/24"], "ipv4_pools")],
                      host_netns=env.host.name)
    assert ep.ipv4_nets[0].startswith("198.18.74.")
    with pytest.raises(ValidationError):
        auto_request(4, ["fd00::/64"])


def test_verify_compares_the_kernel_with_the_endpoint(env: Env) -> None:
    from workload.verify import verify_workload

    ep = _add(env, "ipv4", "ipv6")
    assert verify_workload(ep, env.wl.name, "eth1", host_netns=env.host.name) == []
    ip6 = ep.ipv6_nets[0].split("/")[0]
    env.wl.ip("-6", "addr", "del", f"{ip6}/128", "dev", "eth1")
    env.wl.ip("addr", "add", "198.18.72.250/32", "dev", "eth1")
    problems = verify_workload(ep, env.wl.name, "eth1", host_netns=env.host.name)
    assert any(ip6 in p and "lacks" in p for p in problems)
    assert any("198.18.72.250" in p and "does not list" in p for p in problems)
    env.wl.ip("-6", "route", "del", "default", "dev", "eth1")
    assert "interface eth1 has no default route via fe80::1" in verify_workload(
        ep, env.wl.name, "eth1", host_netns=env.host.name)
    env.host.ip("link", "set", ep.name, "down")
    assert any(f"host interface {ep.name} is down" in p
               for p in verify_workload(ep, env.wl.name, "eth1", host_netns=env.host.name))
    env.wl.ip("link", "del", "eth1")
    problems = verify_workload(ep, env.wl.name, "eth1", host_netns=env.host.name)
    assert "interface eth1 does not exist in the workload's namespace" in problems
    assert f"host interface {ep.name} does not exist" in problems
