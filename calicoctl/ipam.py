"""`calicoctl ipam`: release and inspect addresses, show usage, check and repair.

Owns: `ipam release IP`, `ipam info IP`, `ipam show [--blocks]` and
`ipam check [--fix] [--grace-period SECONDS]` (non-zero exit when problems remain;
allocations younger than the grace period are listed as in progress, never as leaks).

Leaves to others: everything IPAM (`libcalico.ipam`).
"""

from __future__ import annotations

from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.output import emit, output_option


def _ipam() -> Any:
    from libcalico.ipam import IPAMClient

    return IPAMClient(ctl().store)


def _ip(value: str) -> str:
    from libcalico.model.validate import canonical_address

    return canonical_address("IP", value)


@click.group()
def ipam() -> None:
    """IP address management."""


@ipam.command("release")
@click.argument("ip", metavar="IP")
def ipam_release(ip: str) -> None:
    """Release an allocated address."""
    from libcalico.errors import NotFound

    addr = _ip(ip)
    if _ipam().release_ips([addr]):
        raise NotFound(f"address {addr} is not allocated")
    click.echo(f"Released address {addr}")


@ipam.command("info")
@click.argument("ip", metavar="IP")
@output_option
def ipam_info(ip: str, output: str) -> None:
    """Show who an address is allocated to."""
    from libcalico.errors import NotFound

    addr = _ip(ip)
    info = _ipam().get_assignment_attributes(addr)
    if info is None:
        raise NotFound(f"address {addr} is not allocated")
    attrs = info.attributes or {}
    data = {"ip": info.ip, "block": info.block, "handle_id": info.handle_id,
            "attributes": attrs}
    emit(output, data, ["IP", "Block", "Handle", "Attributes"],
         [(info.ip, info.block, info.handle_id or "",
           "\n".join(f"{k}={v}" for k, v in sorted(attrs.items())))])


@ipam.command("show")
@click.option("--blocks", is_flag=True, help="Also list every allocation block.")
@output_option
def ipam_show(blocks: bool, output: str) -> None:
    """Show pools with their allocated and free addresses (and blocks)."""
    usage = _ipam().usage()
    data = [{"cidr": u.cidr, "size": u.size, "allocated": u.allocated, "free": u.free,
             "disabled": u.disabled,
             "blocks": [{"cidr": b.cidr, "host": b.host, "size": b.size,
                         "allocated": b.allocated} for b in u.blocks]} for u in usage]

    def pct(a: int, n: int) -> str:
        return f"{a} ({100 * a / n:.0f}%)" if n else str(a)

    rows = [(u.cidr, u.size, pct(u.allocated, u.size), u.free,
             "yes" if u.disabled else "no") for u in usage]
    headers = ["Pool", "Size", "Allocated", "Free", "Disabled"]
    block_rows = [(b.cidr, u.cidr, b.host or "", b.size, pct(b.allocated, b.size))
                  for u in usage for b in u.blocks]
    block_headers = ["Block", "Pool", "Host", "Size", "Allocated"]
    if blocks and output == "table":
        emit(output, data, headers, rows)
        emit(output, data, block_headers, block_rows)
        return
    emit(output, data, headers, rows, block_headers, block_rows)


@ipam.command("check")
@click.option("--fix", is_flag=True, help="Repair what the check finds.")
@click.option("--grace-period", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="An allocation without an endpoint is a leak only once it is this old; "
                   "younger ones are set-ups in progress and never released (0: no grace).")
def ipam_check(fix: bool, grace_period: float) -> None:
    """Check IPAM against the endpoints (leaks, missing allocations, stale affinities,
    handle mismatches, duplicates); exit 1 if problems are found and not fixed."""
    from calicoctl.errors import CommandFailed
    from libcalico.ipam import check, repair

    store = ctl().store
    report = check(store, grace_period)
    click.echo(f"Checked {report.allocated} allocations and {report.endpoint_addresses} "
               "endpoint addresses")
    for busy in report.in_progress:
        click.echo(f"  in progress: {busy.ip} (handle {busy.handle_id}, block {busy.block}, "
                   f"allocated {max(busy.age, 0):.0f}s ago, no endpoint yet)")
    for leak in report.leaks:
        click.echo(f"  leaked: {leak.ip} (handle {leak.handle_id}, block {leak.block})")
    for miss in report.missing:
        click.echo(f"  not allocated but used by endpoint {miss.endpoint.endpoint_id}: "
                   f"{miss.ip}")
    for stale in report.stale_affinities:
        click.echo(f"  stale affinity: {stale.host} -> {stale.block}")
    for mm in report.handle_mismatches:
        click.echo(f"  handle {mm.handle_id}: recorded {mm.recorded}, actual {mm.actual}")
    for dup in report.duplicates:
        click.echo(f"  {dup.ip} used by {len(dup.endpoints)} endpoints")
    if report.ok:
        click.echo("No problems found")
        return
    if not fix:
        raise CommandFailed("IPAM problems found; run `calicoctl ipam check --fix`")
    result = repair(store, report)
    click.echo(f"Released {len(result.released)}, recorded {len(result.recorded)}, "
               f"affinities released {len(result.affinities_released)}, handles fixed "
               f"{len(result.handles_fixed)}")
    for skipped in result.skipped:
        click.echo(f"  skipped {skipped}")
    if not check(store, grace_period).ok:
        raise CommandFailed("IPAM problems remain after repair")


COMMANDS = [ipam]
