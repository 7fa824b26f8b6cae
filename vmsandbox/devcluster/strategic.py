"""Strategic merge patch for the emulated core kinds, which CRD storage does not accept natively.

A real server knows each built-in type's list merge keys from Go struct tags. The few lists of
Nodes, Namespaces, Leases and Events that merge by key are listed in ``MERGE_KEYS``; every other
list is replaced, as a JSON merge patch would. Directives supported: ``null`` deletes a key,
``$patch: replace|delete`` on maps and keyed list items, ``$deleteFromPrimitiveList/<key>``;
``$setElementOrder`` and ``$retainKeys`` are accepted and ignored.
"""

from __future__ import annotations

import copy
from typing import Any

#: Lists of primitives whose patch strategy is "merge" (set union).
PRIMITIVE_MERGE = ""

#: Field path (from the object root) -> merge key, or PRIMITIVE_MERGE.
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): PRIMITIVE_MERGE,
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "volumesAttached"): "name",
    ("spec", "podCIDRs"): PRIMITIVE_MERGE,
}


class StrategicPatchError(ValueError):
    """The patch document is not a strategic merge patch (names the offending field)."""


def apply_strategic_merge(original: dict[str, Any], patch: Any) -> dict[str, Any]:
    """``original`` with ``patch`` applied; neither argument is modified."""
    if not isinstance(patch, dict):
        raise StrategicPatchError("a strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(original), patch, ())
    return merged


def _merge_map(target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise StrategicPatchError(
            f"unsupported $patch directive {directive!r} at {'.'.join(path) or '<root>'}"
        )
    for key, value in patch.items():
        if key == "$patch" or key.startswith(("$setElementOrder/", "$retainKeys")):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(target.get(field), list) and isinstance(value, list):
                target[field] = [v for v in target[field] if v not in value]
            continue
        child = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                target.pop(key, None)
            else:
                current = target.get(key)
                target[key] = _merge_map(current if isinstance(current, dict) else {}, value, child)
        elif isinstance(value, list) and child in MERGE_KEYS:
            current = target.get(key)
            target[key] = _merge_list(current if isinstance(current, list) else [], value, child)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _merge_list(target: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = MERGE_KEYS[path]
    if key == PRIMITIVE_MERGE:
        return target + [v for v in patch if v not in target]
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [item for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    result = list(target)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise StrategicPatchError(f"{'.'.join(path)}: every item needs the merge key {key!r}")
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            result[index] = _merge_map(result[index], item, path)
    return result
