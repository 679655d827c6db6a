"""Reading the fields of a plugin call's JSON request, validated at the boundary.

Owns (pure, no I/O): typed access to a request's fields (`docker_id`, `text`, `obj`,
`items`, `flag`, `mac`, `sandbox_key`), each refusing a missing or mistyped field with a
`PluginError` of one line that names the field as Docker sends it and shows the value
(shortened): `invalid NetworkID 'a/b': must be a Docker id (hexadecimal)`. A handler
reads every field it uses through these before it acts, so a malformed request is
refused before anything is written.

Leaves to others: what the calls do with the values (`calico_libnetwork.network`,
`.ipam`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from calico_libnetwork.api import PluginError

Request = Mapping[str, Any]

# Docker's ids are 64 lowercase hexadecimal digits; short forms are accepted for tests.
_DOCKER_ID_RE = re.compile(r"^[0-9a-f]{12,64}\Z")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_SHOWN = 60  # characters of a bad value quoted in a refusal


def shown(value: Any) -> str:
    """A value as a refusal quotes it: repr (no raw newlines), at most ~60 characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def invalid(name: str, value: Any, reason: str) -> PluginError:
    return PluginError(f"invalid {name} {shown(value)}: {reason}")


def docker_id(req: Request, name: str) -> str:
    """A required Docker id field (NetworkID, EndpointID)."""
    value = req.get(name)
    if value is None or value == "":
        raise PluginError(f"the request has no {name}")
    if not isinstance(value, str) or not _DOCKER_ID_RE.match(value):
        raise invalid(name, value, "must be a Docker id (hexadecimal)")
    return value


def text(req: Request, name: str, *, required: bool = False, label: str | None = None,
         max_len: int = 4096) -> str:
    """A string field ('' when absent or null, unless required)."""
    value = req.get(name)
    label = label or name
    if value is None or value == "":
        if required:
            raise PluginError(f"the request has no {label}")
        return ""
    if not isinstance(value, str):
        raise invalid(label, value, "must be a string")
    if len(value) > max_len or any(c in value for c in "\x00\n\r"):
        raise invalid(label, value, f"must be one line of at most {max_len} characters")
    return value


def obj(req: Request, name: str, *, label: str | None = None) -> Mapping[str, Any]:
    """An object field ({} when absent or null)."""
    value = req.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(label or name, value, "must be an object")
    return value


def items(req: Request, name: str) -> list[Mapping[str, Any]]:
    """A list-of-objects field ([] when absent or null)."""
    value = req.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, Mapping) for i in value):
        raise invalid(name, value, "must be a list of objects")
    return value


def flag(req: Request, name: str, *, label: str | None = None) -> bool:
    """A boolean field (False when absent or null)."""
    value = req.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(label or name, value, "must be true or false")
    return value


def mac(req: Request, name: str, *, label: str | None = None) -> str | None:
    """A MAC address field (None when absent, null or empty)."""
    value = text(req, name, label=label)
    if not value:
        return None
    if not _MAC_RE.match(value):
        raise invalid(label or name, value, "must be a MAC address (aa:bb:cc:dd:ee:ff)")
    return value.lower()


def sandbox_key(req: Request, name: str = "SandboxKey") -> str:
    """The sandbox's namespace path: required, absolute."""
    value = text(req, name, required=True)
    if not value.startswith("/"):
        raise invalid(name, value, "must be an absolute path")
    return value
