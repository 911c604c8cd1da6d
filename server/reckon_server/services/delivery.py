"""DeliveryService use cases: stream ownership and fencing, batch commits, plan events."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from reckon_server.clock import utcnow
from reckon_server.domain.pacing import DeliveryRules
from reckon_server.domain.principals import Principal
from reckon_server.errors import FieldViolation, Reason, ReckonError, invalid, unavailable
from reckon_server.services.governance import GovernanceLedger, plan_topic
from reckon_server.services.notify import Notifier, Subscription
from reckon_server.storage import delivery as store
from reckon_server.storage.database import Database
from reckon_server.storage.governance import AuditScope, StoredCheck, trail_after, trail_end
from reckon_server.storage.group_commit import GroupCommitter
from reckon_server.storage.schema import plans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    max_batch_reports: int = 1000
    window: int = 16
    """Batches one stream may have read but not acknowledged."""
    server_inflight: int = 64
    """Batches all streams together may have read but not committed (besides the one batch
    each stream holds while it waits for room)."""
    max_streams: int = 512
    """Delivery streams open at once on this server; more are refused OVERLOADED."""
    idle_seconds: float = 300.0


class OpenLimit:
    """Calls of one kind open at once on this server, refused OVERLOADED past `limit`."""

    def __init__(self, what: str, limit: int) -> None:
        self._what = what
        self._limit = limit
        self._open = 0

    def enter(self) -> None:
        """Count one more, before the call's first await, so that calls racing one another
        see each other; every `enter` that returns is paired with a `leave`."""
        if self._open >= self._limit:
            raise unavailable(
                Reason.OVERLOADED,
                f"this server has its limit of {self._limit} {self._what} open; retry, or "
                "connect to another replica",
            )
        self._open += 1

    def leave(self) -> None:
        self._open -= 1


@dataclass(frozen=True)
class PlanChange:
    """One row of a plan's history, for WatchPlan."""

    kind: str
    """"check", "commitment" or "delivery"."""
    row_id: str
    created_at: datetime
    findings: list[dict[str, Any]]


_STREAM_TOPIC = "stream:"
"""Topics `stream:<org>:<stream id>`, published with the generation of each open."""


