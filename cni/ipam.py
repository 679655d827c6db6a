"""Addresses for a CNI attachment: the `calico-ipam` plugin, and delegation to any other
IPAM plugin (such as the reference `host-local`).

Owns:
- the `calico-ipam` commands on their own (another main plugin may use it): ADD assigns
  the configured addresses (CNI_ARGS IP= and the `ips` capability, else one per
  enabled version from `ipv4_pools` / `ipv6_pools` or any pool) through
  `workload.addresses` - the same requests and IPAM ownership as `calicoctl container`
  - under the attachment's handle, releasing them again if a later one fails; DEL
  releases the handle (idempotent); CHECK compares prevResult with what IPAM holds;
  GC releases this network's handles of attachments no longer valid; STATUS checks
  that etcd answers and a pool of each configured version exists;
- `calico_requests`: the same requests as `AddressRequest`s, for the `calico` plugin,
  which assigns them in process while it builds the interface (one code path, one
  process);
- `delegate`: running another IPAM plugin the CNI way (found on CNI_PATH, same stdin
  and CNI_* environment, its result or error read back), for the `calico` plugin.

Leaves to others: allocation (`libcalico.ipam`), request grammar and ownership
(`workload.addresses`), interfaces and endpoints (`cni.calico`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cni.config import address_requests
from cni.spec import (
    ADDRESSES_EXHAUSTED,
    CHECK_FAILED,
    DELEGATE_FAILED,
    INVALID_NETWORK_CONFIG,
    NOT_AVAILABLE,
    CniError,
    IPConfig,
    Result,
    result_ips,
    shown,
)

if TYPE_CHECKING:
    from cni.context import Context
    from workload.addresses import AddressRequest

_log = logging.getLogger(__name__)

CNI_ARGS_FIELD = "CNI_ARGS IP"


def calico_requests(ctx: Context) -> list[AddressRequest]:
    """The attachment's address requests, checked against the datastore (explicit
    addresses must be in a pool, configured pools must exist) before anything is
    assigned: a bad one is an error naming CNI_ARGS (code 4) or the config (code 7)."""
    from workload.addresses import auto_request, check_requests, parse_request

    explicit, auto = address_requests(ctx.conf, ctx.args)
    requests = check_requests(ctx.client, [parse_request(ip, CNI_ARGS_FIELD)
                                           for ip in explicit], CNI_ARGS_FIELD)
    for version, pools in auto:
        field = f"ipam.ipv{version}_pools"
        requests += check_requests(ctx.client, [auto_request(version, pools, field)], field)
    return requests


def ip_result(ips: list[str]) -> Result:
    """An IPAM plugin's result: the addresses as /32 and /128, no interfaces."""
    from workload.gateway import host_net

    return Result(ips=tuple(IPConfig(host_net(ip)) for ip in ips))


# --- the calico-ipam plugin ------------------------------------------------------------------


def ipam_add(ctx: Context) -> Result:
    from workload.addresses import assign_address, ipam_attributes

    requests = calico_requests(ctx)
    ident = ctx.ident
    attrs = ipam_attributes(ctx.nodename, ident.orchestrator, ident.workload,
                            ident.endpoint_id)
    got: list[str] = []
    try:
        for request in requests:
            got.append(assign_address(ctx.ipam, request, ident.handle, attrs, ctx.nodename))
    except BaseException:
        if got:
            ctx.ipam.release_ips(got)
        raise
    _log.info("assigned %s to %s (handle %s)", ", ".join(got), ident.workload, ident.handle)
    return ip_result(got)


def ipam_del(ctx: Context) -> None:
    released = ctx.ipam.release_by_handle(ctx.ident.handle)
    _log.info("released %s (handle %s)", ", ".join(released) or "nothing", ctx.ident.handle)


def ipam_check(ctx: Context) -> None:
    from workload.addresses import owned_by

    if ctx.conf.prev_result is None:
        raise CniError(INVALID_NETWORK_CONFIG, "CHECK needs prevResult")
    ident = ctx.ident
    lost = [ip for ip in result_ips(ctx.conf.prev_result, "prevResult")
            if not owned_by(ctx.ipam, ip, ident.handle, ident.endpoint_id)]
    if lost:
        raise CniError(CHECK_FAILED, f"IPAM does not hold {', '.join(lost)} for this "
                       "attachment", f"handle {ident.handle}")


