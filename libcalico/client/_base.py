"""Shared machinery of the typed datastore client: JSON decoding that treats invalid
stored values as absent, and bounded compare-and-swap retry loops.

Owns: `decode` (json text -> validated model value or None, logging each bad key once),
`cas_update` (read-modify-write of one key) and
`cas_txn` (read-modify-write of several keys in one etcd transaction).

Leaves to others: which keys and models (the per-resource modules), the etcd calls
themselves (`libcalico.datastore`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from libcalico.errors import CalicoError
from libcalico.retry import RETRIES, retry_cas

if TYPE_CHECKING:
    from libcalico.datastore import KV, Datastore, Op

_log = logging.getLogger(__name__)

T = TypeVar("T")

_warned: set[str] = set()


def decode(key: str, text: str | None, parse: Callable[[Any], T], *,
           raw: bool = False) -> T | None:
    """Parse a stored value; invalid values are treated as absent and logged once per key.

    With `raw` the text is handed to `parse` as is (plain-string keys like `as_num`).
    """
    if text is None:
        return None
    try:
        return parse(text if raw else json.loads(text))
    except (ValueError, TypeError, KeyError, CalicoError) as exc:
        if key not in _warned:
            _warned.add(key)
            _log.warning("ignoring invalid value at %s: %s", key, exc)
        return None


def cas_update(store: Datastore, key: str,
               change: Callable[[KV | None], str | None | bool],
               retries: int = RETRIES) -> bool:
    """Read `key`, compute its new value with `change(kv)` and write it with CAS.

    `change` returns the new text, None to delete the key, or False to leave it as it is.
    Returns whether anything was written; raises `Conflict` when retries run out.
    """

    def step() -> bool | None:
        kv = store.get(key)
        new = change(kv)
        if new is False:
            return False
        if new is None:
            if kv is None or store.cas_delete(key, kv.mod_revision):
                return kv is not None
            return None
        assert isinstance(new, str)
        return True if store.cas(key, new, kv.mod_revision if kv else 0) else None

    return retry_cas(key, step, retries)


def cas_txn(store: Datastore, keys: Sequence[str],
            change: Callable[[dict[str, KV | None]], Sequence[Op] | None],
            retries: int = RETRIES) -> bool:
    """Read `keys`, compute operations with `change(current)`, and commit them only if none
    of the keys changed meanwhile. `change` returns None for "nothing to do"."""
    from libcalico.datastore import ModRevisionIs

    def step() -> bool | None:
        current = {k: store.get(k) for k in keys}
        ops = change(current)
        if ops is None:
            return False
        compares = [ModRevisionIs(k, kv.mod_revision if kv else 0) for k, kv in current.items()]
        return True if store.txn(compares, list(ops), []) else None

    return retry_cas(", ".join(keys), step, retries)
