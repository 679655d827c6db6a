"""`calicoctl endpoint`: show workload endpoints and change the profiles they use.

Owns: `endpoint show [--host] [--orchestrator] [--workload] [--endpoint] [--detailed]`
(`--workload` also finds a Docker container's endpoints by its name or id)
and `endpoint ID profile append|remove|set|show`, plus `change_profiles`, the
profile-list edit that `container C profile ...` reuses. Profiles named must exist.

Leaves to others: endpoint storage and CAS updates (`libcalico.client`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import click

from calicoctl.context import ctl
from calicoctl.groups import NamedGroup, named_subgroup
from calicoctl.output import emit, output_option

_filters = [
    click.option("--host", "host", default=None, help="Only endpoints on this host."),
    click.option("--orchestrator", default=None, help="Only this orchestrator's endpoints."),
    click.option("--workload", default=None, help="Only this workload's endpoints."),
]


def _with_filters(fn: Any) -> Any:
    for option in reversed(_filters):
        fn = option(fn)
    return fn


@click.group(cls=NamedGroup)
def endpoint() -> None:
    """Show endpoints and manage the profiles they use.

    \b
    Per-endpoint commands:
      calicoctl endpoint ENDPOINT_ID profile (append|remove|set) [--host=H]
          [--orchestrator=O] [--workload=W] [PROFILES...]
      calicoctl endpoint ENDPOINT_ID profile show [--host=H] [--orchestrator=O] [--workload=W]
    """


def endpoint_rows(eps: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [(e.hostname, e.orchestrator, e.workload, e.endpoint_id,
             "\n".join((*e.ipv4_nets, *e.ipv6_nets)), e.mac or "", ",".join(e.profile_ids),
             e.state) for e in eps]


DETAILED_HEADERS = ["Hostname", "Orchestrator ID", "Workload ID", "Endpoint ID", "Addresses",
                    "MAC", "Profiles", "State"]


@endpoint.command("show")
@_with_filters
@click.option("--endpoint", "endpoint_id", default=None, help="Only this endpoint id.")
@click.option("--detailed", is_flag=True, help="One row per endpoint with all its fields.")
@output_option
def endpoint_show(host: str | None, orchestrator: str | None, workload: str | None,
                  endpoint_id: str | None, detailed: bool, output: str) -> None:
    """Show workload endpoints (a per-workload summary unless --detailed).

    --workload also takes a Docker container's name or id: its endpoints, those
    `calicoctl container add` made and those Docker's calico networks made."""
    eps = ctl().client.list_workload_endpoints(host, orchestrator, workload, endpoint_id)
    if not eps and workload:
        eps = _docker_container_endpoints(workload, host, orchestrator, endpoint_id)
    data = [e.to_resource() for e in eps]
    if detailed or output != "table":
        emit("wide" if output == "table" else output, data, DETAILED_HEADERS,
             endpoint_rows(eps), DETAILED_HEADERS, endpoint_rows(eps))
        return
    counts: dict[tuple[str, str, str], int] = {}
    for e in eps:
        counts[(e.hostname, e.orchestrator, e.workload)] = counts.get(
            (e.hostname, e.orchestrator, e.workload), 0) + 1
    emit(output, data, ["Hostname", "Orchestrator ID", "Workload ID", "Endpoints"],
         [(*k, n) for k, n in sorted(counts.items())])


def _docker_container_endpoints(name: str, host: str | None, orchestrator: str | None,
                                endpoint_id: str | None) -> list[Any]:
    from calicoctl.dockerworkloads import docker_target, target_endpoints

    target = docker_target(name)
    if target is None:
        return []
    eps = target_endpoints(ctl().client, host, target)
    return [e for e in eps if (orchestrator is None or e.orchestrator == orchestrator)
            and (endpoint_id is None or e.endpoint_id == endpoint_id)]


def change_profiles(ident: Any, op: str, profiles: Sequence[str]) -> Any:
    """append/remove/set the endpoint's profile list; profiles must exist."""
    from libcalico.errors import NotFound, ValidationError
    from libcalico.model.validate import validate_name

    client = ctl().client
    names = [validate_name("profile", p) for p in profiles]
    if op in ("append", "remove") and not names:
        raise ValidationError("PROFILES", "", f"'{op}' needs at least one profile")
    if op != "remove":
        known = set(client.list_profile_names())
        for n in names:
            if n not in known:
                raise ValidationError("profile", n, "unknown profile")

    def change(ep):  # type: ignore[no-untyped-def]
        current = list(ep.profile_ids)
        if op == "append":
            for n in names:
                if n in current:
                    raise ValidationError("profile", n, f"already on endpoint {ep.endpoint_id}")
                current.append(n)
        elif op == "remove":
            for n in names:
                if n not in current:
                    raise NotFound(f"profile {n} is not on endpoint {ep.endpoint_id}")
                current.remove(n)
        else:
            current = list(dict.fromkeys(names))
        return replace(ep, profile_ids=tuple(current))

    return client.update_workload_endpoint(ident, change)


@named_subgroup(endpoint, "ENDPOINT_ID", "Commands on one endpoint.")
def endpoint_named(ctx: click.Context, name: str) -> None:
    ctx.obj_endpoint = name  # type: ignore[attr-defined]


def _find(host: str | None, orchestrator: str | None, workload: str | None) -> Any:
    ctx = click.get_current_context()
    while not hasattr(ctx, "obj_endpoint"):
        ctx = ctx.parent  # type: ignore[assignment]
    return ctl().client.find_workload_endpoint(ctx.obj_endpoint, host, orchestrator, workload)


@endpoint_named.group("profile")
def endpoint_profile() -> None:
    """Manage the profiles an endpoint uses."""


def _make_profile_command(op: str) -> None:
    @endpoint_profile.command(op, help=f"{op.capitalize()} profiles of the endpoint.")
    @_with_filters
    @click.argument("profiles", nargs=-1)
    def command(host: str | None, orchestrator: str | None, workload: str | None,
                profiles: tuple[str, ...]) -> None:
        ep = _find(host, orchestrator, workload)
        change_profiles(ep.ident, op, profiles)


for _op in ("append", "remove", "set"):
    _make_profile_command(_op)


@endpoint_profile.command("show")
@_with_filters
@output_option
def endpoint_profile_show(host: str | None, orchestrator: str | None, workload: str | None,
                          output: str) -> None:
    """Show the endpoint's profiles, in order."""
    ep = _find(host, orchestrator, workload)
    emit(output, list(ep.profile_ids), ["Name"], [(p,) for p in ep.profile_ids])


COMMANDS = [endpoint]
