"""`calico-libnetwork`: the Docker network driver `calico` and IPAM driver `calico-ipam`.

Owns the program: its settings from the environment, logging, wiring the drivers to
their sockets, picking up where a previous run left off (networks of this host whose
name is not recorded yet are looked up again), and a clean stop on SIGTERM/SIGINT (the
sockets removed; containers, endpoints and records stay: they live in the kernel and in
etcd, and a new run serves them).

Settings (environment):
  CALICO_LIBNETWORK_SOCKET       the network driver's socket
                                 (default /run/docker/plugins/calico.sock)
  CALICO_LIBNETWORK_IPAM_SOCKET  the IPAM driver's socket (default: calico-ipam.sock
                                 next to the network driver's)
  HOSTNAME                       this node's name (as `calicoctl node` registered it)
  DOCKER_HOST                    the engine to ask for network names and labels
                                 (default unix:///var/run/docker.sock)
  CALICO_LIBNETWORK_VETH_MTU     MTU of the veths (default: the kernel's)
  CALICO_LIBNETWORK_LOG_LEVEL    debug, info (default) or warning
  ETCD_ENDPOINTS, ETCD_AUTHORITY, ETCD_SCHEME, ETCD_*_FILE  the datastore
Bad settings: one line on stderr, exit 2.

Leaves to others: the calls (`calico_libnetwork.network`, `.ipam`), HTTP
(`calico_libnetwork.server`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

from calico_libnetwork.api import IPAM_DRIVER, NETWORK_DRIVER

DEFAULT_SOCKET = "/run/docker/plugins/calico.sock"
IPAM_SOCKET_NAME = "calico-ipam.sock"

_log = logging.getLogger("calico_libnetwork")


@dataclass(frozen=True)
class Settings:
    socket: str
    ipam_socket: str
    hostname: str
    docker_host: str
    mtu: int | None
    log_level: str


def settings_from(env: Mapping[str, str]) -> Settings:
    """The program's settings (ValidationError naming the variable for a bad one)."""
    from calico_libnetwork.engine import DEFAULT_DOCKER_HOST
    from libcalico.errors import ValidationError
    from workload.provision import validate_mtu

    sock = env.get("CALICO_LIBNETWORK_SOCKET") or DEFAULT_SOCKET
    if not sock.startswith("/") or not sock.endswith(".sock"):
        raise ValidationError("CALICO_LIBNETWORK_SOCKET", sock,
                              "must be an absolute path ending in .sock")
    ipam_sock = env.get("CALICO_LIBNETWORK_IPAM_SOCKET") or os.path.join(
        os.path.dirname(sock), IPAM_SOCKET_NAME)
    mtu_text = env.get("CALICO_LIBNETWORK_VETH_MTU") or ""
    mtu = None
    if mtu_text:
        if not mtu_text.isdigit():
            raise ValidationError("CALICO_LIBNETWORK_VETH_MTU", mtu_text, "must be a number")
        mtu = validate_mtu(int(mtu_text))
    level = (env.get("CALICO_LIBNETWORK_LOG_LEVEL") or "info").lower()
    if level not in ("debug", "info", "warning"):
        raise ValidationError("CALICO_LIBNETWORK_LOG_LEVEL", level,
                              "must be debug, info or warning")
    return Settings(sock, ipam_sock, env.get("HOSTNAME") or os.uname().nodename,
                    env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST, mtu, level)


def main(argv: list[str] | None = None) -> int:
    from libcalico.errors import CalicoError

    try:
        settings = settings_from(os.environ)
        from libcalico.datastore import Datastore, EtcdSettings

        etcd = EtcdSettings.from_env()
    except CalicoError as exc:
        print(f"calico-libnetwork: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    from calico_libnetwork.engine import NetworkLookup
    from calico_libnetwork.ipam import IpamDriver
    from calico_libnetwork.network import NetworkDriver
    from calico_libnetwork.server import PluginApp, serve
    from calico_libnetwork.state import DriverState
    from libcalico.client import CalicoClient
    from libcalico.ipam import IPAMClient

    store = Datastore(etcd)
    client = CalicoClient(store)
    ipam = IPAMClient(store)
    network = NetworkDriver(DriverState(store, client), ipam,
                            NetworkLookup(settings.docker_host), settings.hostname,
                            mtu=settings.mtu)
    apps = {settings.socket: PluginApp([NETWORK_DRIVER], network.calls()),
            settings.ipam_socket: PluginApp(
                [IPAM_DRIVER], IpamDriver(client, ipam, settings.hostname).calls())}
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _log.info("calico-libnetwork for host %s, engine %s", settings.hostname,
              settings.docker_host)
    try:
        network.resume()
        serve(apps, stop)
    except CalicoError as exc:
        _log.error("%s", exc)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
