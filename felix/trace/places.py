"""The two ends of a traced flow: workload endpoints, hosts (through their host
endpoints) and addresses outside the cluster.

Owns: the grammar of `--from` / `--to` and resolving it against a `Snapshot`:

    ADDRESS                  the workload endpoint holding it; else the host endpoint
                             expecting it; else the node registered with it; else an
                             address outside the cluster
    WORKLOAD[/ENDPOINT_ID]   a workload endpoint by its workload id (and endpoint id);
    HOST/ORCH/WORKLOAD/ENDPOINT_ID   ... or by its whole identity
    NAME@ADDRESS             (--from only) that workload sending from ADDRESS, which
                             need not be its own: anti-spoofing decides
    host:HOSTNAME            the host itself, at its node address
    hep:HOSTNAME/ENDPOINT_ID a host endpoint: its host, through its interface

and the IP version of the flow (from the addresses named, else the one asked for). A
host is reached through, and sends through, the interface of its host endpoint: the
one named, else the one expecting the node's address, else its only named host
endpoint without expected addresses; with none, its traffic meets no host endpoint.

Leaves to others: what felix does with the flow (`felix.trace.trace`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from felix.trace.snapshot import Record, Snapshot
from libcalico.errors import NotFound, ValidationError

WORKLOAD = "workload"
HOST = "host"
OUTSIDE = "outside"


@dataclass(frozen=True)
class Place:
    """One end of the flow. `ifname`: a workload's host-side interface, or the host
    endpoint interface a host's traffic uses (None: no host endpoint). `record`: the
    workload endpoint, or that host endpoint. `spoofed`: a workload source sending from
    an address that is not its own."""

    kind: str  # WORKLOAD | HOST | OUTSIDE
    address: str
    hostname: str | None = None
    ifname: str | None = None
    record: Record | None = None
    mac: str | None = None
    spoofed: bool = False

    def describe(self) -> str:
        if self.kind == WORKLOAD:
            assert self.record is not None
            k = self.record.parsed
            what = f"workload {k.hostname}/{k.orchestrator}/{k.workload}/{k.endpoint_id}"
            spoof = ", not its own address" if self.spoofed else ""
            return f"{what} ({self.address}{spoof}; interface {self.ifname} on {self.hostname})"
        if self.kind == HOST:
            via = (f"host endpoint {self.record.parsed.endpoint_id} on interface {self.ifname}"
                   if self.record is not None and self.ifname else "no host endpoint")
            return f"host {self.hostname} ({self.address}; {via})"
        return f"{self.address} (outside the cluster)"


def _literal(text: str) -> str | None:
    """The canonical address when `text` is one, else None."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def addresses_named(spec: str) -> list[str]:
    """The literal addresses in one --from/--to value."""
    head, _, tail = spec.rpartition("@")
    out = [a for a in (_literal(spec), _literal(tail) if head else None) if a]
    return out


def flow_version(source: str, destination: str, requested: int | None) -> int:
    """The IP version of the flow: from the addresses named (they must agree, and agree
    with `requested`), else `requested`, else 4."""
    versions = {ipaddress.ip_address(a).version
                for a in addresses_named(source) + addresses_named(destination)}
    if len(versions) > 1:
        raise ValidationError("--to", destination, "mixes IPv4 and IPv6 with --from")
    if versions:
        version = versions.pop()
        if requested is not None and requested != version:
            raise ValidationError("--ip-version", requested,
                                  f"the addresses given are IPv{version}")
        return version
    return requested or 4


def resolve(snapshot: Snapshot, spec: str, version: int, field: str,
            source: bool) -> Place:
    """The place `spec` names (see the module docstring); ValidationError for a bad
    form or an ambiguous name, NotFound for a name that names nothing."""
    spec = spec.strip()
    if not spec:
        raise ValidationError(field, spec, "names nothing")
    address = _literal(spec)
    if address is not None:
        return _by_address(snapshot, address, version, field)
    if spec.startswith("host:"):
        return _host(snapshot, spec[len("host:"):], None, version, field, spec)
    if spec.startswith("hep:"):
        hostname, sep, endpoint_id = spec[len("hep:"):].partition("/")
        if not sep or not hostname or not endpoint_id:
            raise ValidationError(field, spec, "expected hep:HOSTNAME/ENDPOINT_ID")
        heps = [r for r in snapshot.host_endpoints(hostname)
                if r.parsed.endpoint_id == endpoint_id]
        if not heps:
            raise NotFound(f"{field} {spec}: host endpoint {endpoint_id} of {hostname} does "
                           "not exist")
        return _host(snapshot, hostname, heps[0], version, field, spec)
    name, at, sent_from = spec.rpartition("@")
    if not at:
        name, sent_from = spec, ""
    elif not source:
        raise ValidationError(field, spec, "NAME@ADDRESS is for --from only")
    elif _literal(sent_from) is None:
        raise ValidationError(field, spec, f"{sent_from!r} is not an IP address")
    return _workload(snapshot, name, _literal(sent_from) if sent_from else None, version,
                     field, spec)


