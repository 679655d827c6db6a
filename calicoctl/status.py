"""`calicoctl status`: this node's BGP identity and its BGP sessions as BIRD reports them.

Owns: asking BIRD (`birdcl -s SOCKET show protocols`), parsing the protocol table
(`parse_protocols`, pure) and classifying sessions by confd's protocol names:
`Mesh_<ip>` node-to-node mesh, `Global_<ip>` global peer, `Node_<ip>` node-specific peer
(the address with '.'/':' written as '_').

Leaves to others: BIRD's configuration (confd), the datastore (`libcalico.client`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass

import click

from calicoctl.context import ctl, hostname_option, this_hostname
from calicoctl.output import emit, output_option

DEFAULT_SOCKET = "/var/run/calico/bird.ctl"


def default_socket() -> str:
    """BIRD's socket in the node's run directory ($CALICO_RUN_DIR, as `node run` uses)."""
    run_dir = os.environ.get("CALICO_RUN_DIR")
    return os.path.join(run_dir, "bird.ctl") if run_dir else DEFAULT_SOCKET


PEER_TYPES = {"Mesh": "node-to-node mesh", "Global": "global", "Node": "node specific"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")


@dataclass(frozen=True)
class BGPSession:
    name: str
    peer: str
    peer_type: str
    state: str  # BIRD's protocol state: up, start, down...
    since: str
    info: str  # e.g. Established, Active, Connect

    @property
    def version(self) -> int:
        return 6 if ":" in self.peer else 4


def peer_from_name(name: str) -> tuple[str, str] | None:
    """(peer address, peer type) from a confd protocol name; None for other protocols."""
    prefix, sep, rest = name.partition("_")
    if not sep or prefix not in PEER_TYPES:
        return None
    for candidate in (rest.replace("_", "."), rest.replace("_", ":")):
        try:
            return str(ipaddress.ip_address(candidate)), PEER_TYPES[prefix]
        except ValueError:
            continue
    return None


def parse_protocols(text: str) -> list[BGPSession]:
    """BGP sessions from `show protocols` output (other protocols are skipped)."""
    sessions = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 5 or words[0] in ("Name", "BIRD") or words[1] != "BGP":
            continue
        peer = peer_from_name(words[0])
        if peer is None:
            continue
        rest = words[4:]
        since = rest.pop(0)
        if _DATE.match(since) and rest:
            since = f"{since} {rest.pop(0)}"
        sessions.append(BGPSession(words[0], peer[0], peer[1], words[3], since,
                                   " ".join(rest)))
    return sessions


def query_bird(socket_path: str) -> str:
    """`show protocols` through BIRD's control socket."""
    from calicoctl.errors import CommandFailed

    birdcl = shutil.which("birdcl") or shutil.which("birdc")
    if birdcl is None:
        raise CommandFailed("birdcl is not installed")
    try:
        proc = subprocess.run([birdcl, "-s", socket_path, "show", "protocols"],
                              capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"BIRD at {socket_path} did not answer") from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Unable to connect" in text:
        raise CommandFailed(f"BIRD is not running (no answer on {socket_path})")
    return proc.stdout


@click.command("status")
@hostname_option
@click.option("--bird-socket", default=default_socket,
              show_default="$CALICO_RUN_DIR/bird.ctl, else " + DEFAULT_SOCKET,
              help="BIRD's control socket.")
@output_option
def status(hostname: str | None, bird_socket: str, output: str) -> None:
    """Show this node and the state of its BGP sessions."""
    from libcalico.errors import DatastoreError

    host = this_hostname(hostname)
    node_line = f"Calico node {host}"
    node_data: dict[str, object] = {"hostname": host}
    try:
        node = ctl().client.get_node(host)
        if node is not None:
            as_num = node.as_num if node.as_num is not None else \
                ctl().client.get_bgp_config().as_num
            node_line += f": IPv4 {node.ipv4 or '-'}, IPv6 {node.ipv6 or '-'}, AS {as_num}"
            node_data.update(ipv4=node.ipv4, ipv6=node.ipv6, as_num=as_num)
        else:
            node_line += " (not configured in the datastore)"
    except DatastoreError as exc:
        node_line += f" (datastore: {exc})"
    sessions = parse_protocols(query_bird(bird_socket))
    if output in ("json", "yaml"):
        emit(output, {"node": node_data, "bgp": [asdict(s) for s in sessions]}, [], [])
        return
    click.echo(node_line)
    print_sessions(output, sessions)


def print_sessions(output: str, sessions: list[BGPSession]) -> None:
    """The IPv4 and IPv6 session tables (table or wide output)."""
    for version in (4, 6):
        click.echo(f"IPv{version} BGP status")
        mine = [s for s in sessions if s.version == version]
        if not mine:
            click.echo(f"No IPv{version} peers found.")
            continue
        emit(output, None, ["Peer address", "Peer type", "State", "Since", "Info"],
             [(s.peer, s.peer_type, s.state, s.since, s.info) for s in mine],
             ["Peer address", "Peer type", "State", "Since", "Info", "Protocol"],
             [(s.peer, s.peer_type, s.state, s.since, s.info, s.name) for s in mine])

COMMANDS = [status]
