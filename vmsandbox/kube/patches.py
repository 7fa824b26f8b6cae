"""Compare-and-swap writes as JSON patches: each write tests what it was computed from (the
object's uid, the field it replaces) and the API server refuses it, as a conflict, when that
changed meanwhile. Guarding on the field rather than the resourceVersion keeps an unrelated
write by another component (a status update beside a finalizer edit) from costing a retry."""

from __future__ import annotations

from typing import Any

Op = dict[str, Any]


def pointer(*parts: str) -> str:
    """A JSON pointer to ``parts`` (``/`` and ``~`` in a key escaped)."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def expect(path: str, value: Any) -> Op:
    """A ``test`` op: the write fails unless ``path`` holds ``value``."""
    return {"op": "test", "path": path, "value": value}


def same_object(meta: dict[str, Any]) -> Op:
    """Refuse the write if the name now belongs to another object (deleted and re-created)."""
    return expect("/metadata/uid", meta["uid"])


def same_version(meta: dict[str, Any]) -> Op:
    return expect("/metadata/resourceVersion", meta["resourceVersion"])


def replace_if_unchanged(raw: dict[str, Any], path: str, old: Any, new: Any) -> list[Op]:
    """Set ``path`` to ``new`` if, and only if, it still holds ``old`` (absent: None)."""
    return [same_object(raw["metadata"]), expect(path, old), {"op": "add", "path": path, "value": new}]


def set_finalizers(raw: dict[str, Any], keep: list[str]) -> list[Op]:
    """The whole finalizer list replaced by ``keep``, guarded by the list it was computed from."""
    return replace_if_unchanged(raw, "/metadata/finalizers", raw["metadata"].get("finalizers"), keep)


def edit_finalizer(meta: dict[str, Any], finalizer: str, present: bool) -> list[Op]:
    """Add or remove one finalizer, guarded by the list it was computed from (null while there
    is none); adds append, so another component's finalizer added meanwhile still fails the
    guard rather than being overwritten."""
    listed = meta.get("finalizers")
    guard = expect("/metadata/finalizers", listed)
    if present and listed is None:
        return [guard, {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]
    if present:
        return [guard, {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}]
    return [guard, {"op": "remove", "path": f"/metadata/finalizers/{list(listed or []).index(finalizer)}"}]
