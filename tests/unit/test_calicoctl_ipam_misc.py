"""calicoctl ipam, diags, version, completion and the pure parsers, against real etcd."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from calicoctl.diags import MASK, mask_secrets
from calicoctl.status import parse_protocols, peer_from_name
from libcalico import keyspace as ks
from tests.support.ctl import Ctl, golden
from tests.support.fresh import fresh_python


@pytest.fixture
def ctl(datastore, etcd_server):
    return Ctl(etcd_server.env())


@pytest.mark.etcd
def test_ipam_release_info_show_check(ctl, datastore):
    import time

    from libcalico.ipam import IPAMClient

    ctl("pool", "add", "198.18.32.0/24")
    ipam = IPAMClient(datastore, clock=lambda: time.time() - 3600)  # allocated an hour ago
    got = ipam.auto_assign(2, 0, "wl-1", {"workload": "wl-1"}, host="ctl-host")
    a, b = got.ipv4s
    info = json.loads(ctl("ipam", "info", a, "-o", "json").out)
    assert info["handle_id"] == "wl-1" and info["attributes"] == {"workload": "wl-1"}
    assert "wl-1" in ctl("ipam", "info", a).out
    ctl("ipam", "info", "198.18.32.250", code=3)
    ctl("ipam", "info", "nonsense", code=2)
    shown = json.loads(ctl("ipam", "show", "-o", "json").out)
    assert shown[0]["cidr"] == "198.18.32.0/24" and shown[0]["allocated"] == 2
    assert shown[0]["blocks"][0]["host"] == "ctl-host"
    golden("ipam_show.txt", ctl("ipam", "show").out)
    assert "ctl-host" in ctl("ipam", "show", "--blocks").out

    # No endpoint uses the addresses: the check reports leaks and exits 1.
    res = ctl("ipam", "check", code=1)
    assert a in res.out and "leaked" in res.out
    ctl("ipam", "release", a)
    assert ipam.get_assignment_attributes(a) is None
    ctl("ipam", "release", a, code=3)
    res = ctl("ipam", "check", "--fix")
    assert "Released 1" in res.out
    assert ipam.get_assignment_attributes(b) is None
    assert "No problems found" in ctl("ipam", "check").out

    # A fresh allocation without an endpoint is a set-up in progress, not a leak: listed,
    # not a problem, and --fix keeps it - unless the grace period is shorter than its age.
    datastore.put(ks.bgp_host_key("ctl-host", "ip_addr_v4"), "198.18.255.1")
    young = IPAMClient(datastore).auto_assign(1, 0, "wl-young", host="ctl-host").ipv4s[0]
    res = ctl("ipam", "check", "--fix")
    assert f"in progress: {young} (handle wl-young" in res.out and "leaked" not in res.out
    assert "No problems found" in res.out
    assert ipam.get_assignment_attributes(young) is not None
    res = ctl("ipam", "check", "--grace-period", "0", code=1)
    assert f"leaked: {young}" in res.out and "in progress" not in res.out
    res = ctl("ipam", "check", "--grace-period", "-5", code=2)
    assert "grace-period" in res.err and "-5" in res.err


def test_ipam_check_default_grace_is_the_library_default():
    """The CLI's default (a literal: the CLI must not import IPAM to build its help) is
    the library's."""
    from calicoctl.ipam import ipam_check
    from libcalico.ipam import DEFAULT_GRACE_PERIOD

    (option,) = [p for p in ipam_check.params if p.name == "grace_period"]
    assert option.default == DEFAULT_GRACE_PERIOD


@pytest.mark.etcd
def test_pool_remove_in_use_needs_force(ctl, datastore):
    from libcalico.ipam import IPAMClient

    ctl("pool", "add", "198.18.33.0/24")
    IPAMClient(datastore).auto_assign(1, 0, "wl-2", host="ctl-host")
    res = ctl("pool", "remove", "198.18.33.0/24", code=3)
    assert "allocated" in res.err
    assert datastore.get(ks.pool_key("198.18.33.0/24")) is not None
    ctl("pool", "remove", "198.18.33.0/24", "--force")
    assert datastore.get(ks.pool_key("198.18.33.0/24")) is None
    assert datastore.list(ks.BLOCK_DIR)[0] == []


