"""`calicoctl cni install`: the launchers it writes run the plugins of this installation
(with `python -I -S`, so a runtime's PYTHON* variables and site do not matter), the
conflist it writes is what docs/cni.md shows, and nothing is replaced that it did not
write unless asked; all files are checked before any is written. Also: a plugin call
imports none of the heavy libraries (grpc, etcd3, pyroute2, yaml) nor the IPAM check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netsim.topology import calicoctl_path

ROOT = Path(__file__).resolve().parents[2]


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([calicoctl_path(), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cni-install-") as d:
        yield Path(d)


def test_install_writes_launchers_and_a_conflist(tmp: Path) -> None:
    bins, confs = tmp / "bin", tmp / "net.d"
    proc = ctl("cni", "install", "--bin-dir", str(bins), "--conf-dir", str(confs),
               "--network", "k8s-pod-network", "--nodename", "node7", "--ipv6",
               "--mtu", "1400", "--log-file", str(tmp / "cni.log"),
               env={"ETCD_ENDPOINTS": "http://198.18.0.254:2379"})
    assert proc.returncode == 0, proc.stderr
    for name in ("calico", "calico-ipam"):
        launcher = bins / name
        assert os.access(launcher, os.X_OK)
        first = launcher.read_text().splitlines()[0]
        assert first.startswith(f"#!{os.path.dirname(sys.executable)}/python")
        assert first.endswith(" -IS")
        # It runs this installation's plugin, whatever the caller's Python settings.
        answer = subprocess.run([str(launcher)], input=b'{"cniVersion": "0.4.0"}',
                                env={"CNI_COMMAND": "VERSION", "PYTHONPATH": "/nonexistent",
                                     "PATH": "/usr/bin:/bin"},
                                capture_output=True, check=True, cwd="/")
        assert json.loads(answer.stdout)["cniVersion"] == "0.4.0"
    conf = json.loads((confs / "10-k8s-pod-network.conflist").read_text())
    assert conf == {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "calico", "etcd_endpoints": "http://198.18.0.254:2379", "nodename": "node7",
         "log_level": "info", "ipam": {"type": "calico-ipam", "assign_ipv4": True,
                                       "assign_ipv6": True},
         "mtu": 1400, "log_file_path": str(tmp / "cni.log")},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
    # Installing again is a no-op; another conflist needs --force.
    assert ctl("cni", "install", "--bin-dir", str(bins), "--conf-dir", str(confs),
               "--network", "k8s-pod-network", "--nodename", "node7", "--ipv6", "--mtu",
               "1400", "--log-file", str(tmp / "cni.log"),
               env={"ETCD_ENDPOINTS": "http://198.18.0.254:2379"}).returncode == 0
    other = ctl("cni", "install", "--bin-dir", str(bins), "--conf-dir", str(confs),
                "--network", "k8s-pod-network", "--no-portmap")
    assert other.returncode == 3 and "--force" in other.stderr
    assert len(json.loads((confs / "10-k8s-pod-network.conflist").read_text())["plugins"]) == 2
    assert ctl("cni", "install", "--bin-dir", str(bins), "--conf-dir", str(confs),
               "--network", "k8s-pod-network", "--no-portmap", "--force").returncode == 0
    assert len(json.loads((confs / "10-k8s-pod-network.conflist").read_text())["plugins"]) == 1


def test_install_replaces_only_its_own_files_and_checks_all_first(tmp: Path) -> None:
    bins, confs = tmp / "bin", tmp / "net.d"
    bins.mkdir()
    (bins / "calico-ipam").write_text("#!/bin/sh\necho someone else's\n")
    proc = ctl("cni", "install", "--bin-dir", str(bins), "--conf-dir", str(confs))
    assert proc.returncode == 3 and "calico-ipam" in proc.stderr
    assert not (bins / "calico").exists() and not confs.exists()  # nothing written
    assert ctl("cni", "install", "--bin-dir", str(bins), "--force").returncode == 0
    assert "calicoctl cni install" in (bins / "calico-ipam").read_text()
    bad = ctl("cni", "install", "--bin-dir", str(bins), "--network", "bad name")
    assert bad.returncode == 2 and "network" in bad.stderr


def test_a_plugin_call_imports_no_heavy_library(unix_etcd, tmp: Path) -> None:
    """ADD and DEL through cni.main.run, in a fresh `python -I -S` interpreter as the
    launcher runs it: the etcd gateway and rtnl, never grpc or pyroute2."""
    ns = f"cni-imp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    store.put("/calico/v1/ipam/v4/pool/198.18.120.0-24", '{"cidr": "198.18.120.0/24"}')
    conf = {"cniVersion": "1.0.0", "name": "imp", "type": "calico", "nodename": "imp-node",
            "etcd_endpoints": unix_etcd.client_url, "log_file_path": str(tmp / "cni.log"),
            "ipam": {"type": "calico-ipam"}}
    code = (
        "import io, json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from cni.main import run\n"
        "conf = json.loads(sys.argv[1])\n"
        "for command in ('ADD', 'DEL'):\n"
        "    env = {'CNI_COMMAND': command, 'CNI_CONTAINERID': 'imp1', 'CNI_IFNAME': 'eth0',\n"
        f"           'CNI_NETNS': '/run/netns/{ns}'}}\n"
        "    out = io.StringIO()\n"
        "    assert run('calico', env, io.BytesIO(sys.argv[1].encode()), out) == 0, "
        "out.getvalue()\n"
        "heavy = ('grpc', 'etcd3', 'google.protobuf', 'pyroute2', 'yaml', 'click', 'jinja2',\n"
        "         'libcalico.ipam.check', 'libcalico.syncer')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n")
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, json.dumps(conf)],
                              capture_output=True, text=True, check=False, cwd="/")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        store.delete_prefix("/calico/")
        store.close()


def test_version_imports_nothing_but_the_versions() -> None:
    """Runtimes call VERSION before every ADD and DEL: it must not pay for the library,
    logging, dataclasses or even json."""
    code = (
        "import io, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from cni.main import run\n"
        "out = io.StringIO()\n"
        "assert run('calico', {'CNI_COMMAND': 'VERSION'}, io.BytesIO(b'{}'), out) == 0\n"
        "print(sorted(m for m in ('json', 'logging', 'dataclasses', 'typing', 're', "
        "'libcalico', 'workload', 'cni.spec', 'cni.config') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                          text=True, check=True, cwd="/")
    assert proc.stdout.strip() == "[]"
