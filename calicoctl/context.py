"""Per-invocation state shared by every calicoctl command.

Owns: `CtlContext` (the etcd options given on the command line, --debug, --hostname)
and lazy creation of the datastore and typed client, so commands that never touch
etcd (version, --help, completion) import nothing of it. A command is one short
process that never watches, so it talks to etcd's JSON gateway (transport "http",
standard library only): grpc's import alone costs ~0.15 s of CPU, paid again by every
command and by each of the 50 `node run`s that start a 50-host cluster at once.
`ETCD_TRANSPORT=grpc` goes back to the etcd3 package.

Leaves to others: the connection itself (`libcalico.datastore`), the operations
(`libcalico.client`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.client.network import NetworkClient
    from libcalico.datastore import Datastore


@dataclass
class CtlContext:
    endpoints: str | None = None
    authority: str | None = None
    ca_cert: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    debug: bool = False
    _store: Any = field(default=None, repr=False)
    _client: Any = field(default=None, repr=False)

    @property
    def store(self) -> Datastore:
        if self._store is None:
            from libcalico.datastore import Datastore, EtcdSettings

            settings = EtcdSettings.from_env(
                endpoints=self.endpoints, authority=self.authority, ca_cert=self.ca_cert,
                cert_file=self.cert_file, key_file=self.key_file, username=self.username,
                transport=os.environ.get("ETCD_TRANSPORT") or "http")
            self._store = Datastore(settings)
        return self._store

    @property
    def client(self) -> CalicoClient:
        if self._client is None:
            from libcalico.client import CalicoClient

            self._client = CalicoClient(self.store)
        return self._client

    @property
    def network(self) -> NetworkClient:
        """The pool/node/BGP/config part of the client alone: cheaper to import, for
        commands that use nothing else."""
        if self._client is not None:
            return self._client
        from libcalico.client.network import NetworkClient

        return NetworkClient(self.store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
            self._client = None


def ctl() -> CtlContext:
    """The current invocation's context."""
    obj = click.get_current_context().find_object(CtlContext)
    if obj is None:  # a subcommand invoked on its own (tests)
        obj = CtlContext()
        click.get_current_context().obj = obj
    return obj


def this_hostname(explicit: str | None = None) -> str:
    """This node's name: --hostname, else $HOSTNAME, else the kernel's hostname."""
    return explicit or os.environ.get("HOSTNAME") or os.uname().nodename


hostname_option = click.option(
    "--hostname", default=None, metavar="HOSTNAME",
    help="The node's name (default: $HOSTNAME, else the system hostname).")
