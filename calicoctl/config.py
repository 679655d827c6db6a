"""`calicoctl config`: felix and BGP configuration values.

Owns: `config felix NAME [VALUE|--remove] [--force] [--hostname]`,
`config bgp NAME [VALUE|--remove]` and `config node bgp NAME [VALUE|--remove]`.
`loglevel` is the documented name: for felix it is `LogSeverityScreen` (none, debug,
info, warning, error, critical); for BGP the BIRD log level (none, debug, info).
Other felix parameters need --force. Without VALUE the current value is shown.

Leaves to others: storage (`libcalico.client`), felix's own parameter table (felix).
"""

from __future__ import annotations

import click

from calicoctl.context import ctl, hostname_option, this_hostname

FELIX_LOGLEVELS = ("none", "debug", "info", "warning", "error", "critical")
BGP_LOGLEVELS = ("none", "debug", "info")


@click.group()
def config() -> None:
    """Manage felix and BGP configuration."""


def _value_args(fn):  # type: ignore[no-untyped-def]
    fn = click.option("--remove", is_flag=True, help="Remove the value (back to default).")(fn)
    fn = click.argument("value", required=False)(fn)
    return click.argument("name")(fn)


@config.command("felix")
@_value_args
@click.option("--force", is_flag=True, help="Allow names other than loglevel.")
@click.option("--hostname", default=None, help="Set it for this host only.")
def config_felix(name: str, value: str | None, remove: bool, force: bool,
                 hostname: str | None) -> None:
    """Show, set or remove a felix parameter (loglevel = LogSeverityScreen)."""
    from libcalico.errors import NotFound, ValidationError

    if name == "loglevel":
        key = "LogSeverityScreen"
        if value is not None and value.lower() not in FELIX_LOGLEVELS:
            raise ValidationError("loglevel", value, f"must be one of {', '.join(FELIX_LOGLEVELS)}")
        value = value.lower() if value else value
    elif force:
        key = name
    else:
        raise ValidationError("NAME", name, "unknown felix config name (use --force to set "
                                            "any felix parameter)")
    client = ctl().client
    if remove:
        client.set_felix_value(key, None, hostname)
    elif value is not None:
        client.set_felix_value(key, value, hostname)
    else:
        current = client.get_felix_config(hostname).values.get(key)
        if current is None:
            raise NotFound(f"felix config {name} is not set")
        click.echo(current)


def _bgp_loglevel(name: str, value: str | None, remove: bool, host: str | None) -> None:
    from libcalico.errors import NotFound, ValidationError

    if name != "loglevel":
        raise ValidationError("NAME", name, "unknown BGP config name (loglevel, and for a "
                              "node rr_cluster_id)")
    if value is not None and value not in BGP_LOGLEVELS:
        raise ValidationError("loglevel", value, f"must be one of {', '.join(BGP_LOGLEVELS)}")
    client = ctl().client
    if remove:
        client.set_bgp_loglevel(None, host)
    elif value is not None:
        client.set_bgp_loglevel(value, host)
    elif host is None:
        click.echo(client.get_bgp_config().loglevel)
    else:
        node = client.get_node(host)
        if node is None or node.loglevel is None:
            raise NotFound(f"node {host} has no BGP loglevel of its own")
        click.echo(node.loglevel)


@config.command("bgp")
@_value_args
def config_bgp(name: str, value: str | None, remove: bool) -> None:
    """Show, set or remove a global BGP setting (loglevel)."""
    _bgp_loglevel(name, value, remove, None)


@config.group("node")
def config_node() -> None:
    """Per-node configuration."""


@config_node.command("bgp")
@_value_args
@hostname_option
def config_node_bgp(name: str, value: str | None, remove: bool, hostname: str | None) -> None:
    """Show, set or remove this node's BGP setting: loglevel, or rr_cluster_id (an IPv4
    address: the node becomes a route reflector with that cluster id)."""
    host = this_hostname(hostname)
    if name == "rr_cluster_id":
        _rr_cluster_id(value, remove, host)
    else:
        _bgp_loglevel(name, value, remove, host)


def _rr_cluster_id(value: str | None, remove: bool, host: str) -> None:
    import dataclasses

    from libcalico.errors import NotFound

    client = ctl().client
    node = client.get_node(host)
    if node is None:
        raise NotFound(f"node {host} does not exist")
    if remove or value is not None:
        client.put_node(dataclasses.replace(node, rr_cluster_id=None if remove else value))
    elif node.rr_cluster_id is None:
        raise NotFound(f"node {host} is not a route reflector (no rr_cluster_id)")
    else:
        click.echo(node.rr_cluster_id)


COMMANDS = [config]
