"""`CalicoClient`: the typed datastore client, one mixin per concern.

Owns: only the composition (see `libcalico.client` for what each mixin does).

Leaves to others: every operation (the mixin modules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libcalico.client.resources import ResourceClient

if TYPE_CHECKING:
    from libcalico.datastore import Datastore


class CalicoClient(ResourceClient):
    """Typed CRUD over the datastore; see the mixins for the operations."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