def _by_address(snapshot: Snapshot, address: str, version: int, field: str) -> Place:
    holders = [r for r in snapshot.endpoints_holding(address) if r.model is not None]
    workloads = [r for r in holders if r.is_workload]
    if len(workloads) > 1:
        names = ", ".join(f"{r.parsed.hostname}/{r.parsed.orchestrator}/{r.parsed.workload}/"
                          f"{r.parsed.endpoint_id}" for r in workloads[:4])
        raise ValidationError(field, address, f"held by {len(workloads)} workload endpoints "
                                              f"({names}); name one")
    if workloads:
        return _workload_place(workloads[0], address, version)
    heps = [r for r in holders if not r.is_workload]
    if heps:
        hep = min(heps, key=lambda r: r.key)
        return _host_place(snapshot, hep.parsed.hostname, hep, address, version)
    hostname = snapshot.host_of_node_address(address)
    if hostname is not None:
        return _host_place(snapshot, hostname, None, address, version)
    return Place(OUTSIDE, address)


def _workload(snapshot: Snapshot, name: str, sent_from: str | None, version: int,
              field: str, spec: str) -> Place:
    parts = name.split("/")
    if len(parts) not in (1, 2, 4) or not all(parts):
        raise ValidationError(field, spec, "expected an address, WORKLOAD[/ENDPOINT_ID], "
                                           "HOST/ORCH/WORKLOAD/ENDPOINT_ID, host:HOSTNAME or "
                                           "hep:HOSTNAME/ENDPOINT_ID")
    found = snapshot.workload_endpoints_named(name)
    if not found:
        raise NotFound(f"{field} {spec}: no workload endpoint named {name}")
    if len(found) > 1:
        names = ", ".join(f"{r.parsed.hostname}/{r.parsed.orchestrator}/{r.parsed.workload}/"
                          f"{r.parsed.endpoint_id}" for r in found[:4])
        raise ValidationError(field, spec, f"names {len(found)} workload endpoints ({names}); "
                                           "use HOST/ORCH/WORKLOAD/ENDPOINT_ID")
    record = found[0]
    if record.model is None:
        raise ValidationError(field, spec, "felix treats this endpoint's stored value as "
                                           "invalid (see its log)")
    if sent_from is not None:
        return _workload_place(record, sent_from, version)
    own = record.addresses(version)
    if not own:
        raise ValidationError(field, spec, f"has no IPv{version} address")
    return _workload_place(record, own[0], version)


def _workload_place(record: Record, address: str, version: int) -> Place:
    ep = record.model
    return Place(WORKLOAD, address, ep.hostname, ep.name, record, ep.mac,
                 spoofed=address not in record.addresses(version))


def _host(snapshot: Snapshot, hostname: str, hep: Record | None, version: int, field: str,
          spec: str) -> Place:
    if not hostname:
        raise ValidationError(field, spec, "expected host:HOSTNAME")
    if hep is not None and hep.model is None:
        raise ValidationError(field, spec, "felix treats this host endpoint's stored value "
                                           "as invalid (see its log)")
    address = None
    if hep is not None:
        own = hep.addresses(version)
        address = own[0] if own else None
    address = address or snapshot.node_address(hostname, version)
    if address is None:
        if hostname not in snapshot.hostnames():
            raise NotFound(f"{field} {spec}: host {hostname} is not known")
        raise ValidationError(field, spec, f"host {hostname} has no registered IPv{version} "
                                           "address (calicoctl node) and the host endpoint "
                                           "expects none")
    return _host_place(snapshot, hostname, hep, address, version)


def _host_place(snapshot: Snapshot, hostname: str, hep: Record | None, address: str,
                version: int) -> Place:
    if hep is None or hep.model is None or hep.model.name is None:
        hep = host_interface(snapshot, hostname, version, address)
    ifname = hep.model.name if hep is not None and hep.model is not None else None
    return Place(HOST, address, hostname, ifname, hep if ifname else None)


def host_interface(snapshot: Snapshot, hostname: str, version: int,
                   address: str) -> Record | None:
    """The host endpoint whose interface carries the host's traffic at `address`: the
    one expecting that address, else the only named one expecting none."""
    named = sorted((r for r in snapshot.host_endpoints(hostname)
                    if r.model is not None and r.model.name is not None), key=lambda r: r.key)
    expecting = [r for r in named if address in r.addresses(version)]
    if expecting:
        return expecting[0]
    bare = [r for r in named if not (r.addresses(4) or r.addresses(6))]
    return bare[0] if len(bare) == 1 else None