def ipam_gc(ctx: Context) -> list[str]:
    """Release this network's handles whose attachments are not in the valid list;
    returns the addresses released. Assumes, as libcni's own GC does, that no ADD for
    this network runs at the same time."""
    from cni.config import handle_id

    name = ctx.conf.name
    valid = {handle_id(name, cid, ifname) for cid, ifname in ctx.conf.valid_attachments or ()}
    released: list[str] = []
    for handle in ctx.ipam.handle_ids(prefix=f"{name}."):
        if handle in valid:
            continue
        held = ctx.ipam.handle_assignments(handle)
        # Only this node's attachments: the runtime lists the valid ones of its own node.
        if held and all((a.attributes or {}).get("host") == ctx.nodename for a in held):
            released += ctx.ipam.release_by_handle(handle)
            _log.info("GC: released %s (handle %s)", ", ".join(a.ip for a in held), handle)
    return released


def ipam_status(ctx: Context) -> None:
    from libcalico.errors import DatastoreError

    conf = ctx.conf
    assert conf.ipam is not None
    try:
        pools = ctx.client.list_pools()
    except DatastoreError as exc:
        raise CniError(NOT_AVAILABLE, "the datastore does not answer", str(exc)) from None
    for version, wanted, allowed in ((4, conf.ipam.assign_ipv4, conf.ipam.ipv4_pools),
                                     (6, conf.ipam.assign_ipv6, conf.ipam.ipv6_pools)):
        usable = [p for p in pools if p.version == version and not p.disabled and p.ipam
                  and (not allowed or p.cidr in allowed)]
        if wanted and not usable:
            raise CniError(NOT_AVAILABLE, f"no enabled IPv{version} pool to assign from",
                           f"allowed pools: {', '.join(allowed) or 'any'}")


# --- delegation ------------------------------------------------------------------------------


def find_plugin(kind: str, path: tuple[str, ...]) -> str:
    if "/" in kind:
        raise CniError(INVALID_NETWORK_CONFIG,
                       f"invalid ipam.type {shown(kind)}: not a plugin name")
    for directory in path:
        candidate = os.path.join(directory, kind)
        if os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_NETWORK_CONFIG, f"invalid ipam.type {shown(kind)}: no such plugin on "
                   f"CNI_PATH", ":".join(path))


def delegate(ctx: Context, command: str) -> Mapping[str, Any] | None:
    """Run the configured IPAM plugin for `command` with this call's stdin and
    environment; its result (None when it prints nothing). Its CNI error is re-raised
    with its own code; a plugin that fails without one gives DELEGATE_FAILED."""
    import subprocess

    assert ctx.conf.ipam is not None
    kind = ctx.conf.ipam.type
    binary = find_plugin(kind, ctx.env.path)
    env = {**ctx.environ, "CNI_COMMAND": command}
    try:
        proc = subprocess.run([binary], input=ctx.stdin, capture_output=True, env=env,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {kind} {command} failed: {exc}") from None
    if proc.stderr:
        _log.info("IPAM plugin %s %s: %s", kind, command, proc.stderr.decode(errors="replace"))
    out = proc.stdout.strip()
    try:
        data = json.loads(out) if out else None
    except ValueError:
        data = None
    if proc.returncode != 0:
        if isinstance(data, dict) and isinstance(data.get("code"), int):
            raise CniError(data["code"], f"IPAM plugin {kind}: {data.get('msg', '')}",
                           str(data.get("details", "")))
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {kind} {command} exited "
                       f"{proc.returncode}", out.decode(errors="replace")[:300])
    if out and not isinstance(data, dict):
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {kind} {command} printed no JSON "
                       "object", out.decode(errors="replace")[:300])
    return data


def delegated_ips(ctx: Context) -> list[str]:
    """ADD through the configured IPAM plugin; the addresses it assigned."""
    result = delegate(ctx, "ADD")
    ips = result_ips(result or {}, f"{ctx.conf.ipam.type if ctx.conf.ipam else ''} result")
    if not ips:
        delegate_release(ctx)
        raise CniError(ADDRESSES_EXHAUSTED, "the IPAM plugin assigned no address")
    return ips


def delegate_release(ctx: Context) -> None:
    """DEL through the configured IPAM plugin (an undo or a DEL: logged, not raised,
    when it fails as part of an undo)."""
    delegate(ctx, "DEL")
