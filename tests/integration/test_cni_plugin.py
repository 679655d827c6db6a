"""The `calico` and `calico-ipam` CNI plugins driven exactly as a runtime drives them:
the executables that `calicoctl cni install` puts in a bin dir, run with the CNI_*
variables and the configuration on stdin (tests/support/cnidriver.py), inside a
simulated host's namespace, against a real etcd and real container namespaces.

Every spec version 0.3.0-1.1.0 (ADD, CHECK, DEL twice, VERSION; GC and STATUS for
1.1.0); bad configurations and CNI_ARGS give the right error code and leave no
endpoint, no address and no interface behind; a kubelet-style sequence; IPAM
delegated to the reference host-local plugin; calico-ipam on its own; calico chained
with the reference portmap plugin; what an interrupted ADD leaves is cleaned by DEL;
parallel ADDs get distinct addresses.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cni.config import host_ifname
from libcalico import keyspace as ks
from libcalico.client import CalicoClient
from libcalico.datastore import Datastore
from libcalico.ipam import IPAMClient
from libcalico.model import IPPool
from netsim.etcd import EtcdServer
from netsim.netns import Namespace
from netsim.topology import calicoctl_path
from tests.support.cnidriver import REFERENCE_PLUGINS, Call, Driver

pytestmark = [pytest.mark.etcd, pytest.mark.root]

POOL4, POOL6 = "198.18.96.0/20", "fd00:198:96::/112"
NODE = "cni-node"
VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@pytest.fixture(scope="module")
def bin_dir() -> Iterator[str]:
    """The plugins as an operator installs them: `calicoctl cni install --bin-dir`."""
    with tempfile.TemporaryDirectory(prefix="cni-bin-") as tmp:
        proc = subprocess.run([calicoctl_path(), "cni", "install", "--bin-dir", tmp],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        yield tmp


@dataclass
class Env:
    driver: Driver
    store: Datastore
    client: CalicoClient
    etcd_url: str
    tmp: Path
    host: Namespace
    containers: list[Namespace] = field(default_factory=list)

    def container(self) -> Namespace:
        ns = Namespace("cni-c")
        self.containers.append(ns)
        return ns

    def conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version, "name": "net1", "type": "calico",
            "etcd_endpoints": self.etcd_url, "nodename": NODE,
            "log_file_path": str(self.tmp / "cni.log"),
            "ipam": {"type": "calico-ipam", "assign_ipv6": True}}
        conf.update(extra)
        return conf

    def endpoints(self) -> dict[str, dict[str, Any]]:
        kvs, _ = self.store.list(ks.host_workload_dir(NODE))
        return {kv.key: json.loads(kv.value) for kv in kvs}

    def allocated(self) -> int:
        return sum(u.allocated for u in IPAMClient(self.store).usage())

    def host_links(self) -> list[str]:
        out = self.host.ip("-j", "link", "show").stdout
        return [link["ifname"] for link in json.loads(out)]

    def nothing_left(self) -> None:
        assert self.endpoints() == {}
        assert self.allocated() == 0
        assert not [n for n in self.host_links() if n.startswith("cali")]


@pytest.fixture
def env(unix_etcd: EtcdServer, bin_dir: str) -> Iterator[Env]:
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    client = CalicoClient(store)
    client.add_pool(IPPool(POOL4))
    client.add_pool(IPPool(POOL6))
    host = Namespace("cni-h")
    with tempfile.TemporaryDirectory(prefix="cni-test-") as tmp:
        e = Env(Driver(host.name, [bin_dir, REFERENCE_PLUGINS]), store, client,
                unix_etcd.client_url, Path(tmp), host)
        try:
            yield e
        finally:
            for ns in e.containers:
                ns.delete()
            host.delete()
            store.delete_prefix("/calico/")
            store.close()


def link(ns: Namespace, ifname: str) -> dict[str, Any]:
    return json.loads(ns.ip("-j", "addr", "show", ifname).stdout)[0]


def global_addresses(ns: Namespace, ifname: str) -> list[str]:
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in link(ns, ifname)["addr_info"]
                  if a["scope"] == "global")


def ok(call: Call) -> Any:
    assert call.rc == 0, (call.stdout, call.stderr)
    return call.out


def failed(call: Call, code: int, *words: str) -> dict[str, Any]:
    assert call.rc == 1 and call.code == code, (call.stdout, call.stderr)
    for word in words:
        assert word in call.out["msg"], call.out
    assert set(call.out) <= {"cniVersion", "code", "msg", "details"}
    return call.out


# --- every spec version ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_spec_version(env: Env, version: str) -> None:
    c = env.container()
    conf = env.conf(version)
    result = ok(env.driver.call("ADD", conf, container="ctr1", netns=c.name))
    assert result["cniVersion"] == version
    host_if, cont_if = result["interfaces"]
    assert host_if["name"] == host_ifname("ctr1", "eth0") and "sandbox" not in host_if
    assert cont_if == {"name": "eth0", "mac": link(c, "eth0")["address"],
                       "sandbox": f"/run/netns/{c.name}"}
    assert host_if["mac"] == json.loads(env.host.ip("-j", "link", "show", host_if["name"])
                                        .stdout)[0]["address"]
    v4, v6 = result["ips"]
    assert v4["address"].endswith("/32") and v6["address"].endswith("/128")
    assert (v4["gateway"], v6["gateway"], v4["interface"], v6["interface"]) == \
        ("169.254.1.1", "fe80::1", 1, 1)
    if version < "1.0.0":
        assert (v4["version"], v6["version"]) == ("4", "6")
    else:
        assert "version" not in v4 and "version" not in v6
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                                {"dst": "::/0", "gw": "fe80::1"}]
    # The kernel has what the result says; the endpoint records it.
    assert global_addresses(c, "eth0") == sorted([v4["address"], v6["address"]])
    routes = c.ip("route").stdout
    assert "default via 169.254.1.1 dev eth0" in routes
    ((key, ep),) = env.endpoints().items()
    parsed = ks.parse_key(key)
    assert isinstance(parsed, ks.WorkloadEndpointKey)
    assert (parsed.orchestrator, parsed.workload, parsed.endpoint_id) == \
        ("cni", "ctr1", "ctr1.eth0")
    assert ep["ipv4_nets"] == [v4["address"]] and ep["ipv6_nets"] == [v6["address"]]
    assert (ep["name"], ep["mac"], ep["profile_ids"]) == (host_if["name"], cont_if["mac"],
                                                         ["net1"])
    assert ep["labels"]["projectcalico.org/network"] == "net1"
    assert env.client.get_profile("net1").tags == ("net1",)
    # CHECK exists from 0.4.0 on.
    check = env.driver.call("CHECK", {**conf, "prevResult": result}, container="ctr1",
                            netns=c.name)
    if version < "0.4.0":
        failed(check, 1, "CHECK")
    else:
        assert ok(check) is None and check.stdout == ""
    # DEL (with prevResult from 0.4.0 on), twice: the second finds nothing and succeeds.
    del_conf = {**conf, "prevResult": result} if version >= "0.4.0" else conf
    for _ in range(2):
        call = env.driver.call("DEL", del_conf, container="ctr1", netns=c.name)
        assert ok(call) is None and call.stdout == ""
        env.nothing_left()
    assert "eth0" not in c.ip("link").stdout
    # VERSION answers in the version asked.
    assert ok(env.driver.call("VERSION", {"cniVersion": version})) == {
        "cniVersion": version, "supportedVersions": list(VERSIONS)}


def test_del_succeeds_when_the_container_is_gone(env: Env) -> None:
    c = env.container()
    ok(env.driver.call("ADD", env.conf(), container="gone1", netns=c.name))
    netns_path = f"/run/netns/{c.name}"
    c.delete()  # the container's namespace goes first, taking its end of the veth
    ok(env.driver.call("DEL", env.conf(), container="gone1", netns=netns_path))
    env.nothing_left()
    ok(env.driver.call("DEL", env.conf(), container="gone1", netns=""))  # no CNI_NETNS
    ok(env.driver.call("DEL", env.conf(), container="never-added", netns=""))


def test_gc_and_status(env: Env) -> None:
    conf = env.conf("1.1.0")
    c1, c2 = env.container(), env.container()
    ok(env.driver.call("ADD", conf, container="keep", netns=c1.name))
    gone = ok(env.driver.call("ADD", conf, container="stale", netns=c2.name))
    # An address the network's IPAM still holds for an ADD that never finished.
    orphan = IPAMClient(env.store).auto_assign(
        1, 0, "net1.orphan.eth0", {"host": NODE}, NODE).ipv4s
    # Another node's attachment of the same network is not this node's to collect.
    foreign = IPAMClient(env.store).auto_assign(
        1, 0, "net1.elsewhere.eth0", {"host": "other-node"}, "other-node").ipv4s
    assert env.allocated() == 6
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    call = env.driver.call("GC", gc, drop=("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"))
    assert ok(call) is None and call.stdout == ""
    eps = env.endpoints()
    assert [ks.parse_key(k).workload for k in eps] == ["keep"]  # type: ignore[union-attr]
    assert env.allocated() == 3  # keep's two, and the other node's
    held = IPAMClient(env.store)
    for ip in [a["address"].split("/")[0] for a in gone["ips"]] + orphan:
        assert held.get_assignment_attributes(ip) is None
    assert held.get_assignment_attributes(foreign[0]) is not None
    assert gone["interfaces"][0]["name"] not in env.host_links()
    # STATUS: ready; no usable pool -> 50; etcd unreachable -> 50.
    status = env.driver.call("STATUS", conf, drop=("CNI_CONTAINERID", "CNI_NETNS"))
    assert ok(status) is None and status.stdout == ""
    only_v4 = {**conf, "ipam": {"type": "calico-ipam", "assign_ipv6": True,
                                "ipv6_pools": ["fd00:198:97::/112"]}}
    failed(env.driver.call("STATUS", only_v4), 50, "IPv6")
    failed(env.driver.call("STATUS", {**conf, "etcd_endpoints": "http://198.18.255.1:1"}), 50)
    # GC and STATUS need 1.1.0.
    failed(env.driver.call("GC", env.conf("1.0.0")), 1, "GC")


# --- bad input: right code, nothing left behind ----------------------------------------------


BAD_CASES = [
    # (id, config change, env change, CNI_ARGS, code, word in msg)
    ("undecodable", None, {}, "IgnoreUnknown=1", 6, "decode"),
    ("version", {"cniVersion": "0.2.0"}, {}, "IgnoreUnknown=1", 1, "0.2.0"),
    ("mtu", {"mtu": 10}, {}, "IgnoreUnknown=1", 7, "mtu"),
    ("policy", {"policy": {"type": "k8s"}}, {}, "IgnoreUnknown=1", 7, "policy.type"),
    ("no-ipam", {"ipam": None}, {}, "IgnoreUnknown=1", 7, "ipam"),
    ("ipam-type", {"ipam": {"type": "no-such-ipam"}}, {}, "IgnoreUnknown=1", 7, "ipam.type"),
    ("missing-pool", {"ipam": {"type": "calico-ipam", "ipv4_pools": ["198.18.200.0/24"]}}, {},
     "IgnoreUnknown=1", 7, "ipam.ipv4_pools"),
    ("no-netns", {}, {"CNI_NETNS": ""}, "IgnoreUnknown=1", 4, "CNI_NETNS"),
    ("gone-netns", {}, {"CNI_NETNS": "/run/netns/cni-no-such-ns"}, "IgnoreUnknown=1", 4,
     "CNI_NETNS"),
    ("containerid", {}, {"CNI_CONTAINERID": "bad id"}, "IgnoreUnknown=1", 4,
     "CNI_CONTAINERID"),
    ("ifname", {}, {"CNI_IFNAME": "x" * 16}, "IgnoreUnknown=1", 4, "CNI_IFNAME"),
    ("ip-garbage", {}, {}, "IgnoreUnknown=1;IP=198.18.96.300", 4, "CNI_ARGS IP"),
    ("ip-no-pool", {}, {}, "IgnoreUnknown=1;IP=198.18.250.1", 4, "CNI_ARGS IP"),
    ("unknown-arg", {}, {}, "FOO=bar", 4, "FOO"),
    ("args-pairs", {}, {}, "IgnoreUnknown", 4, "CNI_ARGS"),
    ("k8s-ns-policy", {"policy": {"type": "k8s-namespace"}}, {}, "IgnoreUnknown=1", 4,
     "K8S_POD_NAMESPACE"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_and_args_fail_cleanly(env: Env, case: tuple[Any, ...]) -> None:
    _, change, env_change, args, code, word = case
    c = env.container()
    conf: Any = b"{not json" if change is None else {**env.conf(), **change}
    if isinstance(conf, dict):
        conf = {k: v for k, v in conf.items() if v is not None}
    call = env.driver.call("ADD", conf, container="bad1", netns=c.name, args=args,
                           env=env_change)
    out = failed(call, code, word)
    assert out["cniVersion"] == (conf.get("cniVersion") if isinstance(conf, dict)
                                 else "1.1.0")
    env.nothing_left()
    assert not env.client.profile_exists("net1")  # a failed ADD makes no profile either
    assert "eth0" not in c.ip("link").stdout
    assert call.stderr == ""  # logs go to the log file


def test_address_in_use_and_pools_exhausted(env: Env) -> None:
    c1, c2 = env.container(), env.container()
    ok(env.driver.call("ADD", env.conf(), container="a", netns=c1.name,
                       args="IgnoreUnknown=1;IP=198.18.96.7"))
    failed(env.driver.call("ADD", env.conf(), container="b", netns=c2.name,
                           args="IgnoreUnknown=1;IP=198.18.96.7"), 102, "198.18.96.7")
    assert len(env.endpoints()) == 1 and env.allocated() == 2
    assert "eth0" not in c2.ip("link").stdout
    ok(env.driver.call("DEL", env.conf(), container="a", netns=c1.name))
    # A pool with room for one more address: the second ADD finds it exhausted and
    # releases the IPv4 address it got before failing on IPv6... and vice versa.
    env.store.delete_prefix(ks.pool_dir(4))
    env.client.add_pool(IPPool("198.18.99.0/31", block_size=31))
    conf = env.conf(ipam={"type": "calico-ipam"})
    for name in ("x1", "x2"):
        ok(env.driver.call("ADD", conf, container=name, netns=env.container().name))
    failed(env.driver.call("ADD", conf, container="x3", netns=c2.name), 101)
    assert len(env.endpoints()) == 2 and env.allocated() == 2


def test_a_failure_after_assignment_undoes_everything(env: Env) -> None:
    c = env.container()
    c.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")  # taken
    failed(env.driver.call("ADD", env.conf(), container="clash", netns=c.name), 103, "eth0")
    env.nothing_left()
    assert not env.client.profile_exists("net1")  # the profile it made is taken back


def test_del_with_etcd_unreachable_asks_to_try_again(env: Env) -> None:
    c = env.container()
    ok(env.driver.call("ADD", env.conf(), container="t1", netns=c.name))
    conf = env.conf(etcd_endpoints="http://198.18.255.1:1")
    failed(env.driver.call("DEL", conf, container="t1", netns=c.name), 11)
    assert len(env.endpoints()) == 1  # nothing half-removed
    ok(env.driver.call("DEL", env.conf(), container="t1", netns=c.name))
    env.nothing_left()


# --- Kubernetes-style use --------------------------------------------------------------------


def test_kubelet_sequence_add_check_del_twice(env: Env) -> None:
    """What a kubelet (through its runtime) does for a pod, without a kubelet: ADD with
    the pod's CNI_ARGS, CHECK with prevResult, DEL, DEL again."""
    c = env.container()
    args = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;"
            "K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=1234")
    conf = env.conf("1.0.0", policy={"type": "k8s-namespace"})
    result = ok(env.driver.call("ADD", conf, container="sandbox1", netns=c.name, args=args))
    ((key, ep),) = env.endpoints().items()
    parsed = ks.parse_key(key)
    assert isinstance(parsed, ks.WorkloadEndpointKey)
    assert (parsed.hostname, parsed.orchestrator, parsed.workload) == (NODE, "k8s",
                                                                       "shop.web-0")
    assert ep["profile_ids"] == ["k8s_ns.shop"]
    assert ep["labels"] == {"projectcalico.org/namespace": "shop",
                            "projectcalico.org/network": "net1",
                            "projectcalico.org/orchestrator": "k8s"}
    profile = env.client.get_profile("k8s_ns.shop")
    assert profile.tags == ("k8s_ns.shop",)
    assert profile.rules.inbound[0].src_tag == "k8s_ns.shop"
    check = {**conf, "prevResult": result}
    ok(env.driver.call("CHECK", check, container="sandbox1", netns=c.name, args=args))
    # The same pod's next sandbox gets its own endpoint; the old one's DEL leaves it.
    c2 = env.container()
    ok(env.driver.call("ADD", conf, container="sandbox2", netns=c2.name, args=args))
    assert len(env.endpoints()) == 2
    for _ in range(2):
        ok(env.driver.call("DEL", check, container="sandbox1", netns=c.name, args=args))
        eps = env.endpoints()
        assert len(eps) == 1 and next(iter(eps)).endswith("/endpoint/sandbox2.eth0")
    ok(env.driver.call("DEL", conf, container="sandbox2", netns=c2.name, args=args))
    env.nothing_left()


