"""The CNI spec versions this plugin speaks, and the VERSION answer.

A module of its own that imports nothing, because runtimes (podman) call VERSION before
every ADD and DEL: answering it should cost no more than starting the interpreter. Even
`json` (with `re` and `enum` behind it) costs more than the rest of VERSION, so the
request's `cniVersion` is read by `requested_version` (a string field of a flat JSON
object) and the answer, made of constants, is written as text.

Leaves to others: which commands each version allows and everything else of the
protocol (`cni.spec`).
"""

from __future__ import annotations

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]


def version_answer(requested: object) -> dict[str, object]:
    """The VERSION answer, in the version the runtime asked with (else the latest)."""
    version = requested if requested in SUPPORTED_VERSIONS else LATEST
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def version_answer_text(requested: object) -> str:
    """`version_answer` as the JSON text `json.dumps` would give."""
    answer = version_answer(requested)
    listed = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{answer["cniVersion"]}", "supportedVersions": [{listed}]}}'


def requested_version(raw: bytes) -> str | None:
    """The `cniVersion` string of a VERSION request, or None. Only a value that is one of
    SUPPORTED_VERSIONS matters to the answer, and those contain no escapes, so the first
    `"cniVersion"` key followed by `:` and a quoted string is enough; anything else
    (no such key, another type, malformed input) gives None and the latest version."""
    text = raw.decode("utf-8", "replace")
    at = text.find('"cniVersion"')
    if at < 0:
        return None
    rest = text[at + len('"cniVersion"'):].lstrip()
    if not rest.startswith(":"):
        return None
    rest = rest[1:].lstrip()
    if not rest.startswith('"'):
        return None
    end = rest.find('"', 1)
    return rest[1:end] if end > 0 else None