@pytest.mark.etcd
def test_pool_remove_several_is_all_or_nothing(ctl, datastore):
    from libcalico.ipam import IPAMClient

    ctl("pool", "add", "198.18.34.0/24", "198.18.35.0/24")
    ipam = IPAMClient(datastore)
    ip = ipam.auto_assign(1, 0, "wl-3", host="ctl-host", pools=["198.18.35.0/24"]).ipv4s[0]
    before = datastore.get(ks.pool_key("198.18.34.0/24"))
    res = ctl("pool", "remove", "198.18.34.0/24", "198.18.35.0/24", code=3)
    assert datastore.get(ks.pool_key("198.18.34.0/24")) == before  # the free one stays
    assert datastore.get(ks.pool_key("198.18.35.0/24")) is not None
    assert "198.18.35.0/24 still has 1 allocated" in res.err and "no pool was removed" in res.err
    ipam.release_ips([ip])
    ctl("pool", "remove", "198.18.34.0/24", "198.18.35.0/24")
    assert datastore.list(ks.POOL_DIR)[0] == [] and datastore.list(ks.IPAM_DIR)[0] == []


@pytest.mark.etcd
def test_diags_bundle_masks_secrets(ctl, datastore, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "felix.log").write_text("felix started\n")
    datastore.put(ks.global_config_key("EtcdKeyFile"), "/etc/secret.key")
    datastore.put(ks.libnetwork_network_key("n1"), json.dumps(
        {"Options": {"password": "hunter2", "mtu": 1500}}))
    datastore.put(ks.pool_key("198.18.0.0/24"), json.dumps({"cidr": "198.18.0.0/24"}))
    res = ctl("diags", "--log-dir", str(logs), "--output-dir", str(tmp_path / "out"),
              "--bird-socket", str(tmp_path / "none.ctl"))
    assert "[1/" in res.err
    path = res.out.strip().split()[-1]
    assert os.path.exists(path)
    with tarfile.open(path) as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
        assert {"ipv4_route", "ipv6_addr", "iptables-save", "ipset_list", "bird_protocols",
                "etcd_calico", "felix.log"} <= names
        member = next(m for m in tar.getmembers() if m.name.endswith("etcd_calico"))
        dump = tar.extractfile(member).read().decode()
    assert "198.18.0.0/24" in dump
    assert "hunter2" not in dump and "/etc/secret.key" not in dump and MASK in dump
    assert '"mtu": 1500' in dump


def test_mask_secrets():
    assert mask_secrets("/calico/v1/config/EtcdKeyFile", "/x") == MASK
    assert mask_secrets("/a/b", '{"token": "t", "n": [{"password": "p", "x": 1}]}') == \
        json.dumps({"n": [{"password": MASK, "x": 1}], "token": MASK}, sort_keys=True)
    assert mask_secrets("/a/b", '{"cidr": "198.18.0.0/24"}') == '{"cidr": "198.18.0.0/24"}'
    assert mask_secrets("/a/cert", "-----BEGIN CERTIFICATE-----") == MASK
    assert mask_secrets("/a/b", "plain") == "plain"


def test_parse_bird_protocols():
    text = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     15:24:30.596
