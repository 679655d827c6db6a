"""The project's one error hierarchy.

Owns: the exceptions that cross module boundaries. Datastore failures are mapped
onto `DatastoreError` subclasses by `libcalico.datastore`, so no etcd3 or grpc
exception escapes the library; invalid user input raises `ValidationError`, which
names the field and the offending value. Presentation (exit codes, one-line
messages) is left to the command-line shells.
"""

from __future__ import annotations

from typing import Any


class CalicoError(Exception):
    """Base class of every error this project raises on purpose."""


class ValidationError(CalicoError, ValueError):
    """Invalid input: names the field, the value and what is wrong with it."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {field} {value!r}: {reason}")


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
