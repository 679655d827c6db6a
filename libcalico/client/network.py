"""Typed CRUD for network resources: IP pools, nodes, BGP peers, global BGP settings,
felix configuration (global and per host) and IPAM configuration.

Owns: how these resources map onto their keys (one JSON key per pool and peer; one
plain-string key per node field, BGP setting and felix parameter) and the checks that
need the datastore (pool overlap, a node still having endpoints).

Leaves to others: validation of values (`libcalico.model`), key names
(`libcalico.keyspace`), address allocation inside pools (`libcalico.ipam`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from libcalico import keyspace as ks
from libcalico.client._base import cas_update, decode
from libcalico.codec import dumps as encode
from libcalico.errors import AlreadyExists, Conflict, NotFound, ValidationError
from libcalico.model import (
    BGPGlobalConfig,
    BGPPeer,
    FelixConfig,
    IPAMConfig,
    IPPool,
    Node,
    parse_as_num,
)
from libcalico.model.network import NODE_KEYS, NODE_RUNTIME_FIELDS

if TYPE_CHECKING:
    from libcalico.datastore import Datastore, Op


def _bgp_setting(name: str, text: str) -> BGPGlobalConfig:
    return BGPGlobalConfig.from_json({name: text})


def _felix_setting(name: str, text: str) -> FelixConfig:
    return FelixConfig(None, {name: text})


def pools_overlapping(pool: IPPool, others: list[IPPool]) -> list[IPPool]:
    """Pools in `others` (other than `pool` itself) whose CIDR overlaps `pool`'s."""
    net = ipaddress.ip_network(pool.cidr)
    return [p for p in others if p.cidr != pool.cidr
            and p.version == pool.version and net.overlaps(ipaddress.ip_network(p.cidr))]


