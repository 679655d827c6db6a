"""`calicoctl pool`: add, remove and show IP pools, and add pools covering a range.

Owns: the pool command words and their output. Validation is the model's (`IPPool`:
CIDR, IPIP only for IPv4, block size); overlap checks and the write are the client's
(`CalicoClient.apply_resources`, one transaction for all CIDRs given); removing pools
is IPAM's (`IPAMClient.remove_pools`: all or nothing, refused while any has allocations
unless forced).
"""

from __future__ import annotations

import ipaddress

import click

from calicoctl.context import ctl
from calicoctl.output import emit, output_option


@click.group()
def pool() -> None:
    """Manage IP address pools."""


def _pools(cidrs: tuple[str, ...], ipip: bool, nat: bool, block_size: int | None) -> list:
    from libcalico.model import IPPool

    return [IPPool(c, ipip=ipip, nat_outgoing=nat, block_size=block_size) for c in cidrs]


_ipip = click.option("--ipip", is_flag=True, help="Use IP-in-IP to reach workloads (IPv4).")
_nat = click.option("--nat-outgoing", is_flag=True, help="Masquerade traffic leaving the pool.")


@pool.command("add")
@click.argument("cidrs", nargs=-1, required=True)
@_ipip
@_nat
@click.option("--block-size", type=int, default=None,
              help="Prefix length of allocation blocks (default 26 for IPv4, 122 for IPv6).")
def pool_add(cidrs: tuple[str, ...], ipip: bool, nat_outgoing: bool,
             block_size: int | None) -> None:
    """Add (or update the options of) one or more pools."""
    ctl().client.apply_resources(_pools(cidrs, ipip, nat_outgoing, block_size), "apply")


@pool.group("range")
def pool_range() -> None:
    """Manage pools by address range."""


@pool_range.command("add")
@click.argument("start_ip")
@click.argument("end_ip")
@_ipip
@_nat
def pool_range_add(start_ip: str, end_ip: str, ipip: bool, nat_outgoing: bool) -> None:
    """Add the smallest set of pools covering START_IP..END_IP."""
    from libcalico.errors import ValidationError

    try:
        start = ipaddress.ip_address(start_ip)
    except ValueError:
        raise ValidationError("START_IP", start_ip, "not a valid IP address") from None
    try:
        end = ipaddress.ip_address(end_ip)
    except ValueError:
        raise ValidationError("END_IP", end_ip, "not a valid IP address") from None
    if start.version != end.version:
        raise ValidationError("END_IP", end_ip, "must be the same IP version as START_IP")
    if int(end) < int(start):
        raise ValidationError("END_IP", end_ip, "must not be below START_IP")
    nets = [str(n) for n in ipaddress.summarize_address_range(start, end)]
    ctl().client.apply_resources(_pools(tuple(nets), ipip, nat_outgoing, None), "apply")
    for net in nets:
        click.echo(f"Added pool {net}")


@pool.command("remove")
@click.argument("cidrs", nargs=-1, required=True)
@click.option("--force", is_flag=True,
              help="Remove even if addresses are still allocated from the pool.")
def pool_remove(cidrs: tuple[str, ...], force: bool) -> None:
    """Remove one or more pools, all or nothing: none is removed while any of them does
    not exist or has allocated addresses (unless --force, which releases them)."""
    from libcalico.errors import NotFound
    from libcalico.ipam import IPAMClient
    from libcalico.model.validate import canonical_net

    client = ctl().client
    nets = [canonical_net("cidr", c, strict=True) for c in cidrs]
    for net in nets:
        if client.get_pool(net) is None:
            raise NotFound(f"pool {net} does not exist")
    IPAMClient(ctl().store).remove_pools(nets, force=force)


def _options(p: object) -> str:
    opts = [o for o, on in (("ipip", p.ipip), ("nat-outgoing", p.nat_outgoing),  # type: ignore[attr-defined]
                            ("disabled", p.disabled)) if on]  # type: ignore[attr-defined]
    return ",".join(opts)


@pool.command("show")
@click.option("--ipv4", "version", flag_value=4, help="Show IPv4 pools only.")
@click.option("--ipv6", "version", flag_value=6, help="Show IPv6 pools only.")
@output_option
def pool_show(version: int | None, output: str) -> None:
    """Show the configured pools."""
    pools = ctl().network.list_pools(version)
    data = [p.to_resource() for p in pools]
    if output in ("json", "yaml"):
        emit(output, data, [], [])
        return
    for v in (4, 6) if version is None else (version,):
        vp = [p for p in pools if p.version == v]
        emit(output, data, [f"IPv{v} CIDR", "Options"],
             [(p.cidr, _options(p)) for p in vp],
             [f"IPv{v} CIDR", "Options", "Block size", "IPAM"],
             [(p.cidr, _options(p), p.block_size, "yes" if p.ipam else "no") for p in vp])


COMMANDS = [pool]
