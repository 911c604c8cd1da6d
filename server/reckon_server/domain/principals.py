"""Principals and API keys: who is calling, and how keys are minted and recognised."""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

from reckon_server.errors import FieldViolation, Reason, invalid

KEY_PREFIX = "rk_"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class Role(enum.IntEnum):
    """Matches `reckon.v1.Role` numbering."""

    AGENT = 1
    ADMIN = 2


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a named agent or admin inside an org."""

    org_id: str
    principal_id: str
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class NewKey:
    """A freshly minted key: the secret is shown once, only the hash is stored."""

    key_id: str
    secret: str
    key_hash: str
    prefix: str


def mint_key() -> NewKey:
    """256 bits of entropy, prefixed `rk_` so leaked keys are easy to scan for."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(
        key_id="key_" + secrets.token_hex(8),
        secret=secret,
        key_hash=hash_key(secret),
        prefix=secret[:8],
    )


def hash_key(secret: str) -> str:
    """Keys are high-entropy random strings, so a plain SHA-256 is enough (no salt/stretch)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_name(name: str, field: str = "name") -> str:
    if not _NAME.match(name):
        raise invalid(
            Reason.INVALID_REQUEST,
            [FieldViolation(field, "must be 1..128 characters of letters, digits, '.', '_', '-'")],
        )
    return name
