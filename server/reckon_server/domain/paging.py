"""Opaque, filter-bound page tokens for keyset pagination."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from reckon_server.errors import FieldViolation, Reason, invalid

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def encode_page_token(position: Any, scope: str) -> str:
    """A token continuing after `position` (a JSON value), valid only for the same `scope`
    (the RPC and its filter)."""
    raw = json.dumps({"p": position, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> Any:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, issued_for = data["p"], data["s"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid(
            Reason.INVALID_REQUEST, [FieldViolation("page_token", "not a token from this API")]
        ) from None
    if issued_for != scope:
        raise invalid(
            Reason.INVALID_REQUEST,
            [FieldViolation("page_token", "was issued for a different request or filter")],
        )
    return position


def page_size(requested: int) -> int:
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise invalid(
            Reason.INVALID_REQUEST, [FieldViolation("page_size", f"must be 0..{MAX_PAGE_SIZE}")]
        )
    return requested or DEFAULT_PAGE_SIZE