def test_check_reports_what_differs(env: Env) -> None:
    c = env.container()
    result = ok(env.driver.call("ADD", env.conf(), container="chk", netns=c.name))
    conf = {**env.conf(), "prevResult": result}
    v4 = result["ips"][0]["address"]
    c.ip("addr", "del", v4, "dev", "eth0")
    out = failed(env.driver.call("CHECK", conf, container="chk", netns=c.name), 104)
    assert v4.split("/")[0] in out["details"] and "lacks" in out["details"]
    assert "default route via 169.254.1.1" in out["details"]
    # Repaired by hand (the kernel dropped the gateway's neighbour entry with the last
    # IPv4 address, and CHECK says so until it is back).
    c.ip("addr", "add", v4, "dev", "eth0")
    c.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0", "onlink")
    out = failed(env.driver.call("CHECK", conf, container="chk", netns=c.name), 104)
    assert "neighbour entry for 169.254.1.1" in out["details"]
    c.ip("neigh", "replace", "169.254.1.1", "lladdr", result["interfaces"][0]["mac"], "dev",
         "eth0", "nud", "permanent")
    ok(env.driver.call("CHECK", conf, container="chk", netns=c.name))
    # prevResult naming another address is a difference too.
    wrong = json.loads(json.dumps(result))
    wrong["ips"][0]["address"] = "198.18.96.250/32"
    out = failed(env.driver.call("CHECK", {**conf, "prevResult": wrong}, container="chk",
                                 netns=c.name), 104)
    assert "prevResult" in out["details"]
    failed(env.driver.call("CHECK", conf, container="other", netns=c.name), 104,
           "no endpoint")


