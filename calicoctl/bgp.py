"""`calicoctl bgp`: global BGP peers, the node-to-node mesh and the default AS.

Owns: `bgp peer add IP as AS`, `bgp peer remove IP`, `bgp peer show [--ipv4|--ipv6]`,
`bgp node-mesh [on|off]`, `bgp default-node-as [AS]`, and the peer commands shared
with `node bgp peer` (`add_peer_commands`).

Leaves to others: validation (`BGPPeer`, `parse_as_num`), storage (`libcalico.client`),
turning it into BIRD config (confd).
"""

from __future__ import annotations

from collections.abc import Callable

import click

from calicoctl.context import ctl
from calicoctl.output import emit, output_option


def add_peer_commands(group: click.Group, hostname: Callable[[], str | None]) -> None:
    """`peer add|remove|show` on `group`; `hostname()` is None for global peers."""

    @group.group("peer")
    def peer() -> None:
        """Manage BGP peers."""

    @peer.command("add")
    @click.argument("peer_ip")
    @click.argument("as_word", metavar="as", type=click.Choice(["as"]))
    @click.argument("as_num", metavar="AS_NUM")
    def peer_add(peer_ip: str, as_word: str, as_num: str) -> None:
        """Add a BGP peer: PEER_IP as AS_NUM."""
        from libcalico.model import BGPPeer, parse_as_num

        ctl().client.add_bgp_peer(BGPPeer(peer_ip, parse_as_num("as_num", as_num), hostname()))

    @peer.command("remove")
    @click.argument("peer_ip")
    def peer_remove(peer_ip: str) -> None:
        """Remove a BGP peer."""
        from libcalico.model.validate import canonical_address

        ctl().client.remove_bgp_peer(canonical_address("PEER_IP", peer_ip), hostname())

    @peer.command("show")
    @click.option("--ipv4", "version", flag_value=4, help="IPv4 peers only.")
    @click.option("--ipv6", "version", flag_value=6, help="IPv6 peers only.")
    @output_option
    def peer_show(version: int | None, output: str) -> None:
        """Show BGP peers."""
        peers = ctl().client.list_bgp_peers(hostname(), version)
        data = [p.to_resource() for p in peers]
        if output in ("json", "yaml"):
            emit(output, data, [], [])
            return
        scope = "global" if hostname() is None else "node specific"
        for v in (4, 6) if version is None else (version,):
            emit(output, data, [f"Peer IPv{v} ({scope})", "AS Num"],
                 [(p.ip, p.as_num) for p in peers if p.version == v])


@click.group()
def bgp() -> None:
    """Configure global BGP: peers, node-to-node mesh, default AS."""


add_peer_commands(bgp, lambda: None)


@bgp.command("node-mesh")
@click.argument("state", type=click.Choice(["on", "off"]), required=False)
def node_mesh(state: str | None) -> None:
    """Turn the full node-to-node mesh on or off; without an argument, show it."""
    client = ctl().client
    if state is None:
        click.echo("on" if client.get_bgp_config().node_mesh else "off")
    else:
        client.set_node_mesh(state == "on")


@bgp.command("default-node-as")
@click.argument("as_num", metavar="AS_NUM", required=False)
def default_node_as(as_num: str | None) -> None:
    """Set the AS number nodes use by default; without an argument, show it."""
    client = ctl().client
    if as_num is None:
        click.echo(str(client.get_bgp_config().as_num))
    else:
        client.set_default_as(as_num)


COMMANDS = [bgp]
