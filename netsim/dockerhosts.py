"""Simulated hosts with a Docker engine each, where the node runs as a container.

Owns `DockerHosts`: one private engine per host of a `Topology` (in the host's network
namespace, its directory below the host's scratch directory), this checkout's node
image loaded into each, `calicoctl` run inside a host against that host's engine
(`calicoctl`), `calicoctl node --runtime=docker` with the host's name, addresses and log
directory (`start_node`), and stopping every engine with its containers (before the
topology itself goes). Engines start in parallel, as do image loads.

Leaves to others: the hosts and etcd (`netsim.topology`), the engines
(`netsim.dockerd`), the image (`netsim.nodeimage`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from netsim.dockerd import DockerEngine
from netsim.nodeimage import load_node_image
from netsim.topology import Host, Topology


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