# --- other IPAM and chaining -----------------------------------------------------------------


def test_host_local_ipam_is_delegated(env: Env) -> None:
    data_dir = env.tmp / "host-local"
    ipam = {"type": "host-local", "subnet": "198.18.112.0/24", "dataDir": str(data_dir)}
    conf = env.conf(ipam=ipam)
    c = env.container()
    result = ok(env.driver.call("ADD", conf, container="hl1", netns=c.name))
    (ip,) = result["ips"]
    assert ip["address"].startswith("198.18.112.") and ip["address"].endswith("/32")
    assert global_addresses(c, "eth0") == [ip["address"]]
    lease = ip["address"].split("/")[0]
    assert (data_dir / "net1" / lease).exists()
    assert env.allocated() == 0  # calico-ipam was not involved
    ok(env.driver.call("CHECK", {**conf, "prevResult": result}, container="hl1",
                       netns=c.name))
    ok(env.driver.call("DEL", conf, container="hl1", netns=c.name))
    assert not (data_dir / "net1" / lease).exists()
    env.nothing_left()
    # A failure after host-local assigned gives its address back (host-local DEL).
    c2 = env.container()
    c2.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
    failed(env.driver.call("ADD", conf, container="hl2", netns=c2.name), 103)
    assert [p.name for p in (data_dir / "net1").iterdir()
            if p.name[0].isdigit()] == []
    env.nothing_left()


