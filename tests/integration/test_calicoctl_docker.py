"""`calicoctl container` with a real Docker container, named by Docker name or id.

The test starts its own dockerd for the module: private data/exec roots and socket in a
temp dir, no bridge, no iptables/ip6tables rules, no ip_forward or masquerading, and,
to be sure nothing it does touches the machine's own networking, inside a namespace the
test creates (`nsenter --net`, which keeps the mounts dockerd needs; `ip netns exec`
would hide the cgroup mounts). DOCKER_HOST points calicoctl at that engine. The image
is built without a registry: a static busybox and a few applet links, imported from a
tar stream. calicoctl runs inside a simulated host namespace, so the host side of the
veth (`cali...`) lands there. When dockerd is not installed (the README's install
provides docker.io) or does not start, the tests fail saying why; they never skip.
Everything the module creates is removed even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from libcalico import keyspace as ks
from netsim.etcd import EtcdServer
from netsim.netns import Namespace, unique_name
from netsim.topology import calicoctl_path
from netsim.wait import wait_for
from tests.support.images import busybox_tar

pytestmark = [pytest.mark.etcd, pytest.mark.root, pytest.mark.slow]

POOL = "198.18.66.0/24"
APPLETS = ("sh", "sleep", "ip", "cat")


@dataclass
class Engine:
    """The test's dockerd: its socket, the namespace it runs in, and its temp dir."""

    tmp: str
    ns: Namespace
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.tmp}/docker.sock"

    def docker(self, *args: str, input: bytes | None = None,  # noqa: A002
               check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(["docker", *args], input=input, capture_output=True,
                              env={**os.environ, "DOCKER_HOST": self.host}, timeout=60,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.decode()}")
        return proc

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.tmp, "dockerd.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "(no log)"


def _answering_or_gone(engine: Engine) -> bool:
    return (engine.proc.poll() is not None
            or engine.docker("version", check=False).returncode == 0)


def _leftovers(tmp: str) -> list[int]:
    """PIDs of processes our dockerd started (containerd, shims): they name our dir."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if tmp.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _stop(engine: Engine) -> None:
    """Stop dockerd (it stops its containerd), then anything of ours still running,
    unmount whatever is left below the temp dir and remove it."""
    if engine.proc.poll() is None:
        engine.proc.terminate()
        try:
            engine.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            engine.proc.kill()
            engine.proc.wait(timeout=10)
    for pid in _leftovers(engine.tmp):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f if engine.tmp in line.split()[1]]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(engine.tmp, ignore_errors=True)
    engine.ns.delete()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.fail("Docker engine not installed (./scripts/bootstrap.sh installs docker.io)")
    tmp = tempfile.mkdtemp(prefix="ctl-docker-")
    try:
        ns = Namespace("ctl-dk")
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log = open(os.path.join(tmp, "dockerd.log"), "wb")  # noqa: SIM115 - closed below
    cmd = ["nsenter", f"--net=/run/netns/{ns.name}", "dockerd",
           "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
           "--bridge=none", "--data-root", f"{tmp}/data", "--exec-root", f"{tmp}/exec",
           "--pidfile", f"{tmp}/docker.pid", "-H", f"unix://{tmp}/docker.sock"]
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        ns.delete()
        pytest.fail(f"cannot run dockerd: {exc}")
    eng = Engine(tmp, ns, proc)
    try:
        try:
            wait_for(lambda: _answering_or_gone(eng), timeout=30, message="dockerd answering")
        except TimeoutError as exc:
            pytest.fail(f"dockerd did not start: {exc}; log: {eng.log_tail()}")
        if proc.poll() is not None:
            pytest.fail(f"dockerd did not start (exit {proc.returncode}); log: "
                        f"{eng.log_tail()}")
        yield eng
    finally:
        _stop(eng)
        log.close()


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[str]:
    name = f"{unique_name('ctl-bb')}:test"
    engine.docker("import", "-", name, input=busybox_tar(APPLETS))
    try:
        yield name
    finally:
        engine.docker("rmi", "-f", name, check=False)


@dataclass
class Container:
    name: str
    id: str
    pid: int

    def ip(self, *args: str) -> str:
        """`ip ARGS` inside the container's network namespace."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", "ip", *args],
                              capture_output=True, text=True, check=True).stdout


@pytest.fixture
def setup(engine: Engine, image: str, unix_etcd: EtcdServer):
    store = unix_etcd.client()
    store.delete_prefix("/calico/")
    store.put(ks.pool_key(POOL), json.dumps({"cidr": POOL}))
    host = Namespace("ctl-h")
    name = unique_name("ctl-dk-c")
    try:
        # --network none: docker gives the container a namespace with only loopback.
        engine.docker("run", "-d", "--network", "none", "--name", name, image,
                      "/bin/sleep", "3600")
        info = json.loads(engine.docker("inspect", "--type", "container", name).stdout)[0]
        yield store, host, Container(name, info["Id"], info["State"]["Pid"])
    finally:
        engine.docker("rm", "-f", name, check=False)
        host.delete()
        store.close()


