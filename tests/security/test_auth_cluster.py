"""A cluster whose etcd requires a user and password (etcd's own authentication), and
what may not leak from it.

Two hosts. The password is given once, as ETCD_PASSWORD in the environment of `calicoctl
node run`, and reaches felix, confd and calicoctl the same way; the etcd user may read
and write only the project's tree. Checked: the node runs end to end; a wrong password
is one line naming the credentials; an etcd restart (which invalidates every auth
token) is survived by every daemon, which logs in again and converges; `calicoctl diags`
masks keys, passwords and tokens, and neither the bundle, nor the logs, nor any
process's command line holds the password. The Docker driver (given the password in its
environment, as the node's daemons) and the CNI plugin (in the runtime's environment)
run end to end through it (tests/security/plugins.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults.cluster import Cluster
from faults.converge import matrix_ok, wait_converged
from libcalico import keyspace as ks
from netsim.etcd import EtcdServer
from tests.security.plugins import cni_end_to_end, docker_end_to_end

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

PASSWORD = f"pw-{secrets.token_hex(8)}"
TOKEN = f"tok-{secrets.token_hex(8)}"
BGP_PASSWORD = f"bgp-{secrets.token_hex(8)}"
PEM = f"-----BEGIN PRIVATE KEY-----\nMIIE{secrets.token_hex(16)}\n-----END PRIVATE KEY-----"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(prefix="sauth", hosts=2, etcd_members=1, etcd_auth=("calico", PASSWORD))
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_an_authenticated_etcd_serves_the_whole_node_end_to_end(cluster: Cluster) -> None:
    assert cluster.etcd.auth_enabled
    for host in cluster.hosts:
        assert set(cluster.pids(host)) == {"bird", "confd", "felix"}
    assert matrix_ok(cluster)
    assert wait_converged(cluster, 60.0) <= 10.0
    h1 = cluster.hosts[0]
    wrong = cluster.calicoctl(h1, "pool", "show", check=False,)
    assert wrong.returncode == 0
    assert cluster.topo is not None
    bad = cluster.topo.calicoctl(h1, "pool", "show", check=False,
                                 env={"ETCD_PASSWORD": "wrong"})
    assert bad.returncode != 0
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "credentials" in lines[0] and "wrong" not in lines[0], bad.stderr


def test_every_daemon_logs_in_again_after_etcd_restarts(cluster: Cluster) -> None:
    etcd = cluster.etcd
    assert isinstance(etcd, EtcdServer)
    before = {h.name: cluster.pids(h) for h in cluster.hosts}
    etcd.restart()  # every auth token dies with it
    assert wait_converged(cluster, 60.0) <= 10.0
    assert {h.name: cluster.pids(h) for h in cluster.hosts} == before


def test_diags_masks_secrets_and_the_password_leaks_nowhere(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    h1 = cluster.hosts[0]
    store = cluster.store
    secret_keys = {
        ks.global_config_key("SomeToken"): TOKEN,
        ks.bgp_peer_key("198.18.0.201"): f'{{"as_num": 65001, "password": "{BGP_PASSWORD}"}}',
        ks.global_config_key("ClusterCert"): PEM,
    }
    for key, value in secret_keys.items():
        store.put(key, value)
    try:
        proc = cluster.calicoctl(h1, "diags", "--log-dir", str(h1.dir / "log"),
                                 "--bird-socket", str(h1.dir / "run" / "bird.ctl"),
                                 "--output-dir", str(tmp_path))
        bundle = next(tmp_path.glob("diags-*.tar.gz"))
        assert str(bundle) in proc.stdout
        texts = []
        with tarfile.open(bundle) as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member)
                if f is not None:
                    texts.append((member.name, f.read().decode(errors="replace")))
        dump = next(t for n, t in texts if n.endswith("etcd_calico"))
        assert "SomeToken = ********" in dump and "ClusterCert = ********" in dump, dump
        assert '"password":"********"' in dump.replace(" ", ""), dump
        assert any(n.endswith("felix.log") for n, _ in texts)  # the logs are in it
        for name, text in texts:
            for secret in (PASSWORD, TOKEN, BGP_PASSWORD, PEM.splitlines()[1]):
                assert secret not in text, f"{secret[:6]}... in {name}"
    finally:
        for key in secret_keys:
            store.delete(key)
    # Not in any log of any host, not on any command line.
    for host in cluster.hosts:
        for log in (host.dir / "log").glob("*.log"):
            assert PASSWORD not in log.read_text(errors="replace"), log
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                        check=True).stdout
    assert PASSWORD not in ps
    # The password is only in the environment of the node's processes, which other
    # users cannot read (/proc/PID/environ is 0400, owned by the process's user).
    felix = cluster.pids(h1)["felix"]
    assert os.stat(f"/proc/{felix}/environ").st_mode & 0o077 == 0


def test_the_docker_driver_works_end_to_end_with_etcd_authentication(cluster: Cluster
                                                                      ) -> None:
    docker_end_to_end(cluster, "198.19.")


def test_the_cni_plugin_works_end_to_end_with_etcd_authentication(cluster: Cluster) -> None:
    # The user and password come from the runtime's environment (never the config file).
    cni_end_to_end(cluster, {}, {"ETCD_USERNAME": "calico", "ETCD_PASSWORD": PASSWORD},
                   "198.19.")