def test_calico_ipam_on_its_own(env: Env) -> None:
    conf = {"cniVersion": "1.0.0", "name": "net2", "type": "ptp",
            "ipam": {"type": "calico-ipam", "assign_ipv6": True},
            "etcd_endpoints": env.etcd_url, "nodename": NODE,
            "log_file_path": str(env.tmp / "cni.log")}
    call = env.driver.call("ADD", conf, plugin="calico-ipam", container="ipam1", netns="x")
    result = ok(call)
    assert set(result) == {"cniVersion", "ips", "dns"}
    assert [ip["address"].split("/")[1] for ip in result["ips"]] == ["32", "128"]
    assert env.allocated() == 2
    owner = IPAMClient(env.store).get_assignment_attributes(
        result["ips"][0]["address"].split("/")[0])
    assert owner is not None and owner.handle_id == "net2.ipam1.eth0"
    ok(env.driver.call("CHECK", {**conf, "prevResult": result}, plugin="calico-ipam",
                       container="ipam1", netns="x"))
    failed(env.driver.call("CHECK", {**conf, "prevResult": result}, plugin="calico-ipam",
                           container="ipam2", netns="x"), 104)
    ip_call = env.driver.call("ADD", conf, plugin="calico-ipam", container="ipam3",
                              netns="x", args="IgnoreUnknown=1;IP=198.18.96.77")
    assert ok(ip_call)["ips"][0]["address"] == "198.18.96.77/32"
    for cid in ("ipam1", "ipam1", "ipam3"):
        ok(env.driver.call("DEL", conf, plugin="calico-ipam", container=cid, netns="x"))
    assert env.allocated() == 0


