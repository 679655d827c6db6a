"""`calicoctl node`: run, stop, show and remove nodes, and node-specific BGP peers.

Owns the `node` group: `node [run]` (the group itself with no subcommand runs the
node), `node stop`, `node status` (their work is in `calicoctl.noderun`), `node show`,
`node remove [--hostname] [--remove-endpoints]` and `node bgp peer add|remove|show`.

`node remove` also gives the node's endpoint addresses, its tunnel addresses and its
block affinities back to IPAM. Leaves to others: storage (`libcalico.client`), IPAM
(`libcalico.ipam`).
"""

from __future__ import annotations

from typing import Any

import click

from calicoctl.bgp import add_peer_commands
from calicoctl.context import ctl, hostname_option, this_hostname
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


@node.command("stop")
@hostname_option
@run_dir_option
@click.option("--force", is_flag=True, help="Stop even though the node has endpoints.")
def node_stop(hostname: str | None, run_dir: str, force: bool) -> None:
    """Stop this node's programs (the dataplane and datastore entries stay)."""
    stop_node(hostname, run_dir, force)


@node.command("status")
@run_dir_option
@output_option
def node_status_command(run_dir: str, output: str) -> None:
    """Show the node's programs and its BGP sessions."""
    node_status(run_dir, output)


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

    from libcalico.errors import Conflict, NotFound
    from libcalico.ipam import IPAMClient
    from libcalico.tunnel import release_tunnels

    host = this_hostname(hostname)
    client = ctl().client
    if host not in client.list_node_names():
        raise NotFound(f"node {host} does not exist")
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
    click.echo(f"Removed node {host}")


@node.group("bgp")
@hostname_option
@click.pass_context
def node_bgp(ctx: click.Context, hostname: str | None) -> None:
    """Manage this node's own BGP peers."""
    ctx.meta["calicoctl.node_host"] = this_hostname(hostname)


add_peer_commands(node_bgp, lambda: click.get_current_context().meta["calicoctl.node_host"])

COMMANDS = [node]
