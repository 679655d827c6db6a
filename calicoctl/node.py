"""`calicoctl node`: run, stop, show and remove nodes, and node-specific BGP peers.

Owns the `node` group: `node [run]` (the group itself with no subcommand runs the
node), `node stop`, `node status` (their work is in `calicoctl.noderun`), `node show`,
`node remove [--hostname] [--remove-endpoints]` and `node bgp peer add|remove|show`.

`node remove` also gives the node's endpoint addresses, its tunnel addresses and its
block affinities back to IPAM, and removes this host's stopped node containers. `node image
build` is `calicoctl.nodeimage`. Leaves to others: storage (`libcalico.client`), IPAM
(`libcalico.ipam`).
"""

from __future__ import annotations

from typing import Any

import click

from calicoctl.bgp import add_peer_commands
from calicoctl.context import ctl, hostname_option, this_hostname
from calicoctl.nodeimage import image_group
from calicoctl.noderun import node_status, run_dir_option, run_node, run_options, stop_node
from calicoctl.output import emit, output_option


@click.group(invoke_without_command=True)
@run_options
@click.pass_context
def node(ctx: click.Context, **options: Any) -> None:
    """Run Calico on this host (`node` or `node run`), or manage nodes."""
    if ctx.invoked_subcommand is None:
        run_node(**options)


@node.command("run")
@run_options
def node_run(**options: Any) -> None:
    """Start felix, confd and BIRD on this host under supervisord."""
    run_node(**options)


runtime_option = click.option(
    "--runtime", type=click.Choice(["docker", "none"]), default=None,
    help="How the node runs (default: docker when the engine DOCKER_HOST names has a "
    "calico-node container, else none).")


@node.command("stop")
@hostname_option
@run_dir_option
@runtime_option
@click.option("--force", is_flag=True, help="Stop even though the node has endpoints.")
def node_stop(hostname: str | None, run_dir: str, runtime: str | None, force: bool) -> None:
    """Stop this node's programs (the dataplane and datastore entries stay)."""
    stop_node(hostname, run_dir, force, runtime)


@node.command("status")
@run_dir_option
@runtime_option
@output_option
def node_status_command(run_dir: str, runtime: str | None, output: str) -> None:
    """Show the node's programs and its BGP sessions."""
    node_status(run_dir, output, runtime)


node.add_command(image_group)


@node.command("show")
@output_option
def node_show(output: str) -> None:
    """Show every node with its BGP addresses and AS."""
    client = ctl().client
    nodes = client.list_nodes()
    default_as = None
    rows = []
    for n in nodes:
        if n.as_num is None and default_as is None:
            default_as = client.get_bgp_config().as_num
        asn = str(n.as_num) if n.as_num is not None else f"{default_as} (inherited)"
        rows.append((n.hostname, n.ipv4 or "", n.ipv6 or "", asn))
    emit(output, [n.to_resource() for n in nodes], ["Hostname", "Bird IPv4", "Bird IPv6", "AS Num"],
         rows)


@node.command("remove")
@hostname_option
@click.option("--remove-endpoints", is_flag=True,
              help="Also remove the node's endpoints (otherwise refused while it has any).")
def node_remove(hostname: str | None, remove_endpoints: bool) -> None:
    """Remove a node's data from the datastore (default: this node)."""
    import ipaddress

    from calicoctl.nodedocker import containers_to_remove
    from libcalico.errors import Conflict, NotFound
    from libcalico.ipam import IPAMClient
    from libcalico.tunnel import release_tunnels

    host = this_hostname(hostname)
    client = ctl().client
    if host not in client.list_node_names():
        raise NotFound(f"node {host} does not exist")
    remove_containers = containers_to_remove(host)  # refuses while they run
    eps = client.list_workload_endpoints(host)
    if eps and not remove_endpoints:
        raise Conflict(f"node {host} still has {len(eps)} workload endpoint(s); "
                       "use --remove-endpoints")
    # Give the node's addresses (its endpoints', its tunnels') and blocks back to IPAM
    # before its keys go.
    ipam = IPAMClient(ctl().store)
    ips = [str(ipaddress.ip_interface(n).ip) for e in eps for n in (*e.ipv4_nets, *e.ipv6_nets)]
    if ips:
        ipam.release_ips(ips)
    release_tunnels(ipam, host)
    for block in ipam.host_blocks(host):
        ipam.release_affinity(host, block)
    client.remove_node(host, remove_endpoints)
    remove_containers()
    click.echo(f"Removed node {host}")


@node.group("bgp")
@hostname_option
@click.pass_context
def node_bgp(ctx: click.Context, hostname: str | None) -> None:
    """Manage this node's own BGP peers."""
    ctx.meta["calicoctl.node_host"] = this_hostname(hostname)


add_peer_commands(node_bgp, lambda: click.get_current_context().meta["calicoctl.node_host"])

COMMANDS = [node]