def test_calico_then_portmap_chain(env: Env) -> None:
    conflist = {"cniVersion": "1.0.0", "name": "net1", "plugins": [
        {k: v for k, v in env.conf().items() if k not in ("name", "cniVersion")},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True,
         "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80,
                                             "protocol": "tcp"}]}}]}
    c = env.container()
    final = env.driver.chain_add(conflist, container="pm1", netns=c.name)
    result = ok(final)
    v4 = result["ips"][0]["address"].split("/")[0]
    assert result["interfaces"][1]["sandbox"] == f"/run/netns/{c.name}"
    nat = env.host.exec("iptables-save", "-t", "nat").stdout
    assert f"--to-destination {v4}:80" in nat and "--dport 18080" in nat
    calls = env.driver.chain_del(conflist, prev=result, container="pm1", netns=c.name)
    assert [call.rc for call in calls] == [0, 0]
    assert f"{v4}:80" not in env.host.exec("iptables-save", "-t", "nat").stdout
    env.nothing_left()


# --- robustness ------------------------------------------------------------------------------


def test_mtu_and_two_networks_in_one_container(env: Env) -> None:
    c = env.container()
    first = ok(env.driver.call("ADD", env.conf(mtu=1400), container="two", netns=c.name))
    second = ok(env.driver.call("ADD", {**env.conf(), "name": "net2"}, container="two",
                                netns=c.name, ifname="eth1"))
    assert link(c, "eth0")["mtu"] == 1400 and link(c, "eth1")["mtu"] == 1500
    host_mtu = json.loads(env.host.ip("-j", "link", "show", first["interfaces"][0]["name"])
                          .stdout)[0]["mtu"]
    assert host_mtu == 1400
    assert first["interfaces"][0]["name"] != second["interfaces"][0]["name"]
    assert len(env.endpoints()) == 2
    assert sorted(env.client.list_profile_names()) == ["net1", "net2"]
    ok(env.driver.call("DEL", {**env.conf(), "name": "net2"}, container="two", netns=c.name,
                       ifname="eth1"))
    assert len(env.endpoints()) == 1 and "eth1" not in c.ip("link").stdout
    assert global_addresses(c, "eth0")
    ok(env.driver.call("DEL", env.conf(), container="two", netns=c.name))
    env.nothing_left()


