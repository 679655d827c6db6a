"""calicoctl's overlay options against a real etcd: pool add --vxlan/--ipip and their
modes, their exclusions, IPIP refused where the kernel cannot do it, checksystem's
tunnel lines, pool show."""

from __future__ import annotations

import json

import pytest

from calicoctl.checksystem import tunnel_support
from libcalico import keyspace as ks
from tests.support.ctl import Ctl

pytestmark = pytest.mark.etcd


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


def stored(datastore, cidr):
    text = datastore.get_value(ks.pool_key(cidr))
    return None if text is None else json.loads(text)


def test_vxlan_modes_stored_and_changed_in_place(ctl, datastore):
    ctl("pool", "add", "198.19.0.0/16", "--vxlan")
    assert stored(datastore, "198.19.0.0/16") == {"cidr": "198.19.0.0/16",
                                                  "vxlan": "vxlan.calico"}
    ctl("pool", "add", "198.19.0.0/16", "--vxlan", "--vxlan-mode=cross-subnet",
        "--nat-outgoing")
    assert stored(datastore, "198.19.0.0/16") == {
        "cidr": "198.19.0.0/16", "vxlan": "vxlan.calico", "vxlan_mode": "cross-subnet",
        "masquerade": True}
    assert "vxlan:cross-subnet,nat-outgoing" in ctl("pool", "show").out
    wide = ctl("get", "ipPool", "-o", "wide").out
    assert "cross-subnet" in wide and "VXLAN" in wide
    ctl("pool", "add", "198.19.0.0/16")  # off again
    assert stored(datastore, "198.19.0.0/16") == {"cidr": "198.19.0.0/16"}
    ctl("pool", "range", "add", "198.20.0.0", "198.20.0.255", "--vxlan")
    assert stored(datastore, "198.20.0.0/24")["vxlan"] == "vxlan.calico"


@pytest.mark.parametrize(("args", "needle"), [
    (("198.19.0.0/16", "--vxlan", "--ipip"), "--vxlan and --ipip are exclusive"),
    (("198.19.0.0/16", "--vxlan-mode=cross-subnet"), "--vxlan-mode"),
    (("198.19.0.0/16", "--ipip-mode=cross-subnet"), "--ipip-mode"),
    (("fd00:9::/64", "--vxlan"), "VXLAN is only supported for IPv4 pools"),
    (("198.19.0.0/16", "--vxlan", "--vxlan-mode=sometimes"), "sometimes"),
])
def test_bad_encapsulation_options_are_one_line_errors_and_write_nothing(ctl, datastore,
                                                                          args, needle):
    res = ctl("pool", "add", *args, code=2)
    errors = [line for line in res.err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], res.err  # (click adds usage lines)
    assert "Traceback" not in res.err
    assert datastore.list(ks.POOL_DIR)[0] == []


def test_ipip_pool_refused_where_the_kernel_cannot_do_ipip(ctl, datastore, monkeypatch):
    monkeypatch.setattr("calicoctl.checksystem.tunnel_support",
                        lambda kind: (False, "`ip link add type ipip`: Error: Unknown "
                                             "device type."))
    res = ctl("pool", "add", "198.19.0.0/16", "--ipip", code=2)
    assert res.err.strip().splitlines() == [
        "Error: invalid ipip True: this host's kernel cannot do IPIP (`ip link add type "
        "ipip`: Error: Unknown device type.), so an IPIP pool would not work here; use "
        "--vxlan instead"]
    assert datastore.list(ks.POOL_DIR)[0] == []
    monkeypatch.setattr("calicoctl.checksystem.tunnel_support",
                        lambda kind: (True, "module built in"))
    ctl("pool", "add", "198.19.0.0/16", "--ipip", "--ipip-mode=cross-subnet")
    assert stored(datastore, "198.19.0.0/16") == {"cidr": "198.19.0.0/16", "ipip": "tunl0",
                                                  "ipip_mode": "cross-subnet"}


def test_checksystem_says_in_one_line_what_this_kernel_can_tunnel(ctl):
    res = ctl("checksystem", code=None)
    lines = {line.split("]", 1)[1].split(":", 1)[0].strip(): line
             for line in res.out.splitlines() if line.startswith("[")}
    for name, kind in (("kernel IPIP", "ipip"), ("kernel VXLAN", "vxlan")):
        supported, detail = tunnel_support(kind)
        line = lines[name]
        assert line.startswith("[  OK]" if supported else "[WARN]"), line
        assert detail in line
    if not tunnel_support("ipip")[0]:
        assert "IPIP pools cannot work on this host" in lines["kernel IPIP"]
    # A missing tunnel is a warning, never the reason the check fails.
    assert "kernel IPIP" not in res.err and "kernel VXLAN" not in res.err


def test_tunnel_support_from_files_when_it_cannot_probe(tmp_path):
    import gzip

    (tmp_path / "proc").mkdir()
    with gzip.open(tmp_path / "proc" / "config.gz", "wt") as f:
        f.write("# CONFIG_NET_IPIP is not set\nCONFIG_VXLAN=y\n")
    assert tunnel_support("ipip", root=str(tmp_path), probe=False) == (
        False, "CONFIG_NET_IPIP is not set in this kernel and it has no module")
    assert tunnel_support("vxlan", root=str(tmp_path), probe=False) == (True,
                                                                       "module built in")
    (tmp_path / "proc" / "config.gz").unlink()
    assert tunnel_support("ipip", root=str(tmp_path), probe=False)[0] is None


def test_node_run_checks_the_system_without_probing_tunnels(monkeypatch):
    """`node run` ignores the optional tunnel checks, so it does not run their probes (a
    throw-away network namespace and two processes each, per host started);
    `checksystem` still does."""
    from types import SimpleNamespace

    from calicoctl import checksystem, noderun

    probes = []
    monkeypatch.setattr(checksystem, "_probe_device",
                        lambda kind: probes.append(kind) or (True, ""))
    monkeypatch.setattr(noderun, "ctl", lambda: SimpleNamespace(
        store=SimpleNamespace(version=lambda: "3.5.0")))
    monkeypatch.setattr(checksystem, "REQUIRED_BINARIES", ("ip",))
    monkeypatch.setattr(checksystem, "REQUIRED_SYSCTLS", {})
    monkeypatch.setattr(checksystem, "module_available", lambda name, **kw: "loaded")
    noderun._check_system("bird")
    assert probes == []
    names = {name for name, _ok, _detail in checksystem.run_checks(lambda: "3.5.0")}
    assert sorted(probes) == ["ipip", "vxlan"] and names >= checksystem.OPTIONAL_CHECKS
