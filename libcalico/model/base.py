"""The resource base class: the `apiVersion`/`kind`/`metadata`/`spec` document shape
every resource shares (what `calicoctl apply -f` reads and `get -o yaml` writes).

Owns: `Resource`, `API_VERSION` and the `JSONDict` alias.

Leaves to others: the resources themselves (`endpoints`, `network`, `policy`), the
validators (`validate`), the kind registry (`resources`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from libcalico.errors import ValidationError
from libcalico.model.validate import check_keys, validate_mapping

API_VERSION = "v1"

JSONDict = dict[str, Any]


class Resource:
    """Base of every resource class: the `calicoctl apply -f` document shape.

    A document is `{"apiVersion": "v1", "kind": KIND, "metadata": {identity},
    "spec": {the rest}}`. Subclasses set `KIND` and implement `to_resource` and
    `from_resource`; `_envelope` and `_unwrap` do the shared part.
    """

    KIND: ClassVar[str] = ""

    def to_resource(self) -> JSONDict:
        raise NotImplementedError

    @classmethod
    def from_resource(cls, doc: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def _envelope(cls, metadata: JSONDict, spec: JSONDict) -> JSONDict:
        return {"apiVersion": API_VERSION, "kind": cls.KIND, "metadata": metadata,
                "spec": spec}

    @classmethod
    def _unwrap(cls, doc: Any, metadata_keys: Iterable[str],
                spec_keys: Iterable[str] | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Check the envelope and return (metadata, spec); `spec_keys` None skips the check."""
        doc = validate_mapping("resource", doc)
        check_keys("resource", doc, ("apiVersion", "kind", "metadata", "spec"))
        if doc.get("apiVersion") != API_VERSION:
            raise ValidationError("apiVersion", doc.get("apiVersion"), f"must be {API_VERSION!r}")
        kind = doc.get("kind")
        if not isinstance(kind, str) or kind.lower() != cls.KIND.lower():
            raise ValidationError("kind", kind, f"must be {cls.KIND!r}")
        # An empty YAML section loads as None.
        metadata = validate_mapping("metadata", {} if doc.get("metadata") is None
                                    else doc["metadata"])
        spec = validate_mapping("spec", {} if doc.get("spec") is None else doc["spec"])
        check_keys(f"{cls.KIND} metadata", metadata, metadata_keys)
        if spec_keys is not None:
            check_keys(f"{cls.KIND} spec", spec, spec_keys)
        return metadata, spec
