"""A `TraceResult` for people (text) and for scripts (a JSON-able dict).

Owns: both renderings. Text: the flow and its two ends, then per direction (out of the
source, into the destination) its verdict, host and hook, what decided it and the
chains it went through, and last the line `verdict: allow` or `verdict: deny`. JSON:
the same, with a top-level "verdict", plus every hop's matched rules.

Leaves to others: computing the result (`felix.trace.trace`).
"""

from __future__ import annotations

from typing import Any

from felix.trace.trace import OUT, Decision, DirectionResult, TraceResult

_TITLES = {OUT: "out of the source", "in": "into the destination"}


def _decision_dict(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    out: dict[str, Any] = {"kind": d.kind, "summary": d.summary}
    for name in ("tier", "policy", "profile", "rule_index", "rule", "chain", "iptables"):
        value = getattr(d, name)
        if value is not None:
            out[name] = value
    return out


def _flow_words(r: TraceResult) -> str:
    f = r.flow
    if f.dport is not None:
        chosen = " (ephemeral)" if f.sport is None else ""
        ports = (f"{r.source.address} port {r.sport}{chosen} -> {r.destination.address} "
                 f"port {f.dport}")
    else:
        ports = f"{r.source.address} -> {r.destination.address}"
    icmp = f" type {f.icmp_type} code {f.icmp_code}" if f.icmp_type is not None else ""
    return f"{f.protocol_name}{icmp} {ports} (IPv{f.version}, first packet of a new connection)"


def to_dict(r: TraceResult) -> dict[str, Any]:
    f = r.flow
    return {
        "flow": {"ip_version": f.version, "protocol": f.protocol_name,
                 "protocol_number": f.protocol, "source": r.source.address,
                 "destination": r.destination.address, "source_port": r.sport,
                 "destination_port": f.dport, "icmp_type": f.icmp_type,
                 "icmp_code": f.icmp_code},
        "source": _place_dict(r.source),
        "destination": _place_dict(r.destination),
        "directions": [_direction_dict(d) for d in r.directions],
        "hops": [{"host": h.hop.hostname, "hook": h.hop.hook,
                  "in_interface": h.hop.in_iface, "out_interface": h.hop.out_iface,
                  "result": h.walk.verdict, "note": h.note,
                  "matched": [f"{s.chain} #{s.index}: "
                              + " ".join(p for p in (s.rule.match, s.rule.action) if p)
                              for s in h.walk.steps if s.rule is not None]}
                 for h in r.hops],
        "datastore_revision": r.revision,
        "verdict": r.verdict,
    }


def _place_dict(p: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": p.kind, "address": p.address, "description": p.describe()}
    if p.hostname is not None:
        out["host"] = p.hostname
    if p.ifname is not None:
        out["interface"] = p.ifname
    if p.spoofed:
        out["spoofed"] = True
    return out


def _direction_dict(d: DirectionResult) -> dict[str, Any]:
    return {"direction": d.direction, "verdict": d.verdict, "host": d.hostname,
            "hook": d.hook, "decided_by": _decision_dict(d.decided_by),
            "chains": list(d.chains)}


def render_text(r: TraceResult) -> str:
    lines = [f"flow:  {_flow_words(r)}",
             f"from:  {r.source.describe()}",
             f"to:    {r.destination.describe()}"]
    for d in r.directions:
        where = f" ({d.hostname}, {d.hook})" if d.hostname else ""
        lines.append(f"{_TITLES[d.direction]}{where}: {d.verdict}")
        if d.decided_by is not None:
            lines.append(f"  decided by: {d.decided_by.summary}")
            if d.decided_by.iptables:
                lines.append(f"  rule:       {d.decided_by.iptables}")
        if d.chains:
            lines.append(f"  chains:     {' > '.join(d.chains)}")
    lines.append(f"verdict: {r.verdict}")
    return "\n".join(lines)
