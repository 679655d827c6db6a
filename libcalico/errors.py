"""The project's one error hierarchy.

Owns: the exceptions that cross module boundaries. Datastore failures are mapped
onto `DatastoreError` subclasses by `libcalico.datastore`, so no etcd3 or grpc
exception escapes the library; invalid user input raises `ValidationError`, which
names the field and the offending value; IPAM's refusals (`AddressInUse`, `PoolInUse`,
`PoolsExhausted`) are `Conflict`s, so a caller tells them apart by class, never by
name or message text. A `ValidationError` about a field named like a secret (password,
token, ...) never quotes the value. Presentation (exit codes, one-line messages) is left
to the command-line shells.
"""

from __future__ import annotations

import re
from typing import Any


class CalicoError(Exception):
    """Base class of every error this project raises on purpose."""


class ValidationError(CalicoError, ValueError):
    """Invalid input: names the field, the value and what is wrong with it."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {_shown_field(field)} {_shown_value(field, value)}: "
                         f"{reason}")


# Longest value repr an error message quotes (the whole value stays in `.value`).
MAX_SHOWN_VALUE = 200
MASK = "********"
# Field names whose values are secrets: an error about one never quotes the value, so
# it cannot land in a log or a diagnostics bundle (calicoctl diags masks more: any etcd
# key or JSON field named like a key, too).
SECRET_FIELD = re.compile(r"pass(word|wd|phrase)?|token|secret|credential|private", re.I)


def _shown_field(field: Any) -> str:
    """A field name as a message shows it: quoted when it is empty or holds a newline or
    another unprintable character (field names can come from the input's own keys), so
    the message stays one line and the field stays visible."""
    text = str(field)
    return text if text and text.isprintable() else repr(text)


def _shown_value(field: Any, value: Any) -> str:
    if SECRET_FIELD.search(str(field)):
        return MASK
    shown = repr(value)
    return shown if len(shown) <= MAX_SHOWN_VALUE else shown[:MAX_SHOWN_VALUE - 3] + "..."


class DatastoreError(CalicoError):
    """A datastore operation failed."""


class DatastoreUnavailable(DatastoreError):
    """etcd could not be reached (every endpoint failed, or the call timed out)."""


class NotFound(DatastoreError):
    """The key or resource does not exist."""


class AlreadyExists(DatastoreError):
    """A create-only write found the key already present."""


class Conflict(DatastoreError):
    """A compare-and-swap lost, or retries ran out under contention."""


# --- IPAM refusals: conflicts with what is already allocated (libcalico.ipam raises them) ---

class AddressInUse(Conflict):
    """The address asked for is already allocated (to `handle_id`)."""

    def __init__(self, ip: str, handle_id: str | None) -> None:
        self.ip = ip
        self.handle_id = handle_id
        super().__init__(f"address {ip} is already in use (handle {handle_id})")


class PoolInUse(Conflict):
    """A pool still has allocated addresses and its removal was not forced. `in_use`
    maps each such pool's CIDR to its number of allocated addresses."""

    def __init__(self, message: str, in_use: dict[str, int] | None = None) -> None:
        self.in_use = dict(in_use or {})
        super().__init__(message)


class PoolsExhausted(Conflict):
    """Fewer addresses were available than were asked for."""