class DeliveryLedger:
    def __init__(
        self,
        database: Database,
        committer: GroupCommitter,
        notifier: Notifier,
        governance: GovernanceLedger,
        *,
        terms_of: Callable[[dict[str, Any]], Any],
        pacing_threshold_pct: int,
        limits: StreamLimits,
    ) -> None:
        self._db = database
        self._committer = committer
        self._notifier = notifier
        self.governance = governance
        self.limits = limits
        self._op = store.ApplyDeliveryBatches(
            functools.partial(_stream_rules, threshold_pct=pacing_threshold_pct), terms_of
        )
        self._slots = asyncio.Semaphore(limits.server_inflight)
        self._streams = OpenLimit("delivery streams", limits.max_streams)
        self.uncommitted_batches = 0
        """Batches streams have read and not yet seen committed or failed: what the limits
        bound."""
        self._owners: dict[tuple[str, str], tuple[int, asyncio.Event]] = {}
        self._owners_recheck: asyncio.Task[None] | None = None
        self.draining = asyncio.Event()
        notifier.subscribe(self._fence_if_taken_over)

    async def open(self, principal: Principal, stream_id: str) -> tuple[int, int, asyncio.Event]:
        """Take over a stream. Returns its generation, next_seq, and an event that is set when
        a newer connection, on any replica, fences this one. Every open that returns is paired
        with a `release`."""
        self._streams.enter()
        try:
            async with self._db.write() as conn:
                opened = await store.open_stream(
                    conn, principal.org_id, principal.principal_id, stream_id, utcnow()
                )
            if opened is None:
                raise invalid(
                    Reason.INVALID_REQUEST,
                    [FieldViolation("open.stream_id", "is used by another producer")],
                )
        except BaseException:
            self._streams.leave()
            raise
        generation, next_seq = opened
        key = (principal.org_id, stream_id)
        previous = self._owners.get(key)
        fenced = asyncio.Event()
        if previous is not None and previous[0] > generation:
            # Concurrent opens come back in any order: a newer one got here first.
            fenced.set()
        else:
            if previous is not None:
                previous[1].set()
            self._owners[key] = (generation, fenced)
        # Older connections on other replicas hear of it now, not at their next batch (whose
        # commit checks the generation either way).
        topic = f"{_STREAM_TOPIC}{principal.org_id}:{stream_id}"
        try:
            await self._notifier.publish(topic, str(generation))
        except BaseException:
            # Cancelled meanwhile: the caller never gets the open to release.
            self.release(principal, stream_id, generation)
            raise
        return generation, next_seq, fenced

    def _fence_if_taken_over(self, topic: str, payload: str) -> None:
        if topic == "*":
            # The bus was deaf for a while: opens on other replicas may have gone unheard.
            if self._owners and (self._owners_recheck is None or self._owners_recheck.done()):
                self._owners_recheck = asyncio.create_task(self._fence_unheard_takeovers())
            return
        if not topic.startswith(_STREAM_TOPIC):
            return
        org_id, _, stream_id = topic.removeprefix(_STREAM_TOPIC).partition(":")
        owner = self._owners.get((org_id, stream_id))
        if owner is not None and owner[0] < int(payload):
            owner[1].set()

    async def _fence_unheard_takeovers(self) -> None:
        owners = dict(self._owners)
        try:
            async with self._db.read() as conn:
                stored = await store.stream_generations(conn, list(owners))
        except Exception:
            # Each stream's next commit checks its generation either way.
            log.warning("could not recheck the owners of open streams", exc_info=True)
            return
        for key, (generation, fenced) in owners.items():
            if stored.get(key, generation) > generation:
                fenced.set()

    def release(self, principal: Principal, stream_id: str, generation: int) -> None:
        self._streams.leave()
        key = (principal.org_id, stream_id)
        if self._owners.get(key, (None,))[0] == generation:
            del self._owners[key]

    async def commit(
        self, batch: store.StreamBatch, admitted: asyncio.Future[None]
    ) -> store.BatchApplied:
        """Commit one batch (group-committed with everything else in flight) once the
        server has room for it, which resolves `admitted`: its stream reads no further
        batch until then."""
        self.uncommitted_batches += 1
        try:
            async with self._slots:
                admitted.set_result(None)
                result = await self._committer.submit(self._op, batch, weight=len(batch.reports))
        finally:
            self.uncommitted_batches -= 1
        for plan_id in result.touched_plans:
            await self._notifier.publish(plan_topic(batch.org_id, plan_id), "delivery")
        return result

    def drain(self) -> None:
        """Have streams ack what they committed and end, and watchers end, with
        `draining_error`: the server is shutting down."""
        self.draining.set()
        self._notifier.wake_all()

    def draining_error(self) -> ReckonError:
        return unavailable(
            Reason.DRAINING,
            "the server is shutting down; reconnect and resume",
            retry_after_seconds=1.0,
        )

    async def trail_end(self, principal: Principal, plan_id: str) -> tuple[datetime, str]:
        """A trail position after every check and outcome of the plan committed so far."""
        async with self._db.read() as conn:
            return await trail_end(conn, principal.org_id, plan_id), ""

    async def changes_since(
        self, principal: Principal, plan_id: str, after: tuple[datetime, str], limit: int
    ) -> tuple[list[PlanChange], tuple[int, int]]:
        """Checks and outcomes of the plan after the (created_at, id) watermark, oldest
        first, and the plan's (status, version) now."""
        async with self._db.read() as conn:
            entries = await trail_after(
                conn, principal.org_id, plan_id, AuditScope(), after=after, limit=limit + 1
            )
            plan = (
                await conn.execute(
                    sa.select(plans.c.status, plans.c.version).where(
                        plans.c.org_id == principal.org_id, plans.c.plan_id == plan_id
                    )
                )
            ).one()
        changes = [
            PlanChange(_kind(entry), entry_id, at, (entry.response or {}).get("findings", []))
            for at, entry_id, entry in entries
        ]
        return changes, (int(plan.status), int(plan.version))

    def plan_changes(
        self, principal: Principal, plan_id: str
    ) -> contextlib.AbstractContextManager[Subscription]:
        return self._notifier.watching(plan_topic(principal.org_id, plan_id))


def _kind(entry: StoredCheck | Any) -> str:
    if isinstance(entry, StoredCheck):
        return "check"
    return "delivery" if entry.outcome == 3 else "commitment"


def _stream_rules(facts: store.CampaignFacts, *, threshold_pct: int) -> store.ReportRules:
    """A campaign's findings rules for streamed reports; module-level so that the SQLite
    writer process can run it."""
    return DeliveryRules(
        committed_micros=facts.committed_micros,
        settled=facts.settled,
        flight_start=facts.flight_start or facts.plan_flight_start,
        flight_end=facts.flight_end or facts.plan_flight_end,
        currency=facts.currency,
        threshold_pct=threshold_pct,
    ).findings
