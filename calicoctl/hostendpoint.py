"""`calicoctl hostendpoint`: put a host's own interfaces under policy, from the shell.

Owns: `hostendpoint add ENDPOINT_ID [--node H] [--interface IF] [--ip IP]...
[--profile P]... [--label K=V]...`, `hostendpoint remove ENDPOINT_ID [--node H]` and
`hostendpoint show [--node H]`: the short form of a `hostEndpoint` resource file.
`add` creates (an existing endpoint is an error: change it with `apply -f`), after the
same checks as `apply` (interface name, addresses, labels, profiles that exist).

Leaves to others: validation (`libcalico.model.HostEndpoint`), the write
(`CalicoClient.apply_resources`), what felix does with it (docs/policy.md).
"""

from __future__ import annotations

import click

from calicoctl.context import ctl, this_hostname
from calicoctl.output import emit, output_option

node_option = click.option("--node", default=None, metavar="HOSTNAME",
                           help="The host the endpoint belongs to (default: $HOSTNAME, else "
                                "the system hostname).")


@click.group()
def hostendpoint() -> None:
    """Manage host endpoints: a host's interfaces under policy (failsafe ports stay open)."""


@hostendpoint.command("add")
@click.argument("endpoint_id")
@node_option
@click.option("--interface", default=None, metavar="IFNAME",
              help="The interface (policy applies to traffic through it).")
@click.option("--ip", "ips", multiple=True, metavar="IP",
              help="An address the interface is expected to have (repeatable); used for "
                   "tags and selectors.")
@click.option("--profile", "profiles", multiple=True, metavar="PROFILE",
              help="A profile to apply, in order (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label for policy selectors (repeatable).")
def add(endpoint_id: str, node: str | None, interface: str | None, ips: tuple[str, ...],
        profiles: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """Create host endpoint ENDPOINT_ID on a node (an interface name and/or addresses)."""
    from libcalico.errors import ValidationError
    from libcalico.model import HostEndpoint
    from libcalico.model.validate import canonical_address

    label_map: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValidationError("--label", item, "expected KEY=VALUE")
        label_map[key] = value
    v4: list[str] = []
    v6: list[str] = []
    for ip in ips:
        (v6 if ":" in ip else v4).append(canonical_address("--ip", ip))
    hep = HostEndpoint(this_hostname(node), endpoint_id, name=interface,
                       expected_ipv4_addrs=tuple(v4), expected_ipv6_addrs=tuple(v6),
                       profile_ids=profiles, labels=label_map)
    ctl().client.apply_resources([hep], "create")
    click.echo(f"Created host endpoint {endpoint_id} on {hep.hostname}")


@hostendpoint.command("remove")
@click.argument("endpoint_id")
@node_option
def remove(endpoint_id: str, node: str | None) -> None:
    """Remove host endpoint ENDPOINT_ID (its interface is no longer policed)."""
    hostname = this_hostname(node)
    ctl().client.delete_host_endpoint(hostname, endpoint_id)
    click.echo(f"Removed host endpoint {endpoint_id} from {hostname}")


@hostendpoint.command("show")
@click.option("--node", default=None, metavar="HOSTNAME", help="Only this host's endpoints.")
@output_option
def show(node: str | None, output: str) -> None:
    """Show host endpoints."""
    from calicoctl.tables import table_for

    found = ctl().client.list_host_endpoints(node)
    headers = ["HOSTNAME", "NAME", "INTERFACE", "EXPECTED IPS", "PROFILES", "LABELS"]
    rows = [(*row, ",".join(f"{k}={v}" for k, v in e.labels.items()))
            for e, row in zip(found, table_for("hostEndpoint", found, wide=True)[1],
                              strict=True)]
    emit(output, [e.to_resource() for e in found], headers, rows)


COMMANDS = [hostendpoint]
