"""What both node runtimes share (`--runtime=none` in `calicoctl.noderun`, `--runtime=docker`
in `calicoctl.nodedocker`): the node's address auto-detection and registration (said on
stdout), the etcd settings handed to the programs, and how program states and BGP sessions
are shown.

Leaves to others: the datastore writes (`calicoctl.nodestart`), supervisord
(`calicoctl.supervisor`), BIRD's session parsing (`calicoctl.status`), each runtime's
start-up sequence.
"""

from __future__ import annotations

import os
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.errors import CommandFailed


def node_ipv4(given: str | None) -> tuple[str, str | None]:
    """This node's IPv4 address for BGP and the subnet it sits in (for cross-subnet
    encapsulation): from `--ip ADDRESS[/LEN]`, else auto-detected; the subnet, when `--ip`
    gives no length, from the interface address that holds it (said on stdout)."""
    from calicoctl.nodestart import detect_addresses, detect_network
    from libcalico.model import Node

    parsed = Node("node", ipv4=given) if given else None
    ip = parsed.ipv4 if parsed else None
    network = parsed.ipv4_network if parsed else None
    if ip is None:
        ip = detect_addresses((4,))[4]
        if ip is None:
            raise CommandFailed("could not auto-detect this host's IPv4 address; give --ip",
                                code=2)
        click.echo(f"Using auto-detected IPv4 address {ip}")
    if network is None:
        network = detect_network(ip)
        if network is None:
            click.echo(f"IPv4 address {ip} is on no interface with a subnet: cross-subnet "
                       "pools will encapsulate to every host (give --ip ADDRESS/LEN)")
    return ip, network


def register(host: str, ip: str, ip6: str | None, asn: int | None,
             network: str | None = None) -> None:
    """Create the cluster defaults still missing and register this node (said on stdout)."""
    from calicoctl.nodestart import initialise_cluster, register_node

    client = ctl().client
    created = initialise_cluster(client, default_pools=not os.environ.get("NO_DEFAULT_POOLS"))
    for what in created.created:
        click.echo(f"Initialised the cluster: {what}")
    register_node(client, host, ip, ip6, asn, network)
    click.echo(f"Registered node {host} (IPv4 {ip}" + (f" in {network}" if network else "")
               + (f", IPv6 {ip6}" if ip6 else "") + ")")


def etcd_environment() -> dict[str, str]:
    """The etcd settings given on calicoctl's command line, for the programs. The password
    is never among them: the programs read ETCD_PASSWORD from the environment they
    inherit, so it never appears on a command line."""
    c = ctl()
    given = {"ETCD_ENDPOINTS": c.endpoints, "ETCD_AUTHORITY": c.authority,
             "ETCD_CA_CERT_FILE": c.ca_cert, "ETCD_CERT_FILE": c.cert_file,
             "ETCD_KEY_FILE": c.key_file, "ETCD_USERNAME": c.username}
    return {k: v for k, v in given.items() if v}


def print_programs(states: list[Any]) -> None:
    from calicoctl.output import render_table

    if states:
        click.echo(render_table(["Program", "State", "Info"],
                                [(s.name, s.state, s.description) for s in states]))


def show_status(programs: list[Any], sessions: list[Any], output: str) -> None:
    """`node status` output: the programs' states, then BIRD's BGP sessions."""
    from dataclasses import asdict

    from calicoctl.output import emit
    from calicoctl.status import print_sessions

    bird = any(p.name == "bird" and p.state == "RUNNING" for p in programs)
    if output in ("json", "yaml"):
        emit(output, {"programs": [asdict(p) for p in programs],
                      "bgp": [asdict(s) for s in sessions]}, [], [])
        return
    click.echo("Calico process is running.\n")
    print_programs(programs)
    if not bird:
        click.echo("\nBIRD is not running: no BGP sessions.")
        return
    click.echo()
    print_sessions(output, sessions)
