"""Authentication with a principal cache.

Every call is authenticated, so the key lookup is cached. A revocation evicts the key at once
on every replica (the change bus carries it); `ttl` bounds how long a key revoked outside the
server (the `reckon keys revoke` command) keeps working here. Streaming calls outlive their
authentication, so `until_revoked` tells them when their key stops being valid.
"""

from __future__ import annotations

import asyncio
import logging
import time

from reckon_server.domain.principals import Principal, hash_key
from reckon_server.services.notify import Notifier
from reckon_server.storage import principals as store
from reckon_server.storage.database import Database

KEY_REVOKED = "key_revoked"
_CLOSE_SECONDS = 10.0

log = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, database: Database, notifier: Notifier, *, ttl: float) -> None:
        self._db = database
        self._notifier = notifier
        self._ttl = ttl
        self._cache: dict[str, tuple[Principal, str, float]] = {}
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._under_way: set[asyncio.Future[Principal | None]] = set()
        """Every lookup not done yet, including those a revocation took out of `_lookups`."""
        self._revocations = 0
        notifier.subscribe(self._on_change)

    async def __call__(self, secret: str) -> Principal | None:
        key_hash = hash_key(secret)
        cached = self._cache.get(key_hash)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0]
        # When an entry expires, every caller using the key misses at once; they share one
        # lookup instead of each reading the database.
        lookup = self._lookups.get(key_hash)
        if lookup is None:
            lookup = self._lookups[key_hash] = asyncio.ensure_future(self._lookup(key_hash))
            self._under_way.add(lookup)
            lookup.add_done_callback(lambda done: self._forget(key_hash, done))
        return await asyncio.shield(lookup)

    async def close(self) -> None:
        """Let the lookups under way finish, once no call is left to start one.

        A lookup outlives the callers that share it: one still under way once storage is
        released would open a connection that nothing then closes. One that storage does not
        answer in time is cancelled.
        """
        if self._under_way:
            _, late = await asyncio.wait(self._under_way, timeout=_CLOSE_SECONDS)
            for lookup in late:
                lookup.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _forget(self, key_hash: str, lookup: asyncio.Future[Principal | None]) -> None:
        self._under_way.discard(lookup)
        if self._lookups.get(key_hash) is lookup:
            del self._lookups[key_hash]
        if not lookup.cancelled():
            # Retrieved here, so a failed lookup whose callers all gave up is not logged as lost.
            lookup.exception()

    async def _lookup(self, key_hash: str) -> Principal | None:
        revocations = self._revocations
        async with self._db.read() as conn:
            found = await store.authenticate(conn, key_hash)
        if found is None:
            self._cache.pop(key_hash, None)
            return None
        principal, key_id = found
        # A revocation that arrived during the read may not be in what it returned.
        if revocations == self._revocations:
            self._cache[key_hash] = (principal, key_id, time.monotonic() + self._ttl)
        return principal

    async def until_revoked(self, secret: str) -> None:
        """Return once the key no longer authenticates: at once after a revocation published
        on any replica, within twice `ttl` after one made outside the server."""
        with self._notifier.watching(KEY_REVOKED) as revocations:
            while True:
                try:
                    if await self(secret) is None:
                        return
                except Exception:
                    # Storage that cannot answer has not revoked anything: ending every open
                    # stream over an outage would be worse than asking again. The outage is
                    # reported by the calls that need storage; one line per open stream every
                    # `ttl` would bury it.
                    log.debug("could not recheck the key of an open call", exc_info=True)
                await revocations.wait(self._ttl)

    async def revoked(self, key_id: str) -> None:
        await self._notifier.publish(KEY_REVOKED, key_id)

    def _on_change(self, topic: str, payload: str) -> None:
        if topic in ("*", KEY_REVOKED):
            self._revocations += 1
            self._lookups.clear()
        if topic == "*":
            self._cache.clear()
        elif topic == KEY_REVOKED:
            for key_hash, (_, key_id, _) in list(self._cache.items()):
                if key_id == payload:
                    del self._cache[key_hash]
