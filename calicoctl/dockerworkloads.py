"""Docker containers as workloads: what a container's name or id stands for.

Owns `docker_target`: a Docker container (by name or id, on the engine DOCKER_HOST
names, asked through `calicoctl.dockercli`) as a `Target` - orchestrator "docker", its
full id as the workload (what `calicoctl container add` records), its network namespace,
and the endpoint ids that Docker's calico networks gave it (`docker inspect` lists one
per network); and `target_endpoints`, all of that container's endpoints on a host: those
`calicoctl container add` made and those the Docker driver made (orchestrator
"libnetwork", workload = Docker's endpoint id). `calicoctl container` and `calicoctl
endpoint show --workload` use them.

Leaves to others: the commands (`calicoctl.container`, `calicoctl.endpoint`), the engine
client (`calicoctl.dockercli`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The orchestrator id of the Docker network driver's endpoints (calico_libnetwork.api
# .ORCHESTRATOR; tests/unit/test_libnetwork_api.py keeps the two equal): their workload id
# is Docker's endpoint id, which `docker inspect` lists per network of the container.
DOCKER_NETWORK_ORCHESTRATOR = "libnetwork"


@dataclass(frozen=True)
class Target:
    """What CONTAINER names: its workload identity and namespace, and for a Docker
    container the endpoint ids Docker's networks (the calico driver's) gave it."""

    orchestrator: str
    workload: str
    netns: str
    network_endpoints: tuple[str, ...] = ()


def docker_target(container: str) -> Target | None:
    """Docker's view of the container (`docker inspect` through `calicoctl.dockercli`),
    or None when no engine answers or it does not know the container."""
    from calicoctl.dockercli import DockerCLI, DockerError

    docker = DockerCLI(timeout=10)
    if not docker.may_answer():
        return None
    try:
        info = docker.container(container)
    except DockerError:
        return None
    if info is None:
        return None
    pid = (info.get("State") or {}).get("Pid") or 0
    if not pid:
        from calicoctl.errors import CommandFailed

        raise CommandFailed(f"Docker container {container} is not running")
    networks = ((info.get("NetworkSettings") or {}).get("Networks") or {}).values()
    endpoints = tuple(sorted(n["EndpointID"] for n in networks if n.get("EndpointID")))
    return Target("docker", info["Id"], f"/proc/{pid}/ns/net", endpoints)


def target_endpoints(client: Any, host: str | None, target: Target) -> list[Any]:
    """The container's endpoints on `host` (None: any): those `calicoctl container add` made and
    those Docker's calico networks made for it."""
    eps = list(client.list_workload_endpoints(host, target.orchestrator, target.workload))
    for endpoint_id in target.network_endpoints:
        eps += client.list_workload_endpoints(host, DOCKER_NETWORK_ORCHESTRATOR, endpoint_id)
    return eps
