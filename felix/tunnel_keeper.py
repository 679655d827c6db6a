"""This node's tunnel addresses, kept in line with the pools on a thread of felix's own.

Owns `TunnelKeeper`: runs `libcalico.tunnel.reconcile_tunnels` for this host (Calico's
`allocate-tunnel-addrs`: a VXLAN or IPIP tunnel address from IPAM with the host's
affinity, recorded on the node with the VXLAN MAC; released when the encapsulation goes)
whenever the driver says pools or this node changed (`poke()`, coalesced: a burst of
pokes gives one run), every refresh interval, and again with backoff
(`libcalico.retry.Backoff`, 0.5 s to 30 s) after a failure. It lives in felix because
felix is the one program every node runs (with or without BIRD), and it writes only
through the library (IPAM's write path and the node's run-time fields); the node record
it writes comes back through the syncer, and the calculation then programs the devices.
Nothing here raises into the driver; failures are logged.

Leaves to others: the decisions and writes (`libcalico.tunnel`), when pools or the node
changed (`felix.driver`), the dataplane (`felix.calc.tunnels`, `felix.dataplane.tunnels`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from libcalico.errors import CalicoError
from libcalico.retry import Backoff

if TYPE_CHECKING:
    from libcalico.datastore import Datastore

_log = logging.getLogger(__name__)


class TunnelKeeper:
    """See the module docstring. `poke()` may be called from any thread. State: `_wake`
    (a run is wanted), `_stop`, `runs` (completed reconciles, for tests and metrics)."""

    def __init__(self, store: Datastore, hostname: str, interval: float = 90.0) -> None:
        self.store = store
        self.hostname = hostname
        self.interval = interval if interval > 0 else 3600.0
        self.runs = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(0.5, 30.0)

    def start(self) -> TunnelKeeper:
        self._thread = threading.Thread(target=self._run, name="felix-tunnels", daemon=True)
        self._thread.start()
        return self

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        from libcalico.client.network import NetworkClient
        from libcalico.ipam import IPAMClient
        from libcalico.tunnel import reconcile_tunnels

        client = NetworkClient(self.store)
        ipam = IPAMClient(self.store)
        timeout = self.interval
        while not self._stop.is_set():
            self._wake.wait(timeout)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                change = reconcile_tunnels(client, ipam, self.hostname)
            except CalicoError as exc:
                timeout = self._backoff.next()
                _log.warning("could not update this node's tunnel addresses (%s); "
                             "retrying in %.1fs", exc, timeout)
                self._wake.set()  # the wait below returns at once; sleep the backoff first
                self._stop.wait(timeout)
                continue
            self._backoff.reset()
            timeout = self.interval
            self.runs += 1
            for problem in change.problems:
                _log.warning("tunnel addresses of %s: %s", self.hostname, problem)
            if change:
                _log.info("tunnel addresses of %s: set %s, allocated %s, released %s",
                          self.hostname, change.fields, list(change.allocated),
                          list(change.released))
