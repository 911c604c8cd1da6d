"""AuditService and approval use cases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from reckon_server.clock import utcnow
from reckon_server.domain import policy
from reckon_server.domain.audit import (
    ActionRequest,
    ApprovalState,
    OutcomeReport,
    chain_hash,
    forbidden,
)
from reckon_server.domain.principals import Principal
from reckon_server.errors import Reason, ReckonError, not_found, unavailable
from reckon_server.services.notify import Notifier
from reckon_server.services.policies import PolicyStore
from reckon_server.storage import audit as store
from reckon_server.storage.database import Database
from reckon_server.storage.group_commit import GroupCommitter

# Waiters re-read approvals at least this often, so changes made on another replica (and
# timeouts) are seen without in-process notification.
APPROVAL_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Executed:
    record: store.AuditRecord
    replayed: bool


@dataclass(frozen=True)
class ChainVerdict:
    intact: bool
    events_checked: int
    first_broken_event_id: str = ""
    detail: str = ""


class AuditLedger:
    def __init__(
        self,
        database: Database,
        committer: GroupCommitter,
        policies: PolicyStore,
        notifier: Notifier,
    ) -> None:
        self._db = database
        self._committer = committer
        self._policies = policies
        self._notifier = notifier
        self._report = store.ReportOutcomes()

    async def execute(self, principal: Principal, action: ActionRequest) -> Executed:
        # A retry is answered from a plain read, without queueing for the org's chain lock;
        # append_event checks again under the lock for retries that race the original.
        if action.event_id is not None:
            async with self._db.read() as conn:
                earlier = await store.find_by_event_id(
                    conn, principal.principal_id, action.event_id
                )
                if earlier is not None:
                    return Executed(
                        await store.get_record(conn, principal.org_id, earlier.audit_event_id), True
                    )
        evaluation = policy.evaluate(self._policies.current, action.action_type, action.metadata)
        async with self._db.write() as conn:
            event, replayed = await store.append_event(
                conn, principal, action, evaluation, utcnow()
            )
            record = await store.get_record(conn, principal.org_id, event.audit_event_id)
        return Executed(record, replayed)

    async def report(self, principal: Principal, report: OutcomeReport) -> store.ReportResult:
        try:
            return await self._committer.submit(
                self._report, store.ReportItem(principal, report, utcnow())
            )
        except ReckonError as err:
            if err.reason in (Reason.STORAGE_UNAVAILABLE, Reason.DRAINING):
                raise unavailable(
                    Reason.REPORT_FAILED,
                    "the outcome could not be stored; nothing was written",
                    err.retry_after_seconds or 1.0,
                ) from err
            raise

    async def get(
        self, principal: Principal, audit_event_id: str, *, with_history: bool
    ) -> tuple[store.AuditRecord, list[store.StoredOutcome]]:
        async with self._db.read() as conn:
            record = await store.get_record(conn, principal.org_id, audit_event_id)
            _require_visible(principal, record.event)
            revisions = await store.history(conn, audit_event_id) if with_history else []
        return record, revisions

    def scope(self, principal: Principal, where: store.EventFilter) -> store.EventFilter:
        """Agents see only their own events; naming another agent needs an admin key."""
        if principal.is_admin:
            return where
        if where.agent_name and where.agent_name != principal.name:
            raise ReckonError(
                Reason.ADMIN_REQUIRED,
                "reading another agent's events needs an admin key",
                {"rpc": "ListAuditEvents"},
            )
        return store.EventFilter(**{**where.__dict__, "principal_id": principal.principal_id})

    async def list(
        self, principal: Principal, where: store.EventFilter, before_seq: int | None, limit: int
    ) -> list[store.AuditRecord]:
        async with self._db.read() as conn:
            return await store.list_records(
                conn,
                principal.org_id,
                self.scope(principal, where),
                before_seq=before_seq,
                limit=limit,
            )

    def export(
        self, principal: Principal, where: store.EventFilter
    ) -> AsyncIterator[store.AuditRecord]:
        return store.stream_records(self._db.read, principal.org_id, self.scope(principal, where))

    async def approval(self, principal: Principal, approval_id: str) -> store.StoredApproval:
        """The approval's current state, timing it out first if its deadline passed."""
        now = utcnow()
        async with self._db.read() as conn:
            found = await store.get_approval(conn, principal.org_id, approval_id)
        if found is None or not (
            principal.is_admin or found.principal_id == principal.principal_id
        ):
            raise not_found(Reason.APPROVAL_NOT_FOUND, "approval", approval_id, "approval_id")
        if found.state is ApprovalState.PENDING and found.timeout_at <= now:
            async with self._db.write() as conn:
                await store.expire_approval(conn, approval_id, now)
                found = await store.get_approval(conn, principal.org_id, approval_id)
            await self._notifier.publish(f"approval:{approval_id}")
            assert found is not None
        return found

    async def watch_approval(
        self, principal: Principal, approval_id: str
    ) -> AsyncIterator[store.StoredApproval]:
        last: tuple[ApprovalState, datetime | None] | None = None
        # Subscribed before the first read: a resolution between a read and the wait after
        # it still wakes the wait.
        with self._notifier.watching(f"approval:{approval_id}") as changed:
            while True:
                current = await self.approval(principal, approval_id)
                if (current.state, current.resolved_at) != last:
                    last = (current.state, current.resolved_at)
                    yield current
                if current.state is not ApprovalState.PENDING:
                    return
                until_timeout = (current.timeout_at - utcnow()).total_seconds()
                await changed.wait(max(0.0, min(APPROVAL_POLL_SECONDS, until_timeout)))

    async def resolve_approval(
        self, admin: Principal, approval_id: str, approve: bool, note: str
    ) -> store.StoredApproval:
        current = await self.approval(admin, approval_id)
        if current.state is ApprovalState.PENDING:
            state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
            async with self._db.write() as conn:
                resolved = await store.resolve_approval(
                    conn, approval_id, state=state, reviewer=admin.name, note=note, now=utcnow()
                )
            if resolved:
                await self._notifier.publish(f"approval:{approval_id}")
                return await self.approval(admin, approval_id)
            current = await self.approval(admin, approval_id)
        raise ReckonError(
            Reason.APPROVAL_ALREADY_RESOLVED,
            f"approval is already {current.state.name}",
            {"approval_id": approval_id, "state": current.state.name},
            precondition=("APPROVAL_STATE", approval_id),
        )

    async def verify_chain(self, org_id: str) -> ChainVerdict:
        return await verify_chain(self._db, org_id)


async def verify_chain(database: Database, org_id: str) -> ChainVerdict:
    """Walk the org's events in chain order; report the first that is missing or altered."""
    previous, checked = "", 0
    async for event in store.chain(database.read, org_id):
        checked += 1
        if event.chain_seq != checked:
            return ChainVerdict(
                False,
                checked,
                event.audit_event_id,
                f"expected chain position {checked}, found {event.chain_seq} (an event is missing)",
            )
        if chain_hash(previous, event.content()) != event.chain_hash:
            return ChainVerdict(
                False,
                checked,
                event.audit_event_id,
                "stored hash does not match the event's content",
            )
        previous = event.chain_hash
    return ChainVerdict(True, checked)


def _require_visible(principal: Principal, event: store.StoredEvent) -> None:
    if not principal.is_admin and event.principal_id != principal.principal_id:
        raise forbidden(event.audit_event_id)
