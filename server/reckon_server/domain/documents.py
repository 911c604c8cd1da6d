"""Free-form JSON documents (metadata, details, ext): canonical form and size/depth limits."""

from __future__ import annotations

import json
from typing import Any

MAX_DOCUMENT_BYTES = 64 * 1024
MAX_DOCUMENT_DEPTH = 16


# One encoder for every call: json.dumps with options builds a new one each time. Documents
# come from protobuf or JSON, which cannot hold cycles, so the encoder need not track them.
_CANONICAL = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    check_circular=False,
)


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): equal documents hash equally."""
    return _CANONICAL.encode(value)


def depth(value: Any) -> int:
    """Nesting depth: a scalar is 0, `{}` or `[]` is 1, `{"a": {}}` is 2."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            level += 1
            stack.extend((child, level) for child in node.values())
        elif isinstance(node, list):
            level += 1
            stack.extend((child, level) for child in node)
        deepest = max(deepest, level)
    return deepest


def document_problem(
    value: Any, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_depth: int = MAX_DOCUMENT_DEPTH
) -> str | None:
    """Why the document is unacceptable, or None. Depth is checked first so that a
    pathologically deep value is never serialised."""
    if not value:
        return None
    if depth(value) > max_depth:
        return f"nested deeper than {max_depth} levels"
    try:
        size = len(canonical_json(value).encode())
    except ValueError:
        return "contains a non-finite number"
    if size > max_bytes:
        return f"larger than {max_bytes} bytes as JSON ({size})"
    return None
