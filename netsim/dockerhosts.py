"""Simulated hosts with a Docker engine each, where the node runs as a container.

Owns `DockerHosts`: one private engine per host of a `Topology` (in the host's network
namespace, its directory below the host's scratch directory), this checkout's node
image loaded into each, `calicoctl` run inside a host against that host's engine
(`calicoctl`), `calicoctl node --runtime=docker` with the host's name, addresses and log
directory (`start_node`), the Docker driver as a process of the host listening in its
engine's plugin directory (`start_driver`, `stop_driver`), and stopping every engine
with its containers (before the topology itself goes). Engines start in parallel, as do
image loads.

Leaves to others: the hosts and etcd (`netsim.topology`), the engines
(`netsim.dockerd`), the image (`netsim.nodeimage`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from netsim.dockerd import DockerEngine
from netsim.nodeimage import load_node_image
from netsim.topology import Host, Topology

DRIVER_START_S = 30.0


def driver_path() -> str:
    """The `calico-libnetwork` program next to this Python (the checkout's venv)."""
    here = os.path.join(os.path.dirname(sys.executable), "calico-libnetwork")
    return here if os.path.exists(here) else shutil.which("calico-libnetwork") or \
        "calico-libnetwork"


class DockerHosts:
    """An engine per host of `topo` (all hosts unless `hosts` is given)."""

    def __init__(self, topo: Topology, hosts: Sequence[Host] | None = None,
                 load_image: bool = True) -> None:
        self.topo = topo
        self.engines: dict[str, DockerEngine] = {}
        chosen = list(hosts if hosts is not None else topo.hosts)
        results: dict[str, DockerEngine | BaseException] = {}

        def start(host: Host) -> None:
            try:
                results[host.name] = self._start(host, load_image)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                results[host.name] = exc

        with ThreadPoolExecutor(max(1, len(chosen))) as pool:
            list(pool.map(start, chosen))
        self.engines = {n: e for n, e in results.items() if isinstance(e, DockerEngine)}
        errors = [e for e in results.values() if not isinstance(e, DockerEngine)]
        if errors:
            self.close()
            raise errors[0]

    @staticmethod
    def _start(host: Host, load_image: bool) -> DockerEngine:
        engine = DockerEngine.start(host.ns.name, parent=host.dir)
        try:
            if load_image:
                load_node_image(engine)
        except BaseException:
            engine.stop()
            raise
        return engine

    def engine(self, host: Host) -> DockerEngine:
        return self.engines[host.name]

    def calicoctl(self, host: Host, *args: str, check: bool = True,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`calicoctl ARGS` inside `host`, with DOCKER_HOST naming its engine."""
        return self.topo.calicoctl(host, *args, check=check,
                                   env={**self.engine(host).env(), **(env or {})})

    def start_node(self, host: Host, *args: str, check: bool = True,
                   env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`calicoctl node --runtime=docker` in `host` (its fabric addresses as --ip/--ip6)."""
        ip6 = [f"--ip6={host.ip6}"] if host.ip6 else []
        return self.calicoctl(host, "node", "--runtime=docker", f"--name={host.name}",
                              f"--ip={host.ip}", *ip6, f"--log-dir={host.dir / 'log'}",
                              *args, check=check, env=env)

    def start_driver(self, host: Host, env: Mapping[str, str] | None = None,
                     timeout: float = DRIVER_START_S) -> subprocess.Popen[bytes]:
        """`calico-libnetwork` as a process in `host` (its log: `<host dir>/calico-libnetwork
        .log`), its sockets in the engine's plugin directory, asking that engine for
        network names; returns once both sockets exist."""
        engine = self.engine(host)
        sockets = [engine.plugin_dir / "calico.sock", engine.plugin_dir / "calico-ipam.sock"]
        for sock in sockets:
            sock.unlink(missing_ok=True)
        full = self.topo.daemon_env({"HOSTNAME": host.name, "DOCKER_HOST": engine.host,
                                     "CALICO_LIBNETWORK_SOCKET": str(sockets[0]),
                                     **(env or {})})
        proc = self.topo.spawn(host, [driver_path()], name="calico-libnetwork", env=full)
        deadline = time.monotonic() + timeout
        while not all(s.is_socket() for s in sockets):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop_driver(host, proc)
                raise RuntimeError(f"calico-libnetwork did not start in {host.name}: "
                                   f"{self.topo.log_tail(host, 'calico-libnetwork', 1500)}")
            time.sleep(0.05)
        return proc

    def stop_driver(self, host: Host, proc: subprocess.Popen[bytes]) -> int | None:
        """Stop a driver `start_driver` started (SIGTERM: it removes its sockets)."""
        code = self.topo.stop_process(proc)
        if proc in host.procs:
            host.procs.remove(proc)
        self.topo.forget(proc)
        return code

    def close(self) -> None:
        engines = list(self.engines.values())
        self.engines.clear()
        if engines:
            with ThreadPoolExecutor(len(engines)) as pool:
                list(pool.map(DockerEngine.stop, engines))

    def __enter__(self) -> DockerHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
