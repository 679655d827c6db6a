"""The `calico` CNI plugin's commands: a container's interface, addresses and endpoint.

Owns what each command does for one attachment (container id + interface name, see
`cni.config.Identity`), through the workload layer that `calicoctl container` and the
Docker driver use:
- ADD: addresses come from calico-ipam in process (the requests of
  `cni.ipam.calico_requests`) or from the delegated IPAM plugin; the profile the config
  asks for is created if missing (allow in from its own tag, all out: the seed-era
  default; taken back if the ADD fails and no endpoint uses it); then
  `workload.provision.add_workload` assigns, builds the veth (`cali...` in this
  namespace, CNI_IFNAME in CNI_NETNS), configures it and writes the endpoint last,
  undoing everything on failure (a delegated IPAM's addresses are released through
  its DEL). The result names both ends of the veth (with their MACs), the addresses
  with their gateway (169.254.1.1 / fe80::1) and the default routes
  (`workload.gateway.gateway_routes`), and the config's `dns`.
- DEL: idempotent. The attachment's endpoint is removed (`remove_workload`: inactive,
  veth, addresses, record), then whatever an interrupted ADD may have left (its veth,
  the handle's addresses or the delegated IPAM's). A container, namespace, endpoint
  or address that is gone already is not an error.
- CHECK: the endpoint must exist and the kernel must have what it records
  (`workload.verify`); prevResult's addresses must be the endpoint's; IPAM must still
  hold them (or the delegated IPAM's CHECK passes). Differences are listed in the
  error's `details` (code 104).
- GC: endpoints of this network on this node whose attachment is not in the valid
  list are removed, then the stale handles (`cni.ipam.ipam_gc`) or the delegated
  IPAM's GC.
- STATUS: etcd answers and, with calico-ipam, a usable pool exists.

Leaves to others: the protocol (`cni.spec`, `cni.main`), the plumbing
(`workload.provision`, `workload.veth`), allocation (`libcalico.ipam`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from cni import ipam as cni_ipam
from cni.config import LABEL_NETWORK, endpoint_handle, endpoint_id, profile_for
from cni.spec import (
    CHECK_FAILED,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    NOT_AVAILABLE,
    CniError,
    Interface,
    IPConfig,
    Result,
    RouteConfig,
    result_ips,
    shown,
)

if TYPE_CHECKING:
    from cni.context import Context
    from libcalico.model import WorkloadEndpoint

_log = logging.getLogger(__name__)


def _require_ipam(ctx: Context) -> None:
    if ctx.conf.ipam is None:
        raise CniError(INVALID_NETWORK_CONFIG, "invalid ipam None: the calico plugin needs "
                       "an ipam section (type calico-ipam or another IPAM plugin)")


def ensure_profile(ctx: Context, name: str) -> bool:
    """Create the profile with the seed-era defaults unless it exists (an operator's
    edits to an existing one are never overwritten); True if this call created it."""
    from libcalico.errors import AlreadyExists
    from libcalico.model import Profile, Rule, Rules

    rules = Rules((Rule(action="allow", src_tag=name),), (Rule(action="allow"),))
    try:
        ctx.client.create_profile(Profile(name, rules, (name,)))
    except AlreadyExists:
        return False
    _log.info("created profile %s", name)
    return True


def _undo_profile(ctx: Context, name: str) -> None:
    """A failed ADD takes back the profile it created (when no endpoint uses it yet)."""
    try:
        used = any(name in ep.profile_ids
                   for ep in ctx.client.list_workload_endpoints())
        if not used:
            ctx.client.delete_profile(name)
            _log.info("deleted profile %s again (the ADD failed)", name)
    except Exception as exc:  # noqa: BLE001 - the ADD's own error is what is reported
        _log.error("could not delete profile %s after a failed ADD: %s", name, exc)


def render(ctx: Context, ep: WorkloadEndpoint, host_mac: str | None) -> Result:
    from workload.gateway import gateway_for, gateway_routes, ip_version

    nets = [*ep.ipv4_nets, *ep.ipv6_nets]
    ips = [n.split("/")[0] for n in nets]
    interfaces = (Interface(ep.name, host_mac, mtu=ctx.conf.mtu),
                  Interface(ctx.env.ifname, ep.mac, sandbox=ctx.env.netns, mtu=ctx.conf.mtu))
    return Result(interfaces,
                  tuple(IPConfig(n, gateway_for(ip_version(ip)), 1) for n, ip in zip(nets, ips,
                                                                                   strict=True)),
                  tuple(RouteConfig(r.default, r.gateway) for r in gateway_routes(ips)),
                  ctx.conf.dns)


def add(ctx: Context) -> Result:
    from workload import veth
    from workload.provision import Workload, add_workload

    _require_ipam(ctx)
    assert ctx.conf.ipam is not None
    env, ident = ctx.env, ctx.ident
    profile = profile_for(ctx.conf, ident)
    if not os.path.exists(env.netns):
        raise CniError(INVALID_ENVIRONMENT, f"invalid CNI_NETNS {shown(env.netns)}: no such "
                       "network namespace")
    calico = ctx.conf.ipam.calico
    requests = cni_ipam.calico_requests(ctx) if calico else []
    assigned = [] if calico else cni_ipam.delegated_ips(ctx)
    where = Workload(ctx.nodename, ident.orchestrator, ident.workload, env.netns,
                     handle=ident.handle)
    created = False
    try:
        created = ensure_profile(ctx, profile)
        ep = add_workload(ctx.client, ctx.ipam, where, requests, ifname=env.ifname,
                          mtu=ctx.conf.mtu, profiles=[profile], labels=ident.labels,
                          endpoint_id=ident.endpoint_id, host_ifname=ident.host_ifname,
                          assigned=assigned, exclusive=False,
                          request_field=cni_ipam.CNI_ARGS_FIELD)
    except BaseException:
        if not calico:
            _undo_delegated(ctx)
        if created:
            _undo_profile(ctx, profile)
        raise
    _log.info("added %s %s: endpoint %s, %s, addresses %s", ident.orchestrator,
              ident.workload, ep.endpoint_id, ep.name, ", ".join((*ep.ipv4_nets, *ep.ipv6_nets)))
    return render(ctx, ep, veth.link_mac(ep.name))


def _undo_delegated(ctx: Context) -> None:
    try:
        cni_ipam.delegate_release(ctx)
    except CniError as exc:
        _log.error("could not release the IPAM plugin's addresses after a failed ADD: %s",
                   exc.msg)


def _endpoints(ctx: Context) -> list[WorkloadEndpoint]:
    """The attachment's endpoint(s) on this node: under the workload the CNI_ARGS name,
    else wherever on this node its endpoint id is (a runtime may pass other CNI_ARGS
    on DEL than on ADD)."""
    ident = ctx.ident
    found = ctx.client.list_workload_endpoints(ctx.nodename, ident.orchestrator,
                                               ident.workload, ident.endpoint_id)
    return found or ctx.client.list_workload_endpoints(ctx.nodename,
                                                       endpoint_id=ident.endpoint_id)


def delete(ctx: Context) -> None:
    from workload import veth
    from workload.provision import remove_workload

    _require_ipam(ctx)
    assert ctx.conf.ipam is not None
    ident = ctx.ident
    for ep in _endpoints(ctx):
        removed = remove_workload(ctx.client, ctx.ipam, ctx.nodename, ep.orchestrator,
                                  ep.workload, handle=ident.handle, missing_ok=True,
                                  endpoint_id=ep.endpoint_id)
        _log.info("removed %s %s endpoint %s; released %s", ep.orchestrator, ep.workload,
                  ep.endpoint_id, ", ".join(removed.released) or "nothing")
    # What an ADD that died part-way may have left: its veth, its addresses.
    if veth.delete_veth(ident.host_ifname):
        _log.info("deleted leftover interface %s", ident.host_ifname)
    if ctx.conf.ipam.calico:
        cni_ipam.ipam_del(ctx)
    else:
        cni_ipam.delegate_release(ctx)


def check(ctx: Context) -> None:
    from libcalico.errors import NotFound
    from workload.addresses import owned_by
    from workload.verify import verify_workload

    _require_ipam(ctx)
    assert ctx.conf.ipam is not None
    ident, env = ctx.ident, ctx.env
    eps = _endpoints(ctx)
    if not eps:
        raise CniError(CHECK_FAILED, f"no endpoint for container {env.container_id} "
                       f"interface {env.ifname} on node {ctx.nodename}")
    ep = eps[0]
    try:
        problems = verify_workload(ep, env.netns, env.ifname)
    except NotFound as exc:
        raise CniError(CHECK_FAILED, str(exc)) from None
    ips = sorted(n.split("/")[0] for n in (*ep.ipv4_nets, *ep.ipv6_nets))
    if ctx.conf.prev_result is not None:
        prev = sorted(result_ips(ctx.conf.prev_result, "prevResult"))
        if prev != ips:
            problems.append(f"prevResult has {', '.join(prev) or 'no address'}, the endpoint "
                            f"{', '.join(ips) or 'none'}")
    if ctx.conf.ipam.calico:
        lost = [ip for ip in ips if not owned_by(ctx.ipam, ip, ident.handle, ep.endpoint_id)]
        if lost:
            problems.append(f"IPAM does not hold {', '.join(lost)} for this attachment")
    else:
        cni_ipam.delegate(ctx, "CHECK")
    if problems:
        raise CniError(CHECK_FAILED, f"container {env.container_id} interface {env.ifname} "
                       "differs from its endpoint", "; ".join(problems))


def gc(ctx: Context) -> None:
    from workload.provision import remove_workload

    _require_ipam(ctx)
    assert ctx.conf.ipam is not None
    name = ctx.conf.name
    valid = {endpoint_id(cid, ifname) for cid, ifname in ctx.conf.valid_attachments or ()}
    for ep in ctx.client.list_workload_endpoints(ctx.nodename):
        if ep.labels.get(LABEL_NETWORK) != name or ep.endpoint_id in valid:
            continue
        remove_workload(ctx.client, ctx.ipam, ctx.nodename, ep.orchestrator, ep.workload,
                        handle=endpoint_handle(name, ep.endpoint_id), missing_ok=True,
                        endpoint_id=ep.endpoint_id)
        _log.info("GC: removed endpoint %s of %s", ep.endpoint_id, ep.workload)
    if ctx.conf.ipam.calico:
        cni_ipam.ipam_gc(ctx)
    else:
        try:
            cni_ipam.delegate(ctx, "GC")
        except CniError as exc:  # an IPAM plugin older than spec 1.1 has no GC
            _log.warning("IPAM plugin GC: %s", exc.msg)


def status(ctx: Context) -> None:
    _require_ipam(ctx)
    assert ctx.conf.ipam is not None
    if ctx.conf.ipam.calico:
        cni_ipam.ipam_status(ctx)
    else:
        from libcalico.errors import DatastoreError

        try:
            ctx.store.revision()
        except DatastoreError as exc:
            raise CniError(NOT_AVAILABLE, "the datastore does not answer", str(exc)) from None

