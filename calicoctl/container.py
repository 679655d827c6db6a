"""`calicoctl container`: give a container (network namespace or Docker container) an
interface and addresses, change them, and take them away.

Owns: resolving CONTAINER (a namespace name under /run/netns, an absolute namespace
path, or, when a Docker engine runs, a container id or name via `docker inspect` on
the engine DOCKER_HOST names, default /var/run/docker.sock, through
`calicoctl.dockercli`) into an orchestrator ("netns" or "docker"), a workload id and a
namespace path, plus for a Docker container the endpoints Docker's calico networks gave
it (orchestrator "libnetwork", found by the endpoint ids `docker inspect` lists), so
`endpoint show` and `profile ...` see those too; and the command words:
  container add CONTAINER (IP|ipv4|ipv6|POOL_CIDR) [--interface=eth1]
  container remove CONTAINER
  container CONTAINER ip (add|remove) IP [--interface=eth1]
  container CONTAINER endpoint show
  container CONTAINER profile (append|remove|set) [PROFILES...]

Group options (`--hostname`) go before CONTAINER or a command word alike:
`calicoctl container --hostname H CONTAINER profile set P` (see `calicoctl.groups`).

Leaves to others: the work itself - every step undone on failure, removals a retry
finishes - (`workload.provision`), netlink (`workload.veth`), IPAM and storage.
"""

from __future__ import annotations

import os
from typing import Any

import click

from calicoctl.context import ctl, this_hostname
from calicoctl.dockerworkloads import Target, docker_target, target_endpoints
from calicoctl.groups import NamedGroup, named_subgroup
from calicoctl.output import emit, output_option

_interface = click.option("--interface", default="eth1", show_default=True,
                          help="Interface name inside the container.")


def resolve_container(container: str) -> tuple[str, str, str]:
    """(orchestrator, workload id, namespace path) for CONTAINER."""
    target = resolve_target(container)
    return target.orchestrator, target.workload, target.netns


def resolve_target(container: str) -> Target:
    """CONTAINER as a namespace name under /run/netns, an absolute namespace path, or a
    Docker container's name or (short) id on the engine DOCKER_HOST names."""
    from libcalico.errors import NotFound

    if container.startswith("/"):
        if not os.path.exists(container):
            raise NotFound(f"network namespace {container} does not exist")
        if os.path.dirname(container) == "/run/netns":
            return Target("netns", os.path.basename(container), container)
        return Target("netns", container.strip("/").replace("/", "_"), container)
    path = f"/run/netns/{container}"
    if "/" not in container and os.path.exists(path):
        return Target("netns", container, path)
    docker = docker_target(container)
    if docker is not None:
        return docker
    raise NotFound(f"no network namespace or Docker container named {container}")


def _clients() -> tuple[Any, Any]:
    from libcalico.ipam import IPAMClient

    return ctl().client, IPAMClient(ctl().store)


@click.group(cls=NamedGroup)
@click.option("--hostname", default=None,
              help="This node's name (default: $HOSTNAME, else the system hostname).")
@click.pass_context
def container(ctx: click.Context, hostname: str | None) -> None:
    """Add containers (network namespaces or Docker containers) to the network.

    \b
    Per-container commands (--hostname goes before CONTAINER):
      calicoctl container [--hostname=H] CONTAINER ip (add|remove) IP [--interface=NAME]
      calicoctl container [--hostname=H] CONTAINER endpoint show
      calicoctl container [--hostname=H] CONTAINER profile (append|remove|set) [PROFILES...]
    """
    ctx.meta["calicoctl.hostname"] = this_hostname(hostname)


def _host() -> str:
    return str(click.get_current_context().meta["calicoctl.hostname"])


