"""Opaque, filter-bound page tokens for keyset pagination."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, TypeVar

from reckon_server.errors import FieldViolation, Reason, invalid

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
MAX_TOKEN_LENGTH = 2048
"""Far above any token issued: positions hold a few ids of at most MAX_TEXT_POSITION."""
MAX_TEXT_POSITION = 255

T = TypeVar("T")


def encode_page_token(position: Any, scope: str) -> str:
    """A token continuing after `position` (a JSON value), valid only for the same `scope`
    (the RPC and its filter)."""
    raw = json.dumps({"p": position, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str, parse: Callable[[Any], T]) -> T:
    """The position in `token`, turned back into its value by `parse`, which raises ValueError
    or TypeError for a position it did not come from. Tokens travel through clients, so
    anything may come back."""
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("longer than any token issued")
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, issued_for = data["p"], data["s"]
        if issued_for == scope:
            return parse(position)
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
        raise invalid(
            Reason.INVALID_REQUEST, [FieldViolation("page_token", "not a token from this API")]
        ) from None
    raise invalid(
        Reason.INVALID_REQUEST,
        [FieldViolation("page_token", "was issued for a different request or filter")],
    )


def int64_position(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValueError("not a stored position")
    return value


def text_position(value: Any) -> str:
    """A stored name or id: text that fits a column, which never holds NUL."""
    if not isinstance(value, str) or len(value) > MAX_TEXT_POSITION or "\x00" in value:
        raise ValueError("not a stored position")
    return value


def page_size(requested: int) -> int:
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise invalid(
            Reason.INVALID_REQUEST, [FieldViolation("page_size", f"must be 0..{MAX_PAGE_SIZE}")]
        )
    return requested or DEFAULT_PAGE_SIZE
