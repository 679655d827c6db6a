"""The Docker driver and the CNI plugin end to end on a security cluster (TLS-only etcd
or etcd with user/password authentication), shared by test_tls_cluster.py and
test_auth_cluster.py.

- `docker_end_to_end`: a real dockerd per host (`netsim.dockerhosts`), the driver
  `calico-libnetwork` as a process of each host with the cluster's etcd settings
  (`Topology.daemon_env`: certificates, or user and password), a network created on both
  engines, a busybox container on each; each gets its address from the Calico pool and
  pings the other across hosts. The plugin sockets are checked (a socket, root's, not
  readable or writable by others); a network label holding shell syntax and unicode is
  carried as data into the endpoint's labels; a network *named* with them is refused at
  `docker run` in one line; no shell runs any of it.
- `cni_end_to_end`: the `calico` plugin installed with `calicoctl cni install`, run as a
  runtime runs it in each host (tests/support/cnidriver.py), etcd given the way an
  operator gives it (`etcd_endpoints` and the certificate files in the network
  configuration; user and password in the runtime's environment), a container
  namespace per host; each gets its address and pings the other. CNI_ARGS and labels
  with shell syntax are refused in one line or carried as data; no shell runs them.

Both remove everything they make (containers, networks, drivers, engines, namespaces,
endpoints) even when they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faults.cluster import Cluster
from libcalico import keyspace as ks
from netsim.dockerd import DockerEngine, import_busybox
from netsim.dockerhosts import DockerHosts
from netsim.netns import Namespace
from netsim.topology import calicoctl_path
from netsim.wait import wait_for
from tests.support.cnidriver import Driver

IMAGE = "busybox:sec"
CALICO = ("-d", "calico", "--ipam-driver", "calico-ipam")
REACH_S = 45.0
HOSTILE_NET = "n$(touch {0})`touch {0}`|é中"


def _marker() -> str:
    return f"/tmp/calico-pwned-{secrets.token_hex(4)}"


def _hostile(marker: str) -> str:
    return f"$(touch {marker});`touch {marker}`|touch {marker} é中"


def check_socket(path: Path) -> None:
    """A unix socket owned by root that other users can neither read nor write."""
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode), path
    assert st.st_uid == 0, f"{path}: owner {st.st_uid}"
    assert not st.st_mode & (stat.S_IWOTH | stat.S_IROTH), f"{path}: {oct(st.st_mode)}"


def _address(engine: DockerEngine, name: str, net: str) -> str:
    info = json.loads(engine.docker("inspect", name).stdout)[0]
    return str(info["NetworkSettings"]["Networks"][net]["IPAddress"])


def _pings(engine: DockerEngine, name: str, ip: str) -> bool:
    return engine.docker("exec", name, "ping", "-c", "1", "-W", "1", ip, check=False,
                         timeout=30).returncode == 0


def docker_end_to_end(cluster: Cluster, pool_prefix: str) -> None:
    topo = cluster.topo
    assert topo is not None
    h1, h2 = cluster.hosts[:2]
    marker = _marker()
    with DockerHosts(topo, hosts=[h1, h2], load_image=False) as docker:
        drivers = {}
        try:
            for h in (h1, h2):
                import_busybox(docker.engine(h), IMAGE)
                drivers[h.name] = docker.start_driver(h)
                for sock in ("calico.sock", "calico-ipam.sock"):
                    check_socket(docker.engine(h).plugin_dir / sock)
                docker.engine(h).docker("network", "create", *CALICO, "secnet")
            e1, e2 = docker.engine(h1), docker.engine(h2)
            for engine, name in ((e1, "sa"), (e2, "sb")):
                engine.docker("run", "-d", "--name", name, "--net=secnet", IMAGE,
                              "sleep", "3600")
            a, b = _address(e1, "sa", "secnet"), _address(e2, "sb", "secnet")
            assert a.startswith(pool_prefix) and b.startswith(pool_prefix), (a, b)
            wait_for(lambda: _pings(e1, "sa", b), REACH_S, message="sa pinging sb")
            assert _pings(e2, "sb", a)
            # A label with shell syntax and unicode: data or a one-line refusal.
            e1.docker("network", "create", *CALICO, "--label", f"note={_hostile(marker)}",
                      "hostile")
            e1.docker("run", "-d", "--name", "sh1", "--net=hostile", IMAGE, "sleep", "3600")
            kvs, _ = cluster.store.list(ks.host_workload_dir(h1.name) + "libnetwork/")
            labels = [json.loads(kv.value).get("labels") for kv in kvs]
            assert {"note": _hostile(marker)} in labels, labels  # carried as data
            # A network name with the same (Docker takes it): it would be the profile's
            # name, which allows no such characters, so a container cannot join it; the
            # refusal is one line naming the network name. The others keep working.
            e1.docker("network", "create", *CALICO, HOSTILE_NET.format(marker))
            run = e1.docker("run", "-d", "--name", "sh2", f"--net={HOSTILE_NET.format(marker)}",
                            IMAGE, "sleep", "3600", check=False)
            errors = [x for x in run.stderr.splitlines() if "Error response" in x]
            assert run.returncode != 0 and len(errors) == 1, run.stderr
            assert "network name" in errors[0] and "Traceback" not in run.stderr, errors
            assert not os.path.exists(marker), "a shell ran a network label or name"
            assert _pings(e1, "sa", b)
        finally:
            for h in (h1, h2):
                engine = docker.engines.get(h.name)
                if engine is None:
                    continue
                names = engine.docker("ps", "-aq", check=False).stdout.split()
                if names:
                    engine.docker("rm", "-f", *names, check=False)
                for net in ("secnet", "hostile", HOSTILE_NET.format(marker)):
                    engine.docker("network", "rm", net, check=False)
                if h.name in drivers:
                    docker.stop_driver(h, drivers[h.name])
            if os.path.exists(marker):
                os.unlink(marker)
    kvs, _ = cluster.store.list(ks.HOST_DIR)
    left = [kv.key for kv in kvs if "/workload/libnetwork/" in kv.key]
    assert not left, f"endpoints left behind: {left}"


def cni_end_to_end(cluster: Cluster, conf_extra: Mapping[str, Any],
                   env: Mapping[str, str], pool_prefix: str) -> None:
    topo = cluster.topo
    assert topo is not None and topo.etcd is not None
    h1, h2 = cluster.hosts[:2]
    marker = _marker()
    containers: dict[str, Namespace] = {}
    with tempfile.TemporaryDirectory(prefix="sec-cni-") as tmp:
        proc = subprocess.run([calicoctl_path(), "cni", "install", "--bin-dir", tmp],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr

        def conf(host: str) -> dict[str, Any]:
            return {"cniVersion": "1.0.0", "name": "seccni", "type": "calico",
                    "etcd_endpoints": topo.etcd.env(for_test_process=False)["ETCD_ENDPOINTS"],
                    "nodename": host, "log_file_path": f"{tmp}/cni.log",
                    "ipam": {"type": "calico-ipam"}, **conf_extra}

        added: list[tuple[Driver, str, str]] = []
        try:
            ips = {}
            for h in (h1, h2):
                driver = Driver(h.ns.name, [tmp])
                ns = containers[h.name] = Namespace("sec-c")
                cid = secrets.token_hex(32)
                call = driver.call("ADD", conf(h.name), container=cid, netns=ns.name,
                                   args="IgnoreUnknown=1;NOTE="
                                   + _hostile(marker).replace(";", " "), env=env)
                assert call.rc == 0, call.stdout + call.stderr
                added.append((driver, cid, ns.name))
                ips[h.name] = call.out["ips"][0]["address"].split("/")[0]
                assert ips[h.name].startswith(pool_prefix), call.out
                # Shell syntax where a name is expected: refused in one line (code 4).
                bad = driver.call("ADD", conf(h.name), container=secrets.token_hex(8),
                                  netns=ns.name, env=env,
                                  args=f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME={_hostile(marker)}")
                assert bad.rc == 1 and bad.code == 4, bad.stdout
                assert "\n" not in bad.out["msg"] and "Traceback" not in bad.stderr
            a, b = containers[h1.name], containers[h2.name]
            wait_for(lambda: a.exec("ping", "-c", "1", "-W", "1", ips[h2.name],
                                    check=False).returncode == 0, REACH_S,
                     message="CNI workload on host1 pinging the one on host2")
            assert b.exec("ping", "-c", "1", "-W", "1", ips[h1.name],
                          check=False).returncode == 0
            assert not os.path.exists(marker), "a shell ran a CNI argument"
        finally:
            for driver, cid, ns_name in added:
                host = next(h.name for h in (h1, h2) if h.ns.name == driver.host_ns)
                driver.call("DEL", conf(host), container=cid, netns=ns_name, env=env)
            for ns in containers.values():
                ns.delete()
            if os.path.exists(marker):
                os.unlink(marker)
    kvs, _ = cluster.store.list(ks.HOST_DIR)
    left = [kv.key for kv in kvs if "/workload/cni/" in kv.key]
    assert not left, f"endpoints left behind: {left}"
