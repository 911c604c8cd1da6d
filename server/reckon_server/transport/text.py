"""The one character no database here stores: U+0000.

PostgreSQL refuses NUL in text and in JSONB (as the escape \\u0000), and it does so only once
the request has been accepted: the call would fail as INTERNAL, and a streamed batch would
fail its whole group-commit transaction. Requests are checked for it up front instead, with
the path of every string that holds one, and refused alike on both databases.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from google.protobuf.message import Message

from reckon_server.errors import FieldViolation

NUL = "\x00"
_RULE = "must not contain U+0000 (NUL)"
_MAX_VIOLATIONS = 20
_STRUCT, _VALUE, _LIST = (f"google.protobuf.{name}" for name in ("Struct", "Value", "ListValue"))


def nul_violations(message: Message, path: str = "") -> list[FieldViolation]:
    """A violation for each string of `message`, map and Struct keys included, that holds NUL
    (at most 20). Struct members are named as in JSON: `metadata.note`, `ext.tags[2]`."""
    out: list[FieldViolation] = []
    # A queue, not recursion: a Struct may nest as deep as the parser allows.
    pending: deque[tuple[Any, str]] = deque([(message, path)])
    while pending and len(out) < _MAX_VIOLATIONS:
        node, where = pending.popleft()
        kind = node.DESCRIPTOR.full_name
        if kind == _STRUCT:
            for key, value in node.fields.items():
                member = f"{where}.{_printable(key)}"
                _check(key, member, out)
                pending.append((value, member))
        elif kind == _VALUE:
            which = node.WhichOneof("kind")
            if which == "string_value":
                _check(node.string_value, where, out)
            elif which in ("struct_value", "list_value"):
                pending.append((getattr(node, which), where))
        elif kind == _LIST:
            pending.extend((value, f"{where}[{i}]") for i, value in enumerate(node.values))
        else:
            for field, value in node.ListFields():
                name = f"{where}.{field.name}" if where else field.name
                if field.type == field.TYPE_STRING and field.is_repeated:
                    for i, text in enumerate(value):
                        _check(text, f"{name}[{i}]", out)
                elif field.type == field.TYPE_STRING:
                    _check(value, name, out)
                elif field.type != field.TYPE_MESSAGE:
                    continue
                elif field.message_type.GetOptions().map_entry:
                    for key, item in value.items():
                        member = f"{name}[{_printable(key)}]"
                        _check(key, member, out)
                        if isinstance(item, Message):
                            pending.append((item, member))
                        else:
                            _check(item, member, out)
                elif field.is_repeated:
                    pending.extend((item, f"{name}[{i}]") for i, item in enumerate(value))
                else:
                    pending.append((value, name))
    return out[:_MAX_VIOLATIONS]


def _check(value: Any, where: str, out: list[FieldViolation]) -> None:
    if isinstance(value, str) and NUL in value:
        out.append(FieldViolation(where, _RULE))


def _printable(key: Any) -> str:
    return str(key).replace(NUL, "\\u0000")
