"""The owner of felix's tunnel devices and of the VXLAN device's forwarding entries.

Owns: the desired tunnel devices (`vxlan.calico`: kind vxlan, VNI, UDP port, outer
source address, no learning, a fixed MAC, MTU, the node's tunnel address as its only
IPv4 address, up; `tunl0`: kind ipip, MTU, tunnel address, up) and the permanent FDB
entries of `vxlan.calico` (remote VTEP MAC -> remote host address), what it believes the
kernel holds, and a dirty set.

`apply()` looks at each dirty device with pyroute2 (devices are few; their attributes are
not worth a hand-written decoder) - unless no device is desired and none of felix's is in
the kernel (looked up through `rtnl`), the usual case without encapsulated pools, which
then imports no pyroute2 at all: a missing device is created; one whose kind, VNI,
port or outer source differs is deleted and created again (the kernel cannot change
those in place); MTU, MAC and state are set in place; addresses other than the tunnel
address are removed. A device no longer desired is deleted (`tunl0`, which the ipip
module creates itself and will not delete, is set down and emptied instead). It
returns the names of the devices it created (`last_created`), so the route owner
rewrites the routes and neighbour entries the kernel dropped with the old device. Then
the FDB entries go in one netlink batch (create-or-replace, delete), read back from the
kernel at a resync.

A device the kernel cannot create (no ipip on this kernel: EOPNOTSUPP) is listed in
`failures` with a plain reason and raised as one `DataplaneError`, so felix's readiness
and log say what is missing; the other owners still apply.

Leaves to others: what the devices and entries are (`felix.calc.tunnels`), routes and
neighbour entries through them (`felix.dataplane.routes`), ordering
(`felix.dataplane.apply`: tunnels before routes).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from felix.dataplane.cmd import DataplaneError
from felix.dataplane.types import FDBState, TunnelDevice
from libcalico.model.tunnel import IPIP_INTERFACE, VXLAN_INTERFACE
from rtnl.codec import Request, errno_text, fdb_request
from rtnl.consts import NUD_PERMANENT
from rtnl.netns import netns_path
from rtnl.sock import NetlinkSocket

_log = logging.getLogger(__name__)

_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH)
FDBKey = tuple[str, str]  # (ifname, mac)


@dataclass(frozen=True)
class DeviceState:
    """A tunnel device as the kernel holds it (what felix compares)."""

    kind: str
    index: int
    up: bool
    mtu: int
    mac: str | None
    vni: int | None
    port: int | None
    local: str | None
    addresses: frozenset[str]  # IPv4 addresses, "a.b.c.d/len"


class Tunnels:
    """Tunnel devices and FDB entries in one namespace. State fields: `_devices` (name ->
    TunnelDevice) and `_fdb` ((ifname, mac) -> remote) desired; `_kernel_fdb` ((ifname,
    mac) -> (ifindex, remote)) believed; `_dirty_devices`, `_dirty_fdb`; `_known`
    (device names felix ever wanted: removing one means deleting it); `_failed` (name ->
    why its last apply failed)."""

    def __init__(self, netns: str | None = None, nl: NetlinkSocket | None = None) -> None:
        self.netns = netns
        self._nl = nl
        self._devices: dict[str, TunnelDevice] = {}
        self._fdb: dict[FDBKey, str] = {}
        self._kernel_fdb: dict[FDBKey, tuple[int, str]] = {}
        self._dirty_devices: set[str] = set()
        self._dirty_fdb: set[FDBKey] = set()
        self._known: set[str] = set()
        self._failed: dict[str, str] = {}
        self._needs_resync = True
        self.last_created: set[str] = set()  # devices the last apply (re)created

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()

    # ---- desired state -------------------------------------------------------------

    def set_device(self, device: TunnelDevice) -> None:
        if self._devices.get(device.name) != device:
            self._devices[device.name] = device
            self._known.add(device.name)
            self._dirty_devices.add(device.name)

    def remove_device(self, name: str) -> None:
        if self._devices.pop(name, None) is not None:
            self._dirty_devices.add(name)

    def set_fdb(self, entries: Iterable[FDBState]) -> None:
        """Replace the whole desired set of FDB entries."""
        wanted = {(e.ifname, e.mac.lower()): e.dst for e in entries}
        for key in set(self._fdb) - set(wanted):
            del self._fdb[key]
            self._dirty_fdb.add(key)
        for key, dst in wanted.items():
            if self._fdb.get(key) != dst:
                self._fdb[key] = dst
                self._dirty_fdb.add(key)

    def on_interface_update(self, ifname: str) -> None:
        """A device appeared, changed or vanished outside felix: look at it again."""
        if ifname in self._known:
            self._dirty_devices.add(ifname)
            self._dirty_fdb.update(k for k in self._fdb if k[0] == ifname)
            self._dirty_fdb.update(k for k in self._kernel_fdb if k[0] == ifname)

    def mark_resync(self) -> None:
        self._needs_resync = True

    @property
    def failures(self) -> dict[str, str]:
        return dict(self._failed)

    @property
    def in_sync(self) -> bool:
        return not (self._needs_resync or self._dirty_devices or self._dirty_fdb)

    # ---- apply -----------------------------------------------------------------------

    def apply(self) -> set[str]:
        """Program the dirty devices, then the FDB; return the devices (re)created (also
        kept in `last_created`, for when this raises). Raises DataplaneError naming every
        device or entry that failed."""
        self.last_created = set()
        if not (self._needs_resync or self._dirty_devices or self._dirty_fdb):
            return set()
        if self._needs_resync:
            # felix owns these names: one left over from before (a pool removed while
            # felix was down) is removed too
            self._known |= {VXLAN_INTERFACE, IPIP_INTERFACE}
            self._dirty_devices.update(self._known | set(self._devices))
        if not self._devices and not self._fdb and self._nothing_to_remove():
            # No pool is encapsulated and the kernel holds nothing of ours: done, without
            # pyroute2 (its import costs felix ~0.25 s of CPU and ~12 MB; docs/scale.md).
            for name in self._dirty_devices:
                self._known.discard(name)
                self._failed.pop(name, None)
            self._dirty_devices, self._dirty_fdb, self._kernel_fdb = set(), set(), {}
            self._needs_resync = False
            return set()
        from pyroute2 import IPRoute

        ipr = IPRoute() if self.netns is None else IPRoute(netns=netns_path(self.netns))
        try:
            created, errors = self._apply_devices(ipr)
            self.last_created = created
            try:
                errors += self._apply_fdb(ipr, created)
            except OSError as exc:  # rtnl's NetlinkError included
                self._needs_resync = True
                errors.append(f"fdb: {exc}")
            else:
                self._needs_resync = False
        finally:
            ipr.close()
        if errors:
            raise DataplaneError("; ".join(errors))
        return created

    def _apply_devices(self, ipr: Any) -> tuple[set[str], list[str]]:
        from pyroute2 import NetlinkError as PyNetlinkError

        created: set[str] = set()
        errors: list[str] = []
        for name in sorted(self._dirty_devices):
            want = self._devices.get(name)
            try:
                if self._apply_device(ipr, name, want):
                    created.add(name)
                self._failed.pop(name, None)
            except (PyNetlinkError, OSError, DataplaneError) as exc:
                code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
                reason = self._reason(want, name, code, exc)
                self._failed[name] = reason
                errors.append(reason)
                continue
            if want is None:
                self._known.discard(name)
        self._dirty_devices = {n for n in self._dirty_devices if n in self._failed}
        return created, errors

    @staticmethod
    def _reason(want: TunnelDevice | None, name: str, code: int, exc: BaseException) -> str:
        if want is not None and code == errno.EOPNOTSUPP:
            return (f"{name}: this kernel cannot create {want.kind} devices "
                    f"({os.strerror(code)}); {want.kind.upper()} pools cannot work on this host")
        return f"{name}: {errno_text(code) if code else exc}"

    def _read(self, ipr: Any, name: str) -> DeviceState | None:
        links = ipr.get_links(ifname=name) if self._exists(ipr, name) else []
        if not links:
            return None
        link = links[0]
        info = link.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info else None
        data = info.get("IFLA_INFO_DATA") if info else None
        vni = port = local = None
        if kind == "vxlan" and data is not None:
            vni = data.get("IFLA_VXLAN_ID")
            port = data.get("IFLA_VXLAN_PORT")
            local = data.get("IFLA_VXLAN_LOCAL")
        addrs = frozenset(f"{a.get('IFA_LOCAL') or a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                          for a in ipr.get_addr(index=link["index"], family=socket.AF_INET))
        return DeviceState(str(kind), link["index"], bool(link["flags"] & 1),
                           link.get("IFLA_MTU"), link.get("IFLA_ADDRESS"), vni, port, local,
                           addrs)

    @staticmethod
    def _exists(ipr: Any, name: str) -> bool:
        return bool(ipr.link_lookup(ifname=name))

    def _apply_device(self, ipr: Any, name: str, want: TunnelDevice | None) -> bool:
        """Make the kernel's device match `want` (None: remove it); True if created."""
        have = self._read(ipr, name)
        if want is None:
            if have is None:
                return False
            if have.kind == "ipip":
                # the ipip module's own fallback device: cannot be deleted, only emptied
                if not have.up and not have.addresses:
                    return False
                for addr in have.addresses:
                    ip, plen = addr.split("/")
                    ipr.addr("del", index=have.index, address=ip, prefixlen=int(plen))
                ipr.link("set", index=have.index, state="down")
            else:
                ipr.link("del", index=have.index)
            _log.info("removed tunnel device %s", name)
            return False
        created = False
        if have is not None and not self._same_identity(have, want):
            _log.warning("tunnel device %s has other settings (%s); recreating it", name, have)
            ipr.link("del", index=have.index)
            have = None
        if have is None:
            self._create(ipr, want)
            created = True
            have = self._read(ipr, name)
            if have is None:
                raise DataplaneError(f"{name}: created, but the kernel does not show it")
        if have.mtu != want.mtu:
            ipr.link("set", index=have.index, mtu=want.mtu)
        if want.mac and (have.mac or "").lower() != want.mac:
            ipr.link("set", index=have.index, address=want.mac)
        wanted_addr = f"{want.address}/32"
        for addr in have.addresses - {wanted_addr}:
            ip, plen = addr.split("/")
            ipr.addr("del", index=have.index, address=ip, prefixlen=int(plen))
        if wanted_addr not in have.addresses:
            ipr.addr("add", index=have.index, address=want.address, prefixlen=32)
        if not have.up:
            ipr.link("set", index=have.index, state="up")
        if created:
            _log.info("created tunnel device %s (%s)", name, want)
        return created

    @staticmethod
    def _same_identity(have: DeviceState, want: TunnelDevice) -> bool:
        if have.kind != want.kind:
            return False
        if want.kind == "vxlan":
            return (have.vni, have.port, have.local) == (want.vni, want.port, want.local)
        return True

    @staticmethod
    def _create(ipr: Any, want: TunnelDevice) -> None:
        """Create the device. Loading the ipip module to do so makes the kernel create
        its own `tunl0` first, so EEXIST there means the device is now there."""
        from pyroute2 import NetlinkError as PyNetlinkError

        try:
            Tunnels._add(ipr, want)
        except PyNetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    @staticmethod
    def _add(ipr: Any, want: TunnelDevice) -> None:
        if want.kind == "vxlan":
            args: dict[str, Any] = {"vxlan_id": want.vni, "vxlan_port": want.port,
                                    "vxlan_learning": 0}
            if want.local:
                args["vxlan_local"] = want.local
            if want.mac:
                args["address"] = want.mac
            ipr.link("add", ifname=want.name, kind="vxlan", mtu=want.mtu, **args)
        else:
            ipr.link("add", ifname=want.name, kind=want.kind, mtu=want.mtu)

    # ---- FDB -------------------------------------------------------------------------

    def _apply_fdb(self, ipr: Any, created: set[str]) -> list[str]:
        """One netlink batch for the dirty FDB entries; errors as text."""
        nl = self._socket()
        indexes: dict[str, int] = {}
        for name in {k[0] for k in (*self._fdb, *self._kernel_fdb)} | created:
            found = ipr.link_lookup(ifname=name)
            if found:
                indexes[name] = found[0]
        if self._needs_resync or created:
            self._kernel_fdb = {}
            for name, index in indexes.items():
                for entry in nl.dump_fdb(index):
                    if entry.mac and entry.dst and entry.state & NUD_PERMANENT:
                        self._kernel_fdb[(name, entry.mac)] = (index, entry.dst)
            self._dirty_fdb = set(self._fdb) | set(self._kernel_fdb)
        requests: list[Request] = []
        actions: list[tuple[FDBKey, tuple[int, str] | None]] = []
        waiting: set[FDBKey] = set()
        for key in sorted(self._dirty_fdb):
            ifname, mac = key
            dst = self._fdb.get(key)
            have = self._kernel_fdb.get(key)
            found = indexes.get(ifname)
            if dst is not None:
                if found is None:
                    waiting.add(key)  # until its device exists
                elif have != (found, dst):
                    requests.append(fdb_request(mac, dst, found))
                    actions.append((key, (found, dst)))
            elif have is not None:
                if found == have[0]:
                    requests.append(fdb_request(mac, have[1], have[0], delete=True))
                    actions.append((key, None))
                else:
                    del self._kernel_fdb[key]  # its device is gone, and the entry with it
        self._dirty_fdb = waiting
        errors: list[str] = []
        for (code, _replies), (key, value) in zip(nl.request_batch(requests), actions,
                                                  strict=True):
            if code == 0 or (value is None and code in _GONE):
                if value is None:
                    self._kernel_fdb.pop(key, None)
                else:
                    self._kernel_fdb[key] = value
            else:
                errors.append(f"fdb {key[1]} on {key[0]}: {errno_text(code)}")
                self._dirty_fdb.add(key)
        return errors

    def _nothing_to_remove(self) -> bool:
        """None of the dirty device names is in the kernel, but for the ipip module's own
        `tunl0` left down and without addresses (what `_apply_device` leaves it as)."""
        nl = self._socket()
        names = self._dirty_devices | {k[0] for k in (*self._dirty_fdb, *self._kernel_fdb)}
        present = nl.get_links(sorted(names), detail=False)
        if set(present) - {IPIP_INTERFACE}:
            return False
        tunl = present.get(IPIP_INTERFACE)
        if tunl is None:
            return True
        return not tunl.admin_up and not any(a.ifindex == tunl.ifindex
                                             for a in nl.dump_addresses(socket.AF_INET))

    def _socket(self) -> NetlinkSocket:
        if self._nl is None:
            self._nl = NetlinkSocket(self.netns)
        return self._nl