def ctl(engine: Engine, unix_etcd: EtcdServer, host: Namespace, *args: str,
        code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **unix_etcd.env(), "HOSTNAME": "ctl-node", "DOCKER_HOST": engine.host}
    proc = subprocess.run(["ip", "netns", "exec", host.name, calicoctl_path(), *args],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _endpoints(store) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    kvs, _ = store.list(ks.host_workload_dir("ctl-node"))
    return {kv.key: json.loads(kv.value) for kv in kvs}


def _allocated(store) -> int:  # type: ignore[no-untyped-def]
    from libcalico.ipam import IPAMClient

    return sum(u.allocated for u in IPAMClient(store).usage())


def _addresses(c: Container, ifname: str) -> list[str]:
    link = json.loads(c.ip("-j", "addr", "show", ifname))[0]
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]


def test_container_add_remove_docker(engine: Engine, unix_etcd: EtcdServer, setup) -> None:
    store, host, c = setup
    out = ctl(engine, unix_etcd, host, "container", "add", c.name, "198.18.66.10").stdout
    assert "198.18.66.10/32" in out

    # The endpoint: orchestrator docker, the container's full id as workload.
    eps = _endpoints(store)
    assert len(eps) == 1
    key, ep = next(iter(eps.items()))
    parsed = ks.parse_key(key)
    assert isinstance(parsed, ks.WorkloadEndpointKey)
    assert (parsed.hostname, parsed.orchestrator, parsed.workload) == \
        ("ctl-node", "docker", c.id)
    assert len(c.id) == 64 and ep["ipv4_nets"] == ["198.18.66.10/32"]
    assert ep["name"] == "cali" + parsed.endpoint_id[:11]

    # Inside the container: eth1 with the address and MAC, default via the link-local
    # gateway whose neighbour entry is the host side's MAC.
    assert _addresses(c, "eth1") == ["198.18.66.10/32"]
    link = json.loads(c.ip("-j", "link", "show", "eth1"))[0]
    assert link["address"] == ep["mac"]
    routes = json.loads(c.ip("-j", "route"))
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth1"}.items() <= \
        routes[0].items()
    # The host side: in the simulated host's namespace, not the machine's.
    host_link = json.loads(host.ip("-j", "link", "show", ep["name"]).stdout)[0]
    neigh = json.loads(c.ip("-j", "neigh", "show", "169.254.1.1"))[0]
    assert neigh["lladdr"] == host_link["address"]
    assert subprocess.run(["ip", "link", "show", ep["name"]], capture_output=True,
                          check=False).returncode != 0
    assert _allocated(store) == 1

    # The container's endpoint, named by its short id this time.
    shown = ctl(engine, unix_etcd, host, "container", c.id[:12], "endpoint", "show").stdout
    assert c.id in shown and "docker" in shown and "198.18.66.10/32" in shown
    as_json = json.loads(ctl(engine, unix_etcd, host, "container", c.name, "endpoint", "show",
                             "-o", "json").stdout)
    assert as_json[0]["metadata"]["workload"] == c.id

    # A second address, and taking it away again.
    ctl(engine, unix_etcd, host, "container", c.name, "ip", "add", "198.18.66.11")
    assert _endpoints(store)[key]["ipv4_nets"] == ["198.18.66.10/32", "198.18.66.11/32"]
    assert sorted(_addresses(c, "eth1")) == ["198.18.66.10/32", "198.18.66.11/32"]
    assert _allocated(store) == 2
    ctl(engine, unix_etcd, host, "container", c.name, "ip", "remove", "198.18.66.11")
    assert _endpoints(store)[key]["ipv4_nets"] == ["198.18.66.10/32"]
    assert _addresses(c, "eth1") == ["198.18.66.10/32"]
    assert _allocated(store) == 1

    # Adding the container again is refused and changes nothing.
    ctl(engine, unix_etcd, host, "container", "add", c.name, "ipv4", code=3)
    assert len(_endpoints(store)) == 1 and _allocated(store) == 1

    # Remove undoes everything: endpoint, both veth ends, the allocation.
    ctl(engine, unix_etcd, host, "container", "remove", c.name)
    assert _endpoints(store) == {}
    assert _allocated(store) == 0
    assert "cali" not in host.ip("link").stdout
    assert "eth1" not in c.ip("link")
    ctl(engine, unix_etcd, host, "container", c.name, "endpoint", "show", code=3)


def test_unknown_docker_container_is_not_found(engine: Engine, unix_etcd: EtcdServer,
                                               setup) -> None:
    store, host, _ = setup
    res = ctl(engine, unix_etcd, host, "container", "add", "ctl-no-such-container", "ipv4",
              code=3)
    assert "ctl-no-such-container" in res.stderr
    assert _endpoints(store) == {} and _allocated(store) == 0