@container.command("add")
@click.argument("name", metavar="CONTAINER")
@click.argument("ip", metavar="IP|ipv4|ipv6|CIDR")
@_interface
def container_add(name: str, ip: str, interface: str) -> None:
    """Add CONTAINER with an address (literal, auto IPv4/IPv6, or from a pool CIDR)."""
    from workload.provision import Workload, add_workload

    orch, workload, path = resolve_container(name)
    client, ipam = _clients()
    ep = add_workload(client, ipam, Workload(_host(), orch, workload, path), [ip],
                      ifname=interface)
    addrs = ", ".join((*ep.ipv4_nets, *ep.ipv6_nets))
    click.echo(f"IP {addrs} added to {name} (endpoint {ep.endpoint_id}, interface "
               f"{ep.name})")


@container.command("remove")
@click.argument("name", metavar="CONTAINER")
def container_remove(name: str) -> None:
    """Remove CONTAINER's interfaces, endpoints and addresses."""
    from workload.provision import remove_workload

    orch, workload, _ = _identity(name)
    client, ipam = _clients()
    remove_workload(client, ipam, _host(), orch, workload)
    click.echo(f"Removed networking from {name}")


def _identity(name: str) -> tuple[str, str, str]:
    """Like resolve_container, but a vanished netns can still be cleaned up by name."""
    from libcalico.errors import NotFound

    try:
        return resolve_container(name)
    except NotFound:
        if "/" in name and not name.startswith("/run/netns/"):
            raise
        return "netns", os.path.basename(name), f"/run/netns/{os.path.basename(name)}"


@named_subgroup(container, "CONTAINER", "Commands on one container.")
def container_named(ctx: click.Context, name: str) -> None:
    ctx.meta["calicoctl.container"] = name


def _endpoints() -> tuple[list[Any], str]:
    """Every endpoint of the named container on this host (NotFound if none)."""
    from libcalico.errors import NotFound

    name = click.get_current_context().meta["calicoctl.container"]
    target = resolve_target(name)
    eps = target_endpoints(ctl().client, _host(), target)
    if not eps:
        raise NotFound(f"container {name} has no endpoint on {_host()}")
    return eps, target.netns


def _endpoint() -> tuple[Any, str]:
    eps, path = _endpoints()
    return eps[0], path


@container_named.group("ip")
def container_ip() -> None:
    """Add or remove a container's addresses."""


@container_ip.command("add")
@click.argument("ip", metavar="IP|ipv4|ipv6|CIDR")
@_interface
def container_ip_add(ip: str, interface: str) -> None:
    """Add an address to the container's interface."""
    from workload.provision import add_address

    ep, path = _endpoint()
    client, ipam = _clients()
    got = add_address(client, ipam, ep, path, interface, ip)
    click.echo(f"IP {got} added to {click.get_current_context().meta['calicoctl.container']}")


@container_ip.command("remove")
@click.argument("ip", metavar="IP")
@_interface
def container_ip_remove(ip: str, interface: str) -> None:
    """Remove an address from the container's interface."""
    from libcalico.model.validate import canonical_address
    from workload.provision import remove_address

    addr = canonical_address("IP", ip)
    ep, path = _endpoint()
    client, ipam = _clients()
    remove_address(client, ipam, ep, path, interface, addr)
    click.echo(f"IP {addr} removed from "
               f"{click.get_current_context().meta['calicoctl.container']}")


@container_named.group("endpoint")
def container_endpoint() -> None:
    """The container's endpoint."""


@container_endpoint.command("show")
@output_option
def container_endpoint_show(output: str) -> None:
    """Show the container's endpoint."""
    from calicoctl.endpoint import DETAILED_HEADERS, endpoint_rows

    eps, _ = _endpoints()
    emit(output, [ep.to_resource() for ep in eps], DETAILED_HEADERS, endpoint_rows(eps))


@container_named.group("profile")
def container_profile() -> None:
    """Manage the profiles of the container's endpoint."""


def _make_profile_command(op: str) -> None:
    @container_profile.command(op, help=f"{op.capitalize()} profiles of the container.")
    @click.argument("profiles", nargs=-1)
    def command(profiles: tuple[str, ...]) -> None:
        from calicoctl.endpoint import change_profiles

        eps, _ = _endpoints()
        for ep in eps:
            change_profiles(ep.ident, op, profiles)


for _op in ("append", "remove", "set"):
    _make_profile_command(_op)


COMMANDS = [container]
