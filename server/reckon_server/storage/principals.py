"""Orgs, principals and keys."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reckon_server.clock import utcnow
from reckon_server.domain.principals import NewKey, Principal, Role, hash_key, mint_key
from reckon_server.storage.schema import api_keys, orgs, principals
from reckon_server.storage.sql import insert_ignore


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class PrincipalRecord:
    principal: Principal
    created_at: datetime
    keys: tuple[KeyRecord, ...]


async def authenticate(conn: AsyncConnection, key_hash: str) -> tuple[Principal, str] | None:
    """The principal holding the unrevoked key with this hash, and the key's id; or None."""
    row = (
        await conn.execute(
            sa.select(
                principals.c.org_id,
                principals.c.principal_id,
                principals.c.name,
                principals.c.role,
                api_keys.c.key_id,
            )
            .join(api_keys, api_keys.c.principal_id == principals.c.principal_id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    return Principal(row.org_id, row.principal_id, row.name, Role(row.role)), row.key_id


async def find_org(conn: AsyncConnection, name: str) -> str | None:
    found = await conn.scalar(sa.select(orgs.c.org_id).where(orgs.c.name == name))
    return None if found is None else str(found)


async def ensure_org(conn: AsyncConnection, name: str) -> str:
    """The id of the named org, created if missing (safe against concurrent creators)."""
    existing = await conn.scalar(sa.select(orgs.c.org_id).where(orgs.c.name == name))
    if existing is not None:
        return str(existing)
    org_id = str(uuid.uuid4())
    await conn.execute(
        insert_ignore(conn, orgs).values(org_id=org_id, name=name, created_at=utcnow())
    )
    return str(await conn.scalar(sa.select(orgs.c.org_id).where(orgs.c.name == name)))


async def ensure_principal(conn: AsyncConnection, org_id: str, name: str, role: Role) -> Principal:
    """The named principal of the org, created with `role` if missing."""
    query = sa.select(principals).where(principals.c.org_id == org_id, principals.c.name == name)
    row = (await conn.execute(query)).first()
    if row is None:
        await conn.execute(
            insert_ignore(conn, principals).values(
                principal_id=str(uuid.uuid4()),
                org_id=org_id,
                name=name,
                role=int(role),
                created_at=utcnow(),
            )
        )
        row = (await conn.execute(query)).one()
    return Principal(row.org_id, row.principal_id, row.name, Role(row.role))


async def add_key(conn: AsyncConnection, principal: Principal, key: NewKey | None = None) -> NewKey:
    key = key or mint_key()
    await conn.execute(
        sa.insert(api_keys).values(
            key_id=key.key_id,
            principal_id=principal.principal_id,
            key_hash=key.key_hash,
            prefix=key.prefix,
            created_at=utcnow(),
        )
    )
    return key


async def provision_key(conn: AsyncConnection, principal: Principal, secret: str) -> bool:
    """Attach a caller-chosen key to the principal unless it already exists; True if added."""
    key_hash = hash_key(secret)
    if await conn.scalar(sa.select(api_keys.c.key_id).where(api_keys.c.key_hash == key_hash)):
        return False
    await add_key(
        conn, principal, NewKey("key_" + uuid.uuid4().hex[:16], secret, key_hash, secret[:8])
    )
    return True


async def has_any_principal(conn: AsyncConnection) -> bool:
    return await conn.scalar(sa.select(principals.c.principal_id).limit(1)) is not None


async def revoke_key(conn: AsyncConnection, org_id: str, key_id: str) -> KeyRecord | None:
    """Revoke a key of the org; revoking twice keeps the first time. None if no such key."""
    owned = (
        sa.select(api_keys.c.key_id)
        .join(principals, principals.c.principal_id == api_keys.c.principal_id)
        .where(api_keys.c.key_id == key_id, principals.c.org_id == org_id)
    )
    if await conn.scalar(owned) is None:
        return None
    await conn.execute(
        sa.update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    row = (await conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id))).one()
    return KeyRecord(row.key_id, row.prefix, row.created_at, row.revoked_at)


async def get_principal_record(conn: AsyncConnection, principal: Principal) -> PrincipalRecord:
    rows = (
        await conn.execute(
            sa.select(principals).where(principals.c.principal_id == principal.principal_id)
        )
    ).all()
    return (await _with_keys(conn, rows))[0]


async def list_principals(
    conn: AsyncConnection, org_id: str, *, after_name: str, limit: int
) -> list[PrincipalRecord]:
    rows = (
        await conn.execute(
            sa.select(principals)
            .where(principals.c.org_id == org_id, principals.c.name > after_name)
            .order_by(principals.c.name)
            .limit(limit)
        )
    ).all()
    return await _with_keys(conn, rows)


async def _with_keys(conn: AsyncConnection, rows: Sequence[sa.Row[Any]]) -> list[PrincipalRecord]:
    ids = [r.principal_id for r in rows]
    keys: dict[str, list[KeyRecord]] = {i: [] for i in ids}
    if ids:
        for k in await conn.execute(
            sa.select(api_keys)
            .where(api_keys.c.principal_id.in_(ids))
            .order_by(api_keys.c.created_at, api_keys.c.key_id)
        ):
            keys[k.principal_id].append(KeyRecord(k.key_id, k.prefix, k.created_at, k.revoked_at))
    return [
        PrincipalRecord(
            Principal(r.org_id, r.principal_id, r.name, Role(r.role)),
            r.created_at,
            tuple(keys[r.principal_id]),
        )
        for r in rows
    ]
