"""A real etcd server for tests, benchmarks and the demo.

Owns: starting the Debian `etcd` binary on 127.0.0.1 (or a given address, optionally
inside a network namespace and on a unix socket) with a free port and a temporary data
directory, waiting until it answers, stopping, killing and restarting it, and removing
its data directory. Optionally with TLS client certificates made by
`make_tls_material` (openssl).

Leaves to others: polling (`netsim.wait`), the namespaces it may run in
(`netsim.netns`, `netsim.topology`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
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


def make_tls_material(directory: str, host: str = "127.0.0.1") -> TLSMaterial:
    """A throw-away CA plus server and client certificates, made with openssl."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    (d / "san.cnf").write_text(
        f"subjectAltName=IP:{host},DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")
    return TLSMaterial(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"),
                       str(d / "client.pem"), str(d / "client.key"))


class EtcdServer:
    """One etcd member. `start()` returns once it serves requests."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 tls: TLSMaterial | None = None, netns: str | None = None,
                 data_dir: str | None = None, unix_socket: bool = False) -> None:
        self.host = host
        self.port = port or free_port()
        self.peer_port = free_port()
        self.tls = tls
        self.netns = netns
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
    def client_url(self) -> str:
        """The URL this process uses: the unix socket when there is one."""
        return f"unix://{self.socket_path}" if self.unix_socket else self.url

    def env(self, for_test_process: bool = True) -> dict[str, str]:
        """ETCD_* variables for a client: the test process (unix socket if any) or a
        daemon inside the namespaces (the TCP URL)."""
        env = {"ETCD_ENDPOINTS": self.client_url if for_test_process else self.url}
        if self.tls:
            env.update(ETCD_CA_CERT_FILE=self.tls.ca, ETCD_CERT_FILE=self.tls.client_cert,
                       ETCD_KEY_FILE=self.tls.client_key)
        return env

    def settings(self, timeout: float = 5.0) -> EtcdSettings:
        return EtcdSettings.from_env(self.env(), timeout=timeout)

    def client(self, timeout: float = 5.0) -> Datastore:
        return Datastore(self.settings(timeout))

    def start(self, timeout: float = 30.0) -> EtcdServer:
        listen = self.url + (",unix://etcd.sock:0" if self.unix_socket else "")
        cmd = ["etcd", "--name", "test", "--data-dir", os.path.join(self.data_dir, "data"),
               "--listen-client-urls", listen, "--advertise-client-urls", self.url,
               "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
               "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
               "--initial-cluster", f"test=http://{self.host}:{self.peer_port}",
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
        client = self.client(timeout=1.0)
        try:
            wait_for(lambda: self._alive() and client.revision() > 0, timeout,
                     message=f"etcd at {self.url}")
        finally:
            client.close()
        return self

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

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