Mesh_198_18_0_9 BGP        ---        start  15:24:30.596  Active        Socket: Connection refused
Global_fd00__9 BGP        ---        up     2026-11-27 10:00:01  Established
Node_198_18_0_7 BGP        ---        start  15:24:30.596  Connect
static1    Static     master4    up     15:24:30.596
"""
    sessions = parse_protocols(text)
    assert [(s.peer, s.peer_type, s.state, s.since, s.info) for s in sessions] == [
        ("198.18.0.9", "node-to-node mesh", "start", "15:24:30.596",
         "Active Socket: Connection refused"),
        ("fd00::9", "global", "up", "2026-11-27 10:00:01", "Established"),
        ("198.18.0.7", "node specific", "start", "15:24:30.596", "Connect"),
    ]
    assert peer_from_name("Other_1_2_3_4") is None
    assert peer_from_name("Mesh_notanip") is None


def test_version_and_completion():
    ctl = Ctl({})
    assert ctl("version").out.startswith("calicoctl version ")
    for shell, needle in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        out = ctl("completion", shell).out
        assert "_CALICOCTL_COMPLETE" in out and needle in out, shell
    ctl("completion", "tcsh", code=2)


def test_help_everywhere():
    ctl = Ctl({})
    for args in (["--help"], ["pool", "--help"], ["profile", "--help"],
                 ["profile", "p", "rule", "add", "--help"], ["endpoint", "--help"],
                 ["container", "--help"], ["bgp", "peer", "add", "--help"],
                 ["node", "bgp", "peer", "--help"], ["ipam", "check", "--help"],
                 ["config", "node", "bgp", "--help"], ["get", "--help"], ["apply", "--help"],
                 ["status", "--help"], ["checksystem", "--help"], ["diags", "--help"]):
        assert "Usage:" in ctl(*args).out, args


def test_command_table_matches_the_commands():
    """main.COMMAND_TABLE (what `--help` lists without importing) names every command of
    every command module, in the right module, with the first paragraph of its help."""
    import importlib
    import pkgutil

    import calicoctl
    from calicoctl.main import COMMAND_TABLE, load_command

    found = {}
    for info in pkgutil.iter_modules(calicoctl.__path__):
        module = importlib.import_module(f"calicoctl.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            first = (command.help or "").split("\n\n")[0]
            found[command.name] = (info.name, " ".join(first.split()))
    assert found == COMMAND_TABLE
    assert all(load_command(name).name == name for name in COMMAND_TABLE)
    assert load_command("nonsense") is None
    ctl = Ctl({})
    ctl("nonsense", code=2)
    listing = ctl("--help").out.split("Commands:\n")[1].splitlines()
    names = [line.split()[0] for line in listing if line.startswith("  ") and
             not line.startswith("   ")]
    assert names == sorted(COMMAND_TABLE)


def test_data_command_imports_stay_narrow():
    """`profile show` lists names without importing the model; `pool show` imports the
    network model only (bench/calicoctl.py measures what this buys)."""
    code = ("import sys\n"
            "import libcalico.client.names\n"
            "print('NAMES', sorted(m for m in sys.modules if m.startswith('libcalico.model')))\n"
            "from libcalico.client.network import NetworkClient\n"
            "print('NETWORK', sorted(m for m in sys.modules if m.startswith('libcalico.')))\n")
    out = fresh_python(code)
    names, network = out.splitlines()
    assert names == "NAMES []", out
    for heavy in ("libcalico.model.policy", "libcalico.model.rules", "libcalico.model.endpoints",
                  "libcalico.client.resources", "libcalico.ipam"):
        assert f"'{heavy}" not in network, (heavy, network)


def test_startup_imports_stay_light():
    """`version` and `--help` must not import etcd3/grpc/yaml/pyroute2 or the datastore."""
    code = ("import sys\nfrom calicoctl.main import cli\n"
            "for args in (['version'], ['--help'], ['pool', '--help']):\n"
            "    try:\n        cli(args, prog_name='calicoctl')\n"
            "    except SystemExit:\n        pass\n"
            "heavy = ['etcd3', 'grpc', 'yaml', 'pyroute2', 'libcalico.datastore',\n"
            "         'libcalico.model', 'libcalico.ipam', 'calicoctl.diags',\n"
            "         'calicoctl.container', 'calicoctl.profile']\n"
            "print('LOADED', [m for m in heavy if m in sys.modules])\n")
    out = fresh_python(code)
    assert "LOADED []" in out, out


def test_ipam_refusals_are_conflicts_known_by_class():
    """AddressInUse, PoolInUse and PoolsExhausted are `Conflict`s of the one hierarchy
    (exit 3 because of that); an exception merely named like one is not recognised."""
    import libcalico.ipam as ipam
    from calicoctl.errors import EXIT_FAILURE, EXIT_NOT_FOUND, exit_code_for
    from libcalico import errors

    refusals = [errors.AddressInUse("198.18.0.1", "wl"), errors.PoolInUse("pool in use"),
                errors.PoolsExhausted("IPv4 pools exhausted: assigned 0 of 1 addresses")]
    for exc in refusals:
        assert isinstance(exc, errors.Conflict)
        assert exit_code_for(exc) == EXIT_NOT_FOUND
        assert getattr(ipam, type(exc).__name__) is type(exc)  # re-exported, same class

    class PoolInUse(Exception):  # same name, not ours
        pass

    assert exit_code_for(PoolInUse("x")) == EXIT_FAILURE