class NetworkClient:
    """Pools, nodes, BGP and config. Self-contained: `NetworkClient(store)` serves
    callers that need nothing else without importing the policy and endpoint model."""

    store: Datastore

    def __init__(self, store: Datastore) -> None:
        self.store = store

    # --- IP pools ---------------------------------------------------------------------------

    def list_pools(self, version: int | None = None) -> list[IPPool]:
        prefixes = [ks.pool_dir(v) for v in ((4, 6) if version is None else (version,))]
        kvs, _ = self.store.list_many(prefixes)
        pools = [decode(kv.key, kv.value, IPPool.from_json) for kv in kvs]
        return sorted((p for p in pools if p is not None),
                      key=lambda p: (p.version, ipaddress.ip_network(p.cidr)))

    def get_pool(self, cidr: str) -> IPPool | None:
        key = ks.pool_key(cidr)
        kv = self.store.get(key)
        return decode(key, kv.value if kv else None, IPPool.from_json)

    def check_pool_overlap(self, pool: IPPool, extra: Sequence[IPPool] = ()) -> None:
        clash = pools_overlapping(pool, self.list_pools(pool.version) + list(extra))
        if clash:
            raise ValidationError("cidr", pool.cidr, f"overlaps existing pool {clash[0].cidr}")

    def add_pool(self, pool: IPPool, replace: bool = False) -> None:
        """Create a pool (or, with `replace`, update one with the same CIDR)."""
        self.check_pool_overlap(pool)
        key = ks.pool_key(pool.cidr)
        if replace:
            self.store.put(key, encode(pool.to_json()))
        elif not self.store.create(key, encode(pool.to_json())):
            raise AlreadyExists(f"pool {pool.cidr} already exists")

    def remove_pool_key(self, cidr: str) -> None:
        """Delete the pool's key only (IPAM's remove_pool also cleans up its blocks)."""
        if not self.store.delete(ks.pool_key(cidr)):
            raise NotFound(f"pool {cidr} does not exist")

    # --- nodes ------------------------------------------------------------------------------

    def _host_keys(self, hostname: str | None = None) -> list[tuple[str, ks.ParsedKey, str]]:
        """(hostname, parsed key, value) for every key below the host trees (of one host
        only, when given)."""
        dirs = ([ks.BGP_HOST_DIR, ks.HOST_DIR] if hostname is None
                else [ks.bgp_host_dir(hostname), ks.host_dir(hostname)])
        kvs, _ = self.store.list_many(dirs)
        out = []
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            host = getattr(parsed, "hostname", None)
            if parsed is not None and host:
                out.append((host, parsed, kv.value))
        return out

    def list_node_names(self) -> list[str]:
        """Every host that has any key below the host or BGP host trees."""
        return sorted({h for h, _, _ in self._host_keys()})

    def list_nodes(self, hostname: str | None = None) -> list[Node]:
        """Every node (or just `hostname`), with its fields (a host with only endpoints
        has none set)."""
        fields: dict[str, dict[str, str]] = {}
        for host, parsed, value in self._host_keys(hostname):
            host_fields = fields.setdefault(host, {})
            if isinstance(parsed, ks.BGPHostKey):
                host_fields[parsed.name] = value
        nodes = [decode(ks.bgp_host_dir(h), json.dumps(f), partial(Node.from_json, h))
                 for h, f in sorted(fields.items())]
        return [n for n in nodes if n is not None]

    def get_node(self, hostname: str) -> Node | None:
        """One node, reading only its own keys; None when it has none."""
        return next((n for n in self.list_nodes(hostname) if n.hostname == hostname), None)

    def node_ops(self, node: Node) -> list[Op]:
        """Operations that make the stored node equal `node`: unset fields are deleted,
        except the run-time fields (tunnel endpoints), which the node records itself and
        which stay as stored unless `node` sets them (`set_node_runtime` changes them)."""
        from libcalico.datastore import Delete, Put

        values = node.to_json()
        runtime = {NODE_KEYS[f] for f in NODE_RUNTIME_FIELDS}
        ops: list[Op] = []
        for name in ks.BGP_HOST_FIELDS:
            key = ks.bgp_host_key(node.hostname, name)
            if name in values:
                ops.append(Put(key, values[name]))
            elif name not in runtime:
                ops.append(Delete(key))
        if node.ipv4:
            ops.append(Put(ks.host_bird_ip_key(node.hostname), node.ipv4))
        return ops

    def put_node(self, node: Node) -> None:
        self.store.txn([], self.node_ops(node), [])

    def set_node_runtime(self, hostname: str, **fields: str | None) -> None:
        """Set (None: delete) some of a node's run-time fields (`NODE_RUNTIME_FIELDS`:
        its tunnel addresses and VXLAN MAC), in one transaction."""
        from libcalico.datastore import Delete, Put

        unknown = set(fields) - set(NODE_RUNTIME_FIELDS)
        if unknown:
            raise ValidationError("node field", sorted(unknown)[0], "not a run-time field")
        values = Node(hostname, **{k: v for k, v in fields.items()  # type: ignore[arg-type]
                                   if v is not None}).to_json()
        ops: list[Op] = []
        for attr in fields:
            key = ks.bgp_host_key(hostname, NODE_KEYS[attr])
            name = NODE_KEYS[attr]
            ops.append(Put(key, values[name]) if name in values else Delete(key))
        if ops:
            self.store.txn([], ops, [])

    def remove_node(self, hostname: str, remove_endpoints: bool = False) -> None:
        """Delete every key of the node; refuses while it has endpoints unless asked to."""
        from libcalico.datastore import Delete

        if hostname not in self.list_node_names():
            raise NotFound(f"node {hostname} does not exist")
        eps, _ = self.store.list(ks.host_workload_dir(hostname))
        if eps and not remove_endpoints:
            raise Conflict(f"node {hostname} still has {len(eps)} workload endpoint(s); "
                           "use --remove-endpoints")
        self.store.txn([], [Delete(ks.host_dir(hostname), prefix=True),
                            Delete(ks.bgp_host_dir(hostname), prefix=True),
                            Delete(ks.felix_status_dir(hostname), prefix=True),
                            Delete(ks.affinity_dir(hostname), prefix=True)], [])

    # --- BGP peers ---------------------------------------------------------------------------

    def list_bgp_peers(self, hostname: str | None = None,
                       version: int | None = None) -> list[BGPPeer]:
        prefixes = [ks.bgp_peer_dir(v, hostname) for v in ((4, 6) if version is None
                                                           else (version,))]
        kvs, _ = self.store.list_many(prefixes)
        peers = [decode(kv.key, kv.value, lambda d: BGPPeer.from_json(d, hostname))
                 for kv in kvs]
        return sorted((p for p in peers if p is not None),
                      key=lambda p: (p.version, ipaddress.ip_address(p.ip)))

    def add_bgp_peer(self, peer: BGPPeer) -> None:
        self.store.put(ks.bgp_peer_key(peer.ip, peer.hostname), encode(peer.to_json()))

    def remove_bgp_peer(self, ip: str, hostname: str | None = None) -> None:
        if not self.store.delete(ks.bgp_peer_key(ip, hostname)):
            where = "global" if hostname is None else f"node {hostname}"
            raise NotFound(f"no {where} BGP peer {ip}")

    # --- global BGP settings -----------------------------------------------------------------

    def get_bgp_config(self) -> BGPGlobalConfig:
        kvs, _ = self.store.list(ks.BGP_GLOBAL_DIR)
        data: dict[str, object] = {}
        for kv in kvs:
            parsed = ks.parse_key(kv.key)
            if not isinstance(parsed, ks.BGPGlobalKey):
                continue
            if parsed.name == "node_mesh":
                mesh = decode(kv.key, kv.value, lambda d: BGPGlobalConfig.from_json(
                    {"node_mesh": d}).node_mesh)
                if mesh is not None:
                    data["node_mesh"] = mesh
            elif decode(kv.key, kv.value, partial(_bgp_setting, parsed.name),
                        raw=True) is not None:
                data[parsed.name] = kv.value
        return BGPGlobalConfig.from_json(data)

    def bgp_config_ops(self, config: BGPGlobalConfig) -> list[Op]:
        from libcalico.datastore import Put

        values = config.to_json()
        return [Put(ks.BGP_GLOBAL_AS_KEY, values["as_num"]),
                Put(ks.BGP_GLOBAL_MESH_KEY, encode(values["node_mesh"])),
                Put(ks.BGP_GLOBAL_LOGLEVEL_KEY, values["loglevel"])]

    def set_bgp_config(self, config: BGPGlobalConfig) -> None:
        self.store.txn([], self.bgp_config_ops(config), [])

    def set_default_as(self, as_num: int | str) -> None:
        self.store.put(ks.BGP_GLOBAL_AS_KEY, str(parse_as_num("as_num", as_num)))

    def set_node_mesh(self, enabled: bool) -> None:
        self.store.put(ks.BGP_GLOBAL_MESH_KEY, encode({"enabled": bool(enabled)}))

    def set_bgp_loglevel(self, level: str | None, hostname: str | None = None) -> None:
        """Global (or per-node) BIRD log level; None removes it (back to the default)."""
        key = (ks.BGP_GLOBAL_LOGLEVEL_KEY if hostname is None
               else ks.bgp_host_key(hostname, "loglevel"))
        if level is None:
            self.store.delete(key)
            return
        BGPGlobalConfig(loglevel=level)  # validates
        self.store.put(key, level)

    # --- felix configuration -----------------------------------------------------------------

    def get_felix_config(self, hostname: str | None = None) -> FelixConfig:
        prefix = ks.CONFIG_DIR if hostname is None else ks.host_config_dir(hostname)
        kvs, _ = self.store.list(prefix)
        values: dict[str, str] = {}
        for kv in kvs:
            name = kv.key[len(prefix):]
            if decode(kv.key, kv.value, partial(_felix_setting, name), raw=True) is not None:
                values[name] = kv.value
        return FelixConfig(hostname, values)

    def felix_config_ops(self, config: FelixConfig, replace: bool = False) -> list[Op]:
        from libcalico.datastore import Delete, Put

        def key(name: str) -> str:
            return (ks.global_config_key(name) if config.scope_host is None
                    else ks.host_config_key(config.scope_host, name))

        ops: list[Op] = [Put(key(n), v) for n, v in config.values.items()]
        if replace:
            current = self.get_felix_config(config.scope_host)
            ops += [Delete(key(n)) for n in current.values if n not in config.values]
        return ops

    def set_felix_value(self, name: str, value: str | None,
                        hostname: str | None = None) -> None:
        """Set (or with None remove) one felix parameter, globally or for one host."""
        FelixConfig(hostname, {name: value if value is not None else ""})  # validates name
        key = (ks.global_config_key(name) if hostname is None
               else ks.host_config_key(hostname, name))
        if value is None:
            if not self.store.delete(key):
                raise NotFound(f"felix config {name} is not set")
        else:
            self.store.put(key, value)

    # --- IPAM configuration ------------------------------------------------------------------

    def get_ipam_config(self) -> IPAMConfig:
        kv = self.store.get(ks.IPAM_CONFIG_KEY)
        cfg = decode(ks.IPAM_CONFIG_KEY, kv.value if kv else None, IPAMConfig.from_json)
        return cfg or IPAMConfig()

    def set_ipam_config(self, config: IPAMConfig) -> None:
        cas_update(self.store, ks.IPAM_CONFIG_KEY, lambda kv: encode(config.to_json()))