def test_del_cleans_up_after_an_interrupted_add(env: Env) -> None:
    """An ADD killed after it assigned addresses and made the veth, before it wrote the
    endpoint: DEL finds both by the attachment's deterministic names."""
    c = env.container()
    name = host_ifname("killed", "eth0")
    env.host.ip("link", "add", name, "type", "veth", "peer", "name", "tmpkilled")
    IPAMClient(env.store).auto_assign(1, 1, "net1.killed.eth0", {"host": NODE}, NODE)
    assert env.allocated() == 2
    ok(env.driver.call("DEL", env.conf(), container="killed", netns=c.name))
    env.nothing_left()


def test_parallel_adds_get_distinct_addresses(env: Env) -> None:
    count = 10
    names = [env.container() for _ in range(count)]
    conf = env.conf(ipam={"type": "calico-ipam"})
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda i: env.driver.call("ADD", conf, container=f"p{i}",
                                                          netns=names[i].name), range(count)))
    addresses = [ok(r)["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == count
    with ThreadPoolExecutor(count) as pool:
        dels = list(pool.map(lambda i: env.driver.call("DEL", conf, container=f"p{i}",
                                                       netns=names[i].name), range(count)))
    assert all(d.rc == 0 for d in dels)
    env.nothing_left()


def test_logs_go_to_the_log_file_never_stdout(env: Env) -> None:
    c = env.container()
    conf = env.conf(log_level="debug")
    call = env.driver.call("ADD", conf, container="log1", netns=c.name)
    assert json.loads(call.stdout) == call.out and call.stdout.count("\n") == 1
    assert call.stderr == ""
    log = (env.tmp / "cni.log").read_text()
    assert "calico ADD log1" in log and "added cni log1" in log and "DEBUG" in log
    bad = env.driver.call("ADD", {**conf, "mtu": 1}, container="log2", netns=c.name)
    assert bad.stdout.count("\n") == 1 and bad.stderr == ""
    assert "invalid mtu 1" in (env.tmp / "cni.log").read_text()
    ok(env.driver.call("DEL", conf, container="log1", netns=c.name))
    # No log file possible: the log goes to stderr, stdout still carries only JSON.
    noway = {**conf, "log_file_path": "/proc/no/such/dir/cni.log"}
    call = env.driver.call("VERSION", noway)
    assert ok(call)["cniVersion"] == "1.0.0"
    assert os.path.exists(str(env.tmp / "cni.log"))


def test_mesos_labels_and_the_ips_capability(env: Env) -> None:
    """Mesos passes the network's labels in `args`; the `ips` capability asks for an
    address through runtimeConfig."""
    c = env.container()
    conf = env.conf(args={"org.apache.mesos": {"network_info": {"name": "net1", "labels": {
        "labels": [{"key": "app", "value": "db"}, {"key": "tier", "value": "back"}]}}}},
        runtimeConfig={"ips": ["198.18.96.66/20"]})
    result = ok(env.driver.call("ADD", conf, container="mesos1", netns=c.name))
    assert result["ips"][0]["address"] == "198.18.96.66/32"
    ((_, ep),) = env.endpoints().items()
    assert ep["labels"]["app"] == "db" and ep["labels"]["tier"] == "back"
    ok(env.driver.call("DEL", conf, container="mesos1", netns=c.name))
    bad = {**env.conf(args={"cni": {"labels": [{"key": "bad key!", "value": "x"}]}}),
           "name": "net9"}
    failed(env.driver.call("ADD", bad, container="mesos2", netns=c.name), 7, "args labels key")
    assert env.client.list_profile_names() == ["net1"]  # refused before any write
    env.nothing_left()
