"""`calicoctl node`: show and remove nodes, and manage node-specific BGP peers.

Owns: `node show`, `node remove [--hostname] [--remove-endpoints]` and
`node bgp peer add|remove|show`. Starting and stopping a node belongs to the node
issue, which adds its commands to this group (`node`).

`node remove` also gives the node's endpoint addresses and block affinities back to
IPAM. Leaves to others: storage (`libcalico.client`), IPAM (`libcalico.ipam`).
"""

from __future__ import annotations

import click

from calicoctl.bgp import add_peer_commands
from calicoctl.context import ctl, hostname_option, this_hostname
from calicoctl.output import emit, output_option


@click.group()
def node() -> None:
    """Manage Calico nodes."""


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

    host = this_hostname(hostname)
    client = ctl().client
    if host not in client.list_node_names():
        raise NotFound(f"node {host} does not exist")
    eps = client.list_workload_endpoints(host)
    if eps and not remove_endpoints:
        raise Conflict(f"node {host} still has {len(eps)} workload endpoint(s); "
                       "use --remove-endpoints")
    # Give the node's addresses and blocks back to IPAM before its keys go.
    ipam = IPAMClient(ctl().store)
    ips = [str(ipaddress.ip_interface(n).ip) for e in eps for n in (*e.ipv4_nets, *e.ipv6_nets)]
    if ips:
        ipam.release_ips(ips)
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
