"""The BGP view of the datastore: what confd's configuration is computed from.

Owns: turning the raw key/value pairs confd follows (BGP settings, nodes and peers under
`/calico/bgp/v1`, the pools, block affinities and allocation blocks) into one frozen,
typed `BGPView`, and the few value parsers that needs. Pure: no I/O. Invalid values are
treated as absent and listed in `BGPView.problems` for the daemon to log (the datastore
may hold anything; one bad value must not stop a host's routing).

The view is cluster-wide; `confd.calc` looks at it from one host. Values are validated
by `libcalico.model` (`Node`, `BGPPeer`, `BGPGlobalConfig`, `IPPool`) one key at a time,
so one bad field drops only that field. Allocation blocks are parsed by
`libcalico.ipam.block.AllocationBlock`; only which host holds which address matters here
(the host an allocation was made for is in its secondary attributes, `host`).

Leaves to others: which prefixes to follow (`watch_prefixes`, used by the daemon), key
layout (`libcalico.keyspace`), the session topology (`confd.calc`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from libcalico import keyspace
from libcalico.errors import ValidationError
from libcalico.ipam.block import AllocationBlock
from libcalico.keyspace import (
    AffinityKey,
    BGPGlobalKey,
    BGPHostKey,
    BGPPeerKey,
    BlockKey,
    CustomFilterKey,
    PoolKey,
)
from libcalico.model.network import (
    DEFAULT_AS_NUM,
    NODE_KEYS,
    BGPGlobalConfig,
    BGPPeer,
    IPPool,
    Node,
)

_NODE_ATTRS = {key: attr for attr, key in NODE_KEYS.items()}


def watch_prefixes(hostname: str) -> list[str]:
    """The datastore prefixes confd on `hostname` follows (each is a watcher, and over
    etcd's JSON gateway a connection of its own: few and wide)."""
    return [
        keyspace.BGP_DIR,
        keyspace.POOL_DIR,
        keyspace.affinity_dir(hostname),
        keyspace.BLOCK_DIR,
    ]


def is_relevant(key: str) -> bool:
    """Whether a key feeds the view (the daemon drops everything else)."""
    return isinstance(parse_key_cached(key), _RELEVANT)


def borrowed_by(hostname: str, text: str) -> tuple[str, ...] | None:
    """The addresses (/32, /128) that `hostname` holds in the allocation block `text`
    while the block is affine to another host or none: all that one host's view takes
    from a block. () for a block that holds nothing of the host's; None for an invalid
    value (the view reports it). A block whose text does not even name the host (as
    JSON, for a plain ASCII name) is not parsed at all, so another host's workload
    changing costs a substring search."""
    quoted = json.dumps(hostname)
    if quoted[1:-1] == hostname and quoted not in text:
        return ()
    try:
        return tuple(_parse_block_borrowed(text).get(hostname, ()))
    except _Bad:
        return None


_RELEVANT = (BGPGlobalKey, BGPHostKey, BGPPeerKey, CustomFilterKey, PoolKey, AffinityKey,
             BlockKey)
_key_cache: dict[str, object] = {}


def parse_key_cached(key: str) -> object:
    """`keyspace.parse_key`, memoised: the daemon re-reads the same keys on every render."""
    try:
        return _key_cache[key]
    except KeyError:
        parsed = keyspace.parse_key(key)
        if len(_key_cache) > 200_000:
            _key_cache.clear()
        _key_cache[key] = parsed
        return parsed


@dataclass(frozen=True)
class BGPView:
    """Everything confd renders from, for every host. Mappings are sorted by key."""

    global_as: int = DEFAULT_AS_NUM
    mesh_enabled: bool = True
    global_loglevel: str | None = None
    nodes: Mapping[str, Node] = field(default_factory=dict)
    global_peers: tuple[BGPPeer, ...] = ()
    node_peers: Mapping[str, tuple[BGPPeer, ...]] = field(default_factory=dict)
    pools: tuple[IPPool, ...] = ()
    affinities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # host -> blocks
    # host -> addresses (/32, /128) it holds in blocks affine to another host (or none)
    borrowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    custom_filters: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


# --- value parsers: the one place that reads value shapes ----------------------------------

class _Bad(ValueError):
    pass


def _json(what: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _Bad(f"{what} {text!r} is not JSON") from None


def _global_setting(name: str, text: str) -> Any:
    """One `/calico/bgp/v1/global/<name>` value, validated by `BGPGlobalConfig`."""
    value: Any = _json("node_mesh", text) if name == "node_mesh" else text.strip()
    return getattr(BGPGlobalConfig.from_json({name: value}), name)


def _node_field(hostname: str, name: str, text: str) -> Any:
    """One `/calico/bgp/v1/host/<hostname>/<name>` value, validated by `Node`."""
    node = Node.from_json(hostname, {name: text.strip()})
    return getattr(node, _NODE_ATTRS[name])


def _peer(ip: str, hostname: str | None, text: str) -> BGPPeer:
    data = _json("peer", text)
    if not isinstance(data, dict):
        raise _Bad(f"peer {text!r} is not a JSON object")
    return BGPPeer.from_json({**data, "ip": ip}, hostname)  # the key names the address


def _pool(cidr: str, text: str) -> IPPool:
    data = _json("pool", text) if text.strip() else {}
    if not isinstance(data, dict):
        raise _Bad(f"pool {text!r} is not a JSON object")
    return IPPool.from_json({"cidr": cidr, **data})


def _allocation_host(secondary: Any) -> str | None:
    """The host an allocation was made for, as IPAM records it in the secondary
    attributes (`{"host": ...}`; Calico v3 spells it `node`)."""
    if isinstance(secondary, Mapping):
        host = secondary.get("host") or secondary.get("node")
        if isinstance(host, str) and host:
            return host
    return None


def _parse_block_borrowed(text: str) -> dict[str, list[str]]:
    """Addresses of the block held by hosts other than its affine host, per host."""
    try:
        block = AllocationBlock.from_json(_json("block", text))
    except (KeyError, TypeError, ValueError) as exc:
        raise _Bad(str(exc)) from None
    plen = block.network.max_prefixlen
    out: dict[str, list[str]] = {}
    for address in block.allocated():
        attributes = block.attributes_of(address)
        host = _allocation_host(attributes[1] if attributes else None)
        if host is not None and host != block.host:
            out.setdefault(host, []).append(f"{address}/{plen}")
    return out


# --- the view --------------------------------------------------------------------------------

def build_view(values: Mapping[str, str]) -> BGPView:
    """Build the view from `key -> value` (keys outside the view are ignored)."""
    settings: dict[str, Any] = {}
    node_fields: dict[str, dict[str, Any]] = {}
    global_peers: list[BGPPeer] = []
    node_peers: dict[str, list[BGPPeer]] = {}
    pools: list[IPPool] = []
    affinities: dict[str, list[str]] = {}
    borrowed: dict[str, list[str]] = {}
    filters: dict[int, list[tuple[str, str]]] = {}
    problems: list[str] = []

    for key in sorted(values):
        value = values[key]
        parsed = parse_key_cached(key)
        try:
            if isinstance(parsed, BGPGlobalKey):
                if value.strip():
                    settings[parsed.name] = _global_setting(parsed.name, value)
            elif isinstance(parsed, BGPHostKey):
                fields = node_fields.setdefault(parsed.hostname, {})
                if value.strip():
                    fields[parsed.name] = _node_field(parsed.hostname, parsed.name, value)
            elif isinstance(parsed, BGPPeerKey):
                peer = _peer(parsed.ip, parsed.hostname, value)
                if parsed.hostname is None:
                    global_peers.append(peer)
                else:
                    node_peers.setdefault(parsed.hostname, []).append(peer)
            elif isinstance(parsed, CustomFilterKey):
                filters.setdefault(parsed.version, []).append((parsed.name, value))
            elif isinstance(parsed, PoolKey):
                pools.append(_pool(parsed.cidr, value))
            elif isinstance(parsed, AffinityKey):
                affinities.setdefault(parsed.hostname, []).append(parsed.cidr)
            elif isinstance(parsed, BlockKey):
                for host, addrs in _parse_block_borrowed(value).items():
                    borrowed.setdefault(host, []).extend(addrs)
        except (_Bad, ValidationError) as exc:
            problems.append(f"{key}: {exc}; ignored")

    def by_addr(items: list[str]) -> tuple[str, ...]:
        return tuple(sorted(set(items), key=_net_sort_key))

    nodes: dict[str, Node] = {}
    for h, f in sorted(node_fields.items()):
        try:  # the hostname comes from the key: it can be anything someone wrote
            nodes[h] = Node(h, **{_NODE_ATTRS[k]: v for k, v in f.items()})
        except ValidationError as exc:
            problems.append(f"{keyspace.BGP_HOST_DIR}{h}/: {exc}; ignored")
    return BGPView(
        global_as=settings.get("as_num", DEFAULT_AS_NUM),
        mesh_enabled=settings.get("node_mesh", True),
        global_loglevel=settings.get("loglevel"),
        nodes=nodes,
        global_peers=tuple(sorted(global_peers, key=lambda p: _net_sort_key(p.ip))),
        node_peers={h: tuple(sorted(ps, key=lambda p: _net_sort_key(p.ip)))
                    for h, ps in sorted(node_peers.items())},
        pools=tuple(sorted(pools, key=lambda p: _net_sort_key(p.cidr))),
        affinities={h: by_addr(b) for h, b in sorted(affinities.items())},
        borrowed={h: by_addr(a) for h, a in sorted(borrowed.items())},
        custom_filters={v: tuple(text for _, text in sorted(fs))
                        for v, fs in sorted(filters.items())},
        problems=tuple(problems),
    )


def _net_sort_key(text: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(text, strict=False)
    return net.version, int(net.network_address), net.prefixlen
