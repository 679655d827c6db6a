"""`calicoctl container` with real namespaces and veths, run as subprocesses inside a
simulated host namespace (so the host side of every veth lands there, never in the
machine's own namespace)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from libcalico import keyspace as ks
from netsim.netns import Namespace
from netsim.topology import calicoctl_path

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

@pytest.fixture
def env(unix_etcd):
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    store.put(ks.pool_key("198.18.64.0/24"), json.dumps({"cidr": "198.18.64.0/24"}))
    store.put(ks.pool_key("fd00:64::/120"), json.dumps({"cidr": "fd00:64::/120",
                                                        "block_size": 124}))
    host = Namespace("ctl-h")
    wl1 = Namespace("ctl-w")
    wl2 = Namespace("ctl-w")
    try:
        yield store, host, wl1, wl2
    finally:
        for ns in (wl1, wl2, host):
            ns.delete()
        store.close()


def ctl(unix_etcd, host, *args, code=0):
    cmd = ["ip", "netns", "exec", host.name, calicoctl_path(), *args]
    env = {**os.environ, **unix_etcd.env(), "HOSTNAME": "ctl-node"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _endpoints(store):
    kvs, _ = store.list(ks.host_workload_dir("ctl-node"))
    return {kv.key: json.loads(kv.value) for kv in kvs}


def _allocated(store):
    from libcalico.ipam import IPAMClient

    return sum(u.allocated for u in IPAMClient(store).usage())


def test_container_add_remove_netns(unix_etcd, env):
    store, host, wl1, wl2 = env
    out = ctl(unix_etcd, host, "container", "add", wl1.name, "ipv4").stdout
    assert "198.18.64." in out
    eps = _endpoints(store)
    assert len(eps) == 1
    key, ep = next(iter(eps.items()))
    parsed = ks.parse_key(key)
    assert (parsed.orchestrator, parsed.workload) == ("netns", wl1.name)
    ip = ep["ipv4_nets"][0].split("/")[0]
    assert ep["name"] == "cali" + parsed.endpoint_id[:11]
    # The veth: host side in the host namespace, workload side eth1 with the address.
    host_link = json.loads(host.ip("-j", "link", "show", ep["name"]).stdout)[0]
    assert host_link["operstate"] in ("UP", "UNKNOWN", "LOWERLAYERDOWN") or host_link
    addrs = json.loads(wl1.ip("-j", "addr", "show", "eth1").stdout)[0]
    assert addrs["address"] == ep["mac"]
    assert f"{ip}/32" in [f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"]]
    routes = json.loads(wl1.ip("-j", "route").stdout)
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth1"}.items() <= \
        routes[0].items() and "onlink" in routes[0]["flags"]
    neigh = json.loads(wl1.ip("-j", "neigh", "show", "169.254.1.1").stdout)[0]
    assert neigh["lladdr"] == host_link["address"] and "PERMANENT" in neigh["state"]
    # IPAM has the allocation, with the workload as handle.
    from libcalico.ipam import IPAMClient

    info = IPAMClient(store).get_assignment_attributes(ip)
    assert info.handle_id == wl1.name and info.attributes["endpoint_id"] == parsed.endpoint_id

    # Second address (IPv6 from a pool CIDR), then remove it again.
    ctl(unix_etcd, host, "container", wl1.name, "ip", "add", "fd00:64::/120")
    ep = next(iter(_endpoints(store).values()))
    ip6 = ep["ipv6_nets"][0].split("/")[0]
    assert ep["ipv6_gateway"] == "fe80::1"
    assert ip6 in wl1.ip("-6", "addr", "show", "eth1").stdout
    assert "default via fe80::1" in wl1.ip("-6", "route").stdout
    out = ctl(unix_etcd, host, "container", wl1.name, "endpoint", "show").stdout
    assert ip6 in out and ip in out
    ctl(unix_etcd, host, "container", wl1.name, "ip", "remove", ip6)
    assert _endpoints(store)[key]["ipv6_nets"] == []
    assert ip6 not in wl1.ip("-6", "addr", "show", "eth1").stdout
    assert _allocated(store) == 1

    # Profiles on the container's endpoint.
    ctl(unix_etcd, host, "profile", "add", "ctlprof")
    ctl(unix_etcd, host, "container", wl1.name, "profile", "append", "ctlprof")
    assert _endpoints(store)[key]["profile_ids"] == ["ctlprof"]
    ctl(unix_etcd, host, "container", wl1.name, "profile", "set", "nosuch", code=2)
    ctl(unix_etcd, host, "container", wl1.name, "profile", "remove", "ctlprof")

    # Adding twice is refused; a specific address that is taken too.
    ctl(unix_etcd, host, "container", "add", wl1.name, "ipv4", code=3)
    ctl(unix_etcd, host, "container", "add", wl2.name, ip, code=3)
    assert _allocated(store) == 1 and len(_endpoints(store)) == 1

    # Remove leaves nothing: no veth, no endpoint, no allocation.
    ctl(unix_etcd, host, "container", "remove", f"/run/netns/{wl1.name}")
    assert _endpoints(store) == {}
    assert _allocated(store) == 0
    assert "cali" not in host.ip("link").stdout
    assert "eth1" not in wl1.ip("link").stdout
    ctl(unix_etcd, host, "container", "remove", wl1.name, code=3)


def test_container_add_failure_leaves_nothing(unix_etcd, env):
    store, host, wl1, _ = env
    wl1.ip("link", "add", "eth1", "type", "veth", "peer", "name", "ctl-peer")  # name taken
    res = ctl(unix_etcd, host, "container", "add", wl1.name, "198.18.64.7", code=3)
    assert "eth1" in res.stderr and "Traceback" not in res.stderr
    assert _endpoints(store) == {}
    assert _allocated(store) == 0
    assert "cali" not in host.ip("link").stdout
    assert "tmp" not in wl1.ip("link").stdout
    wl1.ip("link", "del", "eth1")
    # Bad requests fail before anything is created.
    ctl(unix_etcd, host, "container", "add", wl1.name, "198.19.0.1", code=2)  # in no pool
    ctl(unix_etcd, host, "container", "add", wl1.name, "198.18.0.0/16", code=2)  # not a pool
    ctl(unix_etcd, host, "container", "add", wl1.name, "banana", code=2)
    ctl(unix_etcd, host, "container", "add", "ctl-no-such-ns", "ipv4", code=3)
    assert _allocated(store) == 0 and _endpoints(store) == {}
    # With a free name it works, on a specific address.
    ctl(unix_etcd, host, "container", "add", wl1.name, "198.18.64.7", "--interface", "eth7")
    assert "198.18.64.7/32" in wl1.ip("addr", "show", "eth7").stdout
    ctl(unix_etcd, host, "container", "remove", wl1.name)
    assert _allocated(store) == 0


def test_every_per_container_form_takes_hostname(unix_etcd, env):
    """`container --hostname H CONTAINER ...` as the help promises: the endpoint lives
    under H (not $HOSTNAME), and every per-container form finds it there."""
    store, host, wl1, _ = env
    other = "ctl-other-node"
    ctl(unix_etcd, host, "profile", "add", "ctlprof")
    ctl(unix_etcd, host, "profile", "add", "ctlprof2")
    ctl(unix_etcd, host, "container", "--hostname", other, "add", wl1.name, "ipv4")
    kvs, _ = store.list(ks.host_workload_dir(other))
    assert len(kvs) == 1 and _endpoints(store) == {}  # not under $HOSTNAME
    key = kvs[0].key

    def ep():
        return json.loads(store.get_value(key))

    def named(*args, code=0):
        return ctl(unix_etcd, host, "container", "--hostname", other, wl1.name, *args,
                   code=code)

    shown = named("endpoint", "show", "-o", "json").stdout
    assert json.loads(shown)[0]["metadata"]["hostname"] == other
    named("ip", "add", "fd00:64::/120")
    ip6 = ep()["ipv6_nets"][0].split("/")[0]
    assert ip6 in wl1.ip("-6", "addr", "show", "eth1").stdout
    named("ip", "remove", ip6)
    assert ep()["ipv6_nets"] == []
    named("profile", "append", "ctlprof")
    named("profile", "set", "ctlprof2", "ctlprof")
    assert ep()["profile_ids"] == ["ctlprof2", "ctlprof"]
    named("profile", "remove", "ctlprof2")
    assert ep()["profile_ids"] == ["ctlprof"]
    # The same commands without --hostname look under $HOSTNAME and find nothing.
    ctl(unix_etcd, host, "container", wl1.name, "endpoint", "show", code=3)
    ctl(unix_etcd, host, "container", "--hostname", other, "remove", wl1.name)
    assert store.list(ks.host_workload_dir(other))[0] == [] and _allocated(store) == 0


def test_ip_remove_after_the_interface_vanished_and_remove_after_a_failure(unix_etcd, env):
    """A removal finishes when a real interface was deleted underneath it, and a remove
    repeated after an interrupted one (the endpoint left inactive) finishes the job."""
    store, host, wl1, _ = env
    ctl(unix_etcd, host, "container", "add", wl1.name, "ipv4")
    ctl(unix_etcd, host, "container", wl1.name, "ip", "add", "ipv6")
    key, ep = next(iter(_endpoints(store).items()))
    ip6 = ep["ipv6_nets"][0].split("/")[0]
    wl1.ip("link", "del", "eth1")  # the host end goes with it
    ctl(unix_etcd, host, "container", wl1.name, "ip", "remove", ip6)
    assert _endpoints(store)[key]["ipv6_nets"] == [] and _allocated(store) == 1
    ctl(unix_etcd, host, "container", wl1.name, "ip", "remove", ip6, code=3)
    # An interrupted remove: the first step (endpoint inactive) done, the rest not.
    store.put(key, json.dumps({**_endpoints(store)[key], "state": "inactive"}))
    ctl(unix_etcd, host, "container", "remove", wl1.name)
    assert _endpoints(store) == {} and _allocated(store) == 0
