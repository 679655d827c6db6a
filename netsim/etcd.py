"""A real etcd for tests, benchmarks and the demo: one member or a cluster of several.

Owns: starting the Debian `etcd` binary on 127.0.0.1 (or a given address, optionally
inside a network namespace and on a unix socket) with a free port and a temporary data
directory, waiting until it answers, stopping, killing and restarting it, and removing
its data directory. Optionally:
- TLS that requires client certificates (`make_tls_material`, openssl); the unix socket
  is then TLS too (`unixs://`), so nothing reaches that etcd without a certificate;
- user authentication (`auth=(user, password)`): a `root` user, and `user` with a role
  that may read and write the project's tree only; clients get ETCD_USERNAME/PASSWORD;
- `EtcdCluster`: several real members (each its own process, address, data directory),
  which a fault test kills one by one, finds the leader of, snapshots and restores.
`etcdctl` (Debian's etcd-client) does the administration: auth, member status,
snapshots.

Leaves to others: polling (`netsim.wait`), the namespaces it may run in
(`netsim.netns`, `netsim.topology`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libcalico.datastore import Datastore, EtcdSettings
from netsim.wait import wait_for


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def scratch_dir() -> str | None:
    """Where etcd data directories go: tmpfs when there is one, so that fsync latency of a
    disk shared with everything else running cannot stall etcd's start or its writes
    (seen: 8-22 s starts under load). `CALICO_TEST_ETCD_TMPDIR` overrides."""
    chosen = os.environ.get("CALICO_TEST_ETCD_TMPDIR")
    if chosen:
        return chosen
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@dataclass
class TLSMaterial:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_tls_material(directory: str, host: str | Sequence[str] = "127.0.0.1") -> TLSMaterial:
    """A throw-away CA plus server and client certificates, made with openssl; the server
    certificate names `host` (one address or several: a cluster's members) and localhost
    (what gRPC checks over a unix socket)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    hosts = [host] if isinstance(host, str) else list(host)
    names = ",".join([*(f"IP:{h}" for h in hosts), "DNS:localhost"])
    (d / "san.cnf").write_text(
        f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")
    return TLSMaterial(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"),
                       str(d / "client.pem"), str(d / "client.key"))


class EtcdServer:
    """One etcd member. `start()` returns once it serves requests.

    As a member of an `EtcdCluster`, `name` and `initial_cluster` say who it is and who
    the others are; `launch()` starts the process without waiting (a member answers only
    once a quorum runs)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 tls: TLSMaterial | None = None, netns: str | None = None,
                 data_dir: str | None = None, unix_socket: bool = False,
                 auth: tuple[str, str] | None = None, name: str = "test") -> None:
        self.host = host
        self.port = port or free_port()
        self.peer_port = free_port()
        self.tls = tls
        self.netns = netns
        self.auth = auth
        self.auth_enabled = False
        self.name = name
        self.initial_cluster = f"{name}=http://{host}:{self.peer_port}"
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="calico-test-etcd-",
                                                     dir=scratch_dir())
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        # A unix socket reaches etcd from any network namespace: a test in the root
        # namespace talks to an etcd that listens on a fabric address inside a netns.
        self.unix_socket = unix_socket
        self.socket_path = os.path.join(self.data_dir, "etcd.sock:0")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        """The URL this process uses: the unix socket when there is one."""
        if self.unix_socket:
            return f"{'unixs' if self.tls else 'unix'}://{self.socket_path}"
        return self.url

    def env(self, for_test_process: bool = True) -> dict[str, str]:
        """ETCD_* variables for a client: the test process (unix socket if any) or a
        daemon inside the namespaces (the TCP URL)."""
        return client_env(self.client_url if for_test_process else self.url, self.tls,
                          self.auth if self.auth_enabled else None)

    def settings(self, timeout: float = 5.0) -> EtcdSettings:
        return EtcdSettings.from_env(self.env(), timeout=timeout)

    def client(self, timeout: float = 5.0) -> Datastore:
        return Datastore(self.settings(timeout))

    @property
    def member_dir(self) -> str:
        return os.path.join(self.data_dir, "data")

    def start(self, timeout: float = 30.0) -> EtcdServer:
        self.launch()
        self.wait_ready(timeout)
        if self.auth is not None and not self.auth_enabled:
            enable_auth([self], *self.auth)
        return self

    def launch(self) -> None:
        """Start the process; do not wait for it to answer."""
        if self.unix_socket:  # a killed etcd leaves its socket behind; bind would fail
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        socket = f",{'unixs' if self.tls else 'unix'}://etcd.sock:0" if self.unix_socket else ""
        cmd = ["etcd", "--name", self.name, "--data-dir", self.member_dir,
               "--listen-client-urls", self.url + socket, "--advertise-client-urls", self.url,
               "--listen-peer-urls", self.peer_url,
               "--initial-advertise-peer-urls", self.peer_url,
               "--initial-cluster", self.initial_cluster,
               "--log-level", "error", "--logger", "zap"]
        if self.tls:
            cmd += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                    "--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH="")
        for k in list(env):
            if k.startswith("ETCD_"):
                del env[k]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.data_dir)
        log.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        client = self.client(timeout=1.0)
        try:
            wait_for(lambda: self._alive() and client.revision() > 0, timeout,
                     message=f"etcd at {self.url}")
        finally:
            client.close()

    def etcdctl(self, *args: str, root: bool = True, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """`etcdctl ARGS` against this member (as root once auth is on)."""
        return etcdctl([self], *args, root=root, check=check)

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited; log:\n{Path(self.log_path).read_text()[-2000:]}")
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


ROOT_PASSWORD = "root-pw-not-secret"  # test clusters only


def client_env(endpoints: str, tls: TLSMaterial | None,
               auth: tuple[str, str] | None) -> dict[str, str]:
    """The ETCD_* variables a client of this etcd needs."""
    env = {"ETCD_ENDPOINTS": endpoints}
    if tls:
        env.update(ETCD_CA_CERT_FILE=tls.ca, ETCD_CERT_FILE=tls.client_cert,
                   ETCD_KEY_FILE=tls.client_key)
    if auth:
        env.update(ETCD_USERNAME=auth[0], ETCD_PASSWORD=auth[1])
    return env


def etcdctl(members: Sequence[EtcdServer], *args: str, root: bool = True,
            check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`etcdctl` (API v3) against the running `members`, inside their namespace."""
    first = members[0]
    cmd = ["etcdctl", "--endpoints", ",".join(m.url for m in members),
           "--command-timeout", "10s", "--dial-timeout", "3s"]
    if first.tls:
        cmd += ["--cacert", first.tls.ca, "--cert", first.tls.client_cert,
                "--key", first.tls.client_key]
    if root and first.auth_enabled:
        cmd += ["--user", f"root:{ROOT_PASSWORD}"]
    cmd += list(args)
    if first.netns:
        cmd = ["ip", "netns", "exec", first.netns, *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    env["ETCDCTL_API"] = "3"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    return proc


def enable_auth(members: Sequence[EtcdServer], user: str, password: str) -> None:
    """etcd authentication on: `root`, and `user` allowed to read and write the
    project's tree (/calico) only."""
    from libcalico.keyspace import ROOT

    def run(*args: str) -> None:
        etcdctl(members, *args, root=False)

    run("user", "add", f"root:{ROOT_PASSWORD}")
    run("role", "add", "calico")
    run("role", "grant-permission", "calico", "--prefix=true", "readwrite", ROOT)
    run("user", "add", f"{user}:{password}")
    run("user", "grant-role", user, "calico")
    run("auth", "enable")
    for m in members:
        m.auth_enabled = True


class EtcdCluster:
    """`size` etcd members, one process each, on `hosts` (one address per member; default
    127.0.0.1 for all) inside `netns`. Members are `members[i]`; `start()` returns once the
    cluster serves requests. The interface matches `EtcdServer` where a client needs it
    (`env`, `client`, `settings`, `url`, `cleanup`)."""

    def __init__(self, size: int = 3, hosts: Sequence[str] | None = None,
                 netns: str | None = None, tls: TLSMaterial | None = None,
                 unix_socket: bool = False, auth: tuple[str, str] | None = None) -> None:
        hosts = list(hosts) if hosts else ["127.0.0.1"] * size
        if len(hosts) != size:
            raise ValueError("one host address per member")
        self.data_dir = tempfile.mkdtemp(prefix="calico-test-etcd-cluster-",
                                         dir=scratch_dir())
        self.tls = tls
        self.auth = auth
        self.members = [EtcdServer(host=h, tls=tls, netns=netns, unix_socket=unix_socket,
                                   name=f"m{i}",
                                   data_dir=os.path.join(self.data_dir, f"m{i}"))
                        for i, h in enumerate(hosts)]
        for m in self.members:
            os.makedirs(m.data_dir, exist_ok=True)
        self._set_initial_cluster()

    def _set_initial_cluster(self) -> None:
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = cluster

    # --- the EtcdServer-like interface ---------------------------------------------------

    @property
    def url(self) -> str:
        """Every member's client URL, comma-separated (an ETCD_ENDPOINTS value)."""
        return ",".join(m.url for m in self.members)

    @property
    def auth_enabled(self) -> bool:
        return self.members[0].auth_enabled

    def env(self, for_test_process: bool = True) -> dict[str, str]:
        urls = ",".join(m.client_url if for_test_process else m.url for m in self.members)
        return client_env(urls, self.tls, self.auth if self.auth_enabled else None)

    def settings(self, timeout: float = 5.0) -> EtcdSettings:
        return EtcdSettings.from_env(self.env(), timeout=timeout)

    def client(self, timeout: float = 5.0) -> Datastore:
        return Datastore(self.settings(timeout))

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        for m in self.members:
            m.launch()
        for m in self.members:
            m.wait_ready(timeout)
        if self.auth is not None and not self.auth_enabled:
            enable_auth(self.members, *self.auth)
        return self

    def kill(self, index: int) -> None:
        """SIGKILL one member (its data stays; `start_member` brings it back)."""
        self.members[index].kill()

    def stop_member(self, index: int) -> None:
        self.members[index].stop()

    def start_member(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped member again from its data directory."""
        m = self.members[index]
        m.launch()
        if sum(x.running for x in self.members) * 2 > len(self.members):
            m.wait_ready(timeout)

    def stop_all(self, sig: int = signal.SIGKILL) -> None:
        for m in self.members:
            m.stop(sig)

    def start_all(self, timeout: float = 60.0) -> None:
        for m in self.members:
            if not m.running:
                m.launch()
        for m in self.members:
            m.wait_ready(timeout)

    def cleanup(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # --- inspection and administration ---------------------------------------------------

    def running_members(self) -> list[EtcdServer]:
        return [m for m in self.members if m.running]

    def leader(self, timeout: float = 15.0) -> int:
        """The index of the current leader (waits for one to be elected)."""
        def find() -> int | None:
            alive = self.running_members()
            proc = etcdctl(alive, "endpoint", "status", "-w", "json", check=False)
            if proc.returncode != 0 and not proc.stdout.strip():
                return None
            for entry in json.loads(proc.stdout or "[]"):
                status = entry.get("Status", {})
                if status.get("leader") and status["leader"] == status.get(
                        "header", {}).get("member_id"):
                    url = entry.get("Endpoint", "")
                    return next(i for i, m in enumerate(self.members) if m.url == url)
            return None

        found: list[int] = []

        def elected() -> bool:
            index = find()
            if index is not None:
                found.append(index)
            return index is not None

        wait_for(elected, timeout, message="an etcd leader")
        return found[-1]

    def member_ids(self) -> dict[str, int]:
        """member name -> etcd's member id."""
        proc = etcdctl(self.running_members(), "member", "list", "-w", "json")
        return {m["name"]: int(m["ID"]) for m in json.loads(proc.stdout)["members"]}

    def move_leader(self, index: int, timeout: float = 15.0) -> None:
        """Make member `index` the leader (`etcdctl move-leader`, sent to the leader)."""
        current = self.leader(timeout)
        if current == index:
            return
        target = self.member_ids()[self.members[index].name]
        etcdctl([self.members[current]], "move-leader", f"{target:x}")
        wait_for(lambda: self.leader(timeout) == index, timeout,
                 message=f"member {index} leading")

    def snapshot(self, path: str) -> None:
        """`etcdctl snapshot save` from one running member."""
        member = self.running_members()[0]
        etcdctl([member], "snapshot", "save", path)

    def restore(self, path: str, timeout: float = 60.0) -> None:
        """Stop every member, restore each one's data from the snapshot at `path` (a new
        cluster with the snapshot's content and revision), start them again."""
        self.stop_all(signal.SIGTERM)
        token = f"restored-{time.monotonic_ns()}"  # one new cluster: one token for all
        for m in self.members:
            shutil.rmtree(m.member_dir, ignore_errors=True)
            cmd = ["etcdctl", "snapshot", "restore", path, "--name", m.name,
                   "--data-dir", m.member_dir, "--initial-cluster", m.initial_cluster,
                   "--initial-advertise-peer-urls", m.peer_url,
                   "--initial-cluster-token", token]
            subprocess.run(cmd, capture_output=True, text=True, check=True,
                           env={**os.environ, "ETCDCTL_API": "3"})
        self.start_all(timeout)
