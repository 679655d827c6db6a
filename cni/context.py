"""One plugin call's inputs and the clients it opens, injected into every command.

Owns: `Context` (the parsed environment, configuration and CNI_ARGS, the raw stdin a
delegated IPAM plugin gets, the process environment, the identity of the attachment)
and lazy creation of the datastore client (etcd's JSON gateway: no grpc import), the
typed client and the IPAM client, so a call that fails validation never connects and
VERSION never imports the library.

Leaves to others: parsing (`cni.config`, `cni.spec`), the commands (`cni.calico`,
`cni.ipam`), closing at exit (`cni.main`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cni.config import Args, Identity, NetConf, identity, nodename
from cni.spec import Env

if TYPE_CHECKING:
    from libcalico.client import CalicoClient
    from libcalico.datastore import Datastore
    from libcalico.ipam import IPAMClient


@dataclass
class Context:
    env: Env
    conf: NetConf
    args: Args
    stdin: bytes
    environ: Mapping[str, str]
    _store: Any = field(default=None, repr=False)

    @cached_property
    def ident(self) -> Identity:
        return identity(self.conf, self.env, self.args)

    @cached_property
    def nodename(self) -> str:
        return nodename(self.conf, self.environ)

    @property
    def store(self) -> Datastore:
        if self._store is None:
            from libcalico.datastore import Datastore, EtcdSettings

            c = self.conf
            settings = EtcdSettings.from_env(
                self.environ, endpoints=c.etcd_endpoints, authority=c.etcd_authority,
                ca_cert=c.etcd_ca_cert_file, cert_file=c.etcd_cert_file,
                key_file=c.etcd_key_file, transport="http")
            self._store = Datastore(settings)
        return self._store

    @cached_property
    def client(self) -> CalicoClient:
        from libcalico.client import CalicoClient

        return CalicoClient(self.store)

    @cached_property
    def ipam(self) -> IPAMClient:
        from libcalico.ipam.client import IPAMClient

        return IPAMClient(self.store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
