"""Keys-only listings of resource names, for commands that show names and nothing else.

Owns: turning a keys-only read of a directory into the sorted names of the resources
below it. Reads no values and imports no model, so `calicoctl profile show` does not pay
for decoding every rule document or for importing the resource classes.

Leaves to others: reading (`Datastore.list_keys`), key parsing (`libcalico.keyspace`),
the resources themselves (`libcalico.client.policy` and siblings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libcalico import keyspace as ks

if TYPE_CHECKING:
    from libcalico.datastore import Datastore


def profile_names(store: Datastore) -> list[str]:
    """The names of the stored profiles (any profile with at least one key), sorted."""
    keys, _ = store.list_keys(ks.PROFILE_DIR)
    return sorted({p.name for p in map(ks.parse_key, keys) if isinstance(p, ks.ProfileKey)})
