"""A simulated network of hosts: a fabric, N hosts on it, and an etcd they all reach.

Owns: the fabric namespace with a bridge, host namespaces joined to it by veths
(`eth0`, 198.18.0.<i>/24 by default), an etcd running inside the fabric namespace on
198.18.0.254 (daemons in the hosts use its TCP URL; the test process reaches it through
its unix socket, so the root namespace is never touched) - or, with `etcd_members=3`, an
`EtcdCluster` of real members on 198.18.0.251-253, and with `etcd_tls`/`etcd_auth` an
etcd that accepts only client certificates / only a user and password (the daemons get
the certificates and credentials through their ETCD_* environment), or with
`etcd_on_host` one member inside host1 on its own address (etcd on a Calico host, whose
port a workload must not reach), background processes started
inside the hosts, Calico nodes started in them with `calicoctl node --runtime=none`
(`start_node`; each host's run directory, logs and BIRD include directory live in its
scratch directory), and removing all of it, in reverse order, even when a test fails
(every process left in a host namespace is killed, daemonised supervisord included).

Use it as a context manager or through `topology()`:

    with Topology("cfd", hosts=3) as topo:
        a = topo.hosts[0]              # Host(name="host1", ns=Namespace, ip="198.18.0.1")
        a.ns.exec("ip", "route")
        topo.spawn(a, ["bird", "-f", ...], name="bird")
        store = topo.datastore()       # a Datastore client for the test process
        topo.start_node(a)             # felix, confd and BIRD under supervisord in host1
        topo.calicoctl(a, "node", "status")

Leaves to others: what runs in the hosts and what the tests check. Namespaces are
created through `netsim.netns`, so names carry the prefix and a random suffix.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libcalico.datastore import Datastore
from netsim.etcd import EtcdCluster, EtcdServer, make_tls_material
from netsim.netns import Namespace, kill_namespace_processes

FABRIC_NET = "198.18.0"
FABRIC_PLEN = 24
FABRIC_NET6 = "fd00:198:18::"  # hosts get <FABRIC_NET6><octet in hex>/64 with ipv6=True
ETCD_IP = f"{FABRIC_NET}.254"
ETCD_MEMBER_IPS = tuple(f"{FABRIC_NET}.{251 + i}" for i in range(3))  # etcd_members > 1


@dataclass
class Host:
    """One simulated host: its namespace, its fabric address and a scratch directory."""

    name: str
    ns: Namespace
    ip: str
    dir: Path
    ip6: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Topology:
    """A fabric bridge in its own namespace, hosts attached to it, etcd inside it."""

    def __init__(self, prefix: str, hosts: int = 3, etcd: bool = True,
                 first_host_octet: int = 1, ipv6: bool = False, etcd_members: int = 1,
                 etcd_tls: bool = False, etcd_auth: tuple[str, str] | None = None,
                 etcd_on_host: bool = False) -> None:
        self.prefix = prefix
        self.hosts: list[Host] = []
        self.etcd: EtcdServer | EtcdCluster | None = None
        self.fabric: Namespace | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-topo-"))
        try:
            self.fabric = Namespace(f"{prefix}-fab")
            # A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, so adding
            # a host could change it and strand the hosts' ARP entries for etcd's address.
            self.fabric.ip("link", "add", "br0", "address", "02:00:c6:12:00:fe", "type",
                           "bridge")
            self.fabric.ip("link", "set", "br0", "up")
            if etcd_on_host:  # one member inside host1, on its fabric address
                self._add_hosts(hosts, first_host_octet, ipv6)
                h1 = self.hosts[0]
                tls = make_tls_material(str(self.dir / "etcd-tls"), [h1.ip]) if etcd_tls \
                    else None
                self.etcd = EtcdServer(host=h1.ip, netns=h1.ns.name, unix_socket=True,
                                       tls=tls, auth=etcd_auth)
                self.etcd.start()
                return
            if etcd:
                ips = [ETCD_IP] if etcd_members == 1 else list(ETCD_MEMBER_IPS[:etcd_members])
                if len(ips) != etcd_members:
                    raise ValueError(f"at most {len(ETCD_MEMBER_IPS)} etcd members")
                for ip in ips:
                    self.fabric.ip("addr", "add", f"{ip}/{FABRIC_PLEN}", "dev", "br0")
                tls = make_tls_material(str(self.dir / "etcd-tls"), ips) if etcd_tls else None
                if etcd_members == 1:
                    self.etcd = EtcdServer(host=ETCD_IP, netns=self.fabric.name,
                                           unix_socket=True, tls=tls, auth=etcd_auth)
                else:
                    self.etcd = EtcdCluster(etcd_members, ips, netns=self.fabric.name,
                                            tls=tls, unix_socket=True, auth=etcd_auth)
                self.etcd.start()
            self._add_hosts(hosts, first_host_octet, ipv6)
        except BaseException:
            self.close()
            raise

    def _add_hosts(self, hosts: int, first_host_octet: int, ipv6: bool) -> None:
        for i in range(hosts):
            octet = first_host_octet + i
            self.add_host(f"host{i + 1}", f"{FABRIC_NET}.{octet}",
                          f"{FABRIC_NET6}{octet:x}" if ipv6 else None)

    # --- building -----------------------------------------------------------------------------

    def add_host(self, name: str, ip: str, ip6: str | None = None) -> Host:
        """A host namespace with `eth0` on the fabric at `ip`/24 (and `ip6`/64)."""
        assert self.fabric is not None
        ns = Namespace(f"{self.prefix}-{name}")
        port = f"p{len(self.hosts) + 1}-{ns.name[-4:]}"
        host = Host(name, ns, ip, self.dir / name, ip6)
        self.hosts.append(host)
        host.dir.mkdir()
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", port,
              "netns", self.fabric.name)
        self.fabric.ip("link", "set", port, "master", "br0")
        self.fabric.ip("link", "set", port, "up")
        ns.ip("addr", "add", f"{ip}/{FABRIC_PLEN}", "dev", "eth0")
        if ip6:
            ns.ip("-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        ns.ip("link", "set", "eth0", "up")
        return host

    def remove_host(self, host: Host) -> None:
        """Stop the host's processes and delete its namespace (and its veth)."""
        for proc in host.procs:
            self.stop_process(proc)
            self._procs.remove(proc)
        host.procs.clear()
        self.kill_namespace_processes(host.ns)
        host.ns.delete()
        self.hosts.remove(host)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # --- processes ----------------------------------------------------------------------------

    def daemon_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a daemon inside a host: etcd's TCP URL, no stray ETCD_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        if self.etcd is not None:
            env.update(self.etcd.env(for_test_process=False))
        env.update(extra or {})
        return env

    def spawn(self, host: Host, cmd: Sequence[str], name: str,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `cmd` inside `host` in the background; output goes to `<dir>/<name>.log`."""
        log = open(host.dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(["ip", "netns", "exec", host.ns.name, *cmd], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env or self.daemon_env()),
                                start_new_session=True)
        log.close()
        host.procs.append(proc)
        self._procs.append(proc)
        return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop tracking a process `spawn` started (after the caller has stopped it)."""
        if proc in self._procs:
            self._procs.remove(proc)

    @staticmethod
    def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                     timeout: float = 10.0) -> int | None:
        """Signal the process group, wait, then kill it if it did not exit."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    def datastore(self) -> Datastore:
        """A client for the test process (through etcd's unix socket)."""
        assert self.etcd is not None
        return self.etcd.client()

    def log_tail(self, host: Host, name: str, chars: int = 3000) -> str:
        path = host.dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- Calico nodes -------------------------------------------------------------------------

    def calicoctl(self, host: Host, *args: str, check: bool = True,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`calicoctl ARGS` inside `host`, with the host's name, run dir and etcd."""
        full_env = self.daemon_env({"HOSTNAME": host.name, "NO_DEFAULT_POOLS": "1",
                                    "CALICO_RUN_DIR": str(host.dir / "run"),
                                    "CALICO_BIRD_INCLUDE_DIR": str(host.dir / "bird.d"),
                                    **(env or {})})
        proc = subprocess.run(["ip", "netns", "exec", host.ns.name, calicoctl_path(), *args],
                              capture_output=True, text=True, env=full_env, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"calicoctl {' '.join(args)} on {host.name} exited "
                               f"{proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start_node(self, host: Host, *args: str, check: bool = True,
                   env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`calicoctl node --runtime=none` in `host` (its fabric addresses as --ip/--ip6)."""
        ip6 = [f"--ip6={host.ip6}"] if host.ip6 else []
        return self.calicoctl(host, "node", "run", "--runtime=none", f"--name={host.name}",
                              f"--ip={host.ip}", *ip6, f"--log-dir={host.dir / 'log'}", *args,
                              check=check, env=env)

    def node_log(self, host: Host, program: str, chars: int = 3000) -> str:
        path = host.dir / "log" / f"{program}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # --- cleanup ------------------------------------------------------------------------------

    @staticmethod
    def kill_namespace_processes(ns: Namespace, timeout: float = 10.0) -> None:
        """Every process left in the namespace (daemonised ones too): TERM, then KILL."""
        kill_namespace_processes([ns.name], timeout)

    def close(self) -> None:
        for proc in reversed(self._procs):
            self.stop_process(proc)
        self._procs.clear()
        for host in reversed(self.hosts):
            self.kill_namespace_processes(host.ns)
        if self.etcd is not None:
            self.etcd.cleanup()
        for host in reversed(self.hosts):
            host.ns.delete()
        if self.fabric is not None:
            self.fabric.delete()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def calicoctl_path() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "calicoctl")
    return here if os.path.exists(here) else shutil.which("calicoctl") or "calicoctl"


@contextmanager
def topology(prefix: str, hosts: int = 3, etcd: bool = True) -> Iterator[Topology]:
    topo = Topology(prefix, hosts, etcd)
    try:
        yield topo
    finally:
        topo.close()
