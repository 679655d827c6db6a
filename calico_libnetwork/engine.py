"""What only the Docker engine knows: a network's name and labels.

Docker's CreateNetwork call carries the network's id and driver options, but neither
its name nor its `--label`s; the driver asks the engine's API for them (the Docker SDK's
low-level client, on the socket DOCKER_HOST names). The engine stores a network only
after the driver's CreateNetwork has answered, so `NetworkLookup.wait_for` polls for it
with a deadline (from a background thread: CreateNetwork never waits on the engine that
is waiting on it).

Leaves to others: what the name and labels are used for (`calico_libnetwork.network`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from calico_libnetwork.api import PluginError

_log = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 10


class NetworkLookup:
    """The engine at `base_url`, asked for networks by id (client made on first use)."""

    def __init__(self, base_url: str = DEFAULT_DOCKER_HOST) -> None:
        self.base_url = base_url
        self._client: Any = None
        self._lock = threading.Lock()

    def _api(self) -> Any:
        with self._lock:
            if self._client is None:
                import docker

                self._client = docker.APIClient(base_url=self.base_url, version="auto",
                                                timeout=API_TIMEOUT_S)
            return self._client

    def network(self, network_id: str) -> tuple[str, Mapping[str, str]] | None:
        """(name, labels) of the network, or None while the engine does not know it."""
        import docker.errors
        import requests.exceptions

        try:
            info = self._api().inspect_network(network_id)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            with self._lock:
                self._client = None  # reconnect next time (the engine may have restarted)
            raise PluginError(f"the Docker engine at {self.base_url} did not say what "
                              f"network {network_id[:12]} is: {_one_line(exc)}") from None
        return str(info["Name"]), dict(info.get("Labels") or {})

    def wait_for(self, network_id: str, timeout: float,
                 interval: float = 0.05) -> tuple[str, Mapping[str, str]] | None:
        """Poll until the engine knows the network or `timeout` passes (None then)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.network(network_id)
            except PluginError as exc:
                _log.warning("%s", exc)
                found = None
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(interval)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
