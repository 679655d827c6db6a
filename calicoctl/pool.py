"""`calicoctl pool`: add, remove and show IP pools, and add pools covering a range.

Owns: the pool command words, their options (`--ipip`/`--vxlan` with their modes, which
are exclusive) and their output, and refusing an IPIP pool on a host whose kernel cannot
do IPIP (one line, nothing stored). Validation is the model's (`IPPool`: CIDR,
encapsulation only for IPv4, block size); overlap checks and the write are the client's
(`CalicoClient.apply_resources`, one transaction for all CIDRs given); removing pools
is IPAM's (`IPAMClient.remove_pools`: all or nothing, refused while any has allocations
unless forced).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.output import emit, output_option


@click.group()
def pool() -> None:
    """Manage IP address pools."""


def _pools(cidrs: tuple[str, ...], encap: Encap, nat: bool,
           block_size: int | None) -> list:
    from libcalico.model import IPPool

    pools = [IPPool(c, ipip=encap.ipip, ipip_mode=encap.ipip_mode or "always",
                    vxlan=encap.vxlan, vxlan_mode=encap.vxlan_mode or "always",
                    nat_outgoing=nat, block_size=block_size) for c in cidrs]
    if encap.ipip:
        _refuse_ipip_without_kernel_support()
    return pools


def _refuse_ipip_without_kernel_support() -> None:
    """IPIP pools need the ipip module on the hosts; refuse to store one that could not
    work on this host's kernel (one line, nothing written)."""
    from calicoctl.checksystem import tunnel_support
    from libcalico.errors import ValidationError

    ok, detail = tunnel_support("ipip")
    if ok is False:
        raise ValidationError("ipip", True, f"this host's kernel cannot do IPIP ({detail}), "
                              "so an IPIP pool would not work here; use --vxlan instead")


@dataclass(frozen=True)
class Encap:
    """The encapsulation options as given (modes None: not given)."""

    ipip: bool = False
    ipip_mode: str | None = None
    vxlan: bool = False
    vxlan_mode: str | None = None


_MODES = click.Choice(["always", "cross-subnet"])


def encap_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--ipip", is_flag=True, help="Reach workloads through IP-in-IP (IPv4; "
                     "needs the kernel's ipip module on every host)."),
        click.option("--ipip-mode", type=_MODES, default=None,
                     help="With --ipip: always (default) or cross-subnet (only to hosts "
                     "in another subnet)."),
        click.option("--vxlan", is_flag=True, help="Reach workloads through VXLAN (IPv4)."),
        click.option("--vxlan-mode", type=_MODES, default=None,
                     help="With --vxlan: always (default) or cross-subnet (only to hosts "
                     "in another subnet)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _encap(ipip: bool, ipip_mode: str | None, vxlan: bool, vxlan_mode: str | None) -> Encap:
    from libcalico.errors import ValidationError

    if ipip and vxlan:
        raise ValidationError("--vxlan", True, "--vxlan and --ipip are exclusive: a pool "
                              "uses at most one encapsulation")
    for flag, on, mode in (("--ipip-mode", ipip, ipip_mode), ("--vxlan-mode", vxlan,
                                                                vxlan_mode)):
        if mode is not None and not on:
            raise ValidationError(flag, mode, f"needs {flag.removesuffix('-mode')}")
    return Encap(ipip, ipip_mode, vxlan, vxlan_mode)


_nat = click.option("--nat-outgoing", is_flag=True, help="Masquerade traffic leaving the pool.")


@pool.command("add")
@click.argument("cidrs", nargs=-1, required=True)
@encap_options
@_nat
@click.option("--block-size", type=int, default=None,
              help="Prefix length of allocation blocks (default 26 for IPv4, 122 for IPv6).")
def pool_add(cidrs: tuple[str, ...], ipip: bool, ipip_mode: str | None, vxlan: bool,
             vxlan_mode: str | None, nat_outgoing: bool, block_size: int | None) -> None:
    """Add (or update the options of) one or more pools. Changing the encapsulation of a
    pool in use takes effect on every host without restarting anything."""
    encap = _encap(ipip, ipip_mode, vxlan, vxlan_mode)
    ctl().client.apply_resources(_pools(cidrs, encap, nat_outgoing, block_size), "apply")


@pool.group("range")
def pool_range() -> None:
    """Manage pools by address range."""


@pool_range.command("add")
@click.argument("start_ip")
@click.argument("end_ip")
@encap_options
@_nat
def pool_range_add(start_ip: str, end_ip: str, ipip: bool, ipip_mode: str | None, vxlan: bool,
                   vxlan_mode: str | None, nat_outgoing: bool) -> None:
    """Add the smallest set of pools covering START_IP..END_IP."""
    from libcalico.errors import ValidationError

    encap = _encap(ipip, ipip_mode, vxlan, vxlan_mode)
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
    ctl().client.apply_resources(_pools(tuple(nets), encap, nat_outgoing, None), "apply")
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


def _options(p: Any) -> str:
    """`ipip`, `vxlan:cross-subnet`, `nat-outgoing`, `disabled`, comma-separated."""
    encap = p.encapsulation
    if encap is not None and p.encap_mode != "always":
        encap = f"{encap}:{p.encap_mode}"
    opts = [o for o, on in ((encap, encap is not None), ("nat-outgoing", p.nat_outgoing),
                            ("disabled", p.disabled)) if on]
    return ",".join(o for o in opts if o)


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
