"""AdminService: principals, keys, approvals, plan status, chain verification."""

from __future__ import annotations

from typing import Any

from grpc import aio

from reckon.v1 import admin_service_pb2 as pb
from reckon.v1 import admin_service_pb2_grpc
from reckon_server.domain.paging import (
    decode_page_token,
    encode_page_token,
    page_size,
    text_position,
)
from reckon_server.domain.principals import Role, validate_name
from reckon_server.errors import FieldViolation, Reason, invalid, not_found
from reckon_server.services.audit import AuditLedger
from reckon_server.services.governance import GovernanceLedger
from reckon_server.services.keys import Authenticator
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database
from reckon_server.storage.principals import KeyRecord
from reckon_server.transport.codec import to_timestamp
from reckon_server.transport.context import current_admin
from reckon_server.transport.governance_codec import encode_plan_state, terms_from_document
from reckon_server.transport.servicers.audit import encode_approval

Context = aio.ServicerContext[Any, Any]
_LIST_AGENTS = "agents"


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        database: Database,
        audit: AuditLedger,
        governance: GovernanceLedger,
        authenticator: Authenticator,
    ) -> None:
        self._db = database
        self._audit = audit
        self._governance = governance
        self._authenticator = authenticator

    async def RegisterAgent(
        self, request: pb.RegisterAgentRequest, context: Context
    ) -> pb.RegisterAgentResponse:
        admin = current_admin("RegisterAgent")
        name = validate_name(request.name)
        async with self._db.write() as conn:
            agent = await principal_store.ensure_principal(conn, admin.org_id, name, Role.AGENT)
            if agent.role is not Role.AGENT:
                raise invalid(
                    Reason.INVALID_REQUEST,
                    [FieldViolation("name", f"{name!r} is an admin, not an agent")],
                )
            key = await principal_store.add_key(conn, agent)
            record = await principal_store.get_principal_record(conn, agent)
        return pb.RegisterAgentResponse(agent=_agent(record), api_key=key.secret, key_id=key.key_id)

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        admin = current_admin("ListAgents")
        limit = page_size(request.page_size)
        after = (
            decode_page_token(request.page_token, _LIST_AGENTS, text_position)
            if request.page_token
            else ""
        )
        async with self._db.read() as conn:
            records = await principal_store.list_principals(
                conn, admin.org_id, after_name=after, limit=limit + 1
            )
        token = ""
        if len(records) > limit:
            token = encode_page_token(records[limit - 1].principal.name, _LIST_AGENTS)
        return pb.ListAgentsResponse(
            agents=[_agent(r) for r in records[:limit]], next_page_token=token
        )

    async def RevokeKey(
        self, request: pb.RevokeKeyRequest, context: Context
    ) -> pb.RevokeKeyResponse:
        admin = current_admin("RevokeKey")
        async with self._db.write() as conn:
            record = await principal_store.revoke_key(conn, admin.org_id, request.key_id)
        if record is None:
            raise not_found(Reason.KEY_NOT_FOUND, "api key", request.key_id, "key_id")
        await self._authenticator.revoked(record.key_id)
        return pb.RevokeKeyResponse(key=_key(record))

    async def ResolveApproval(
        self, request: pb.ResolveApprovalRequest, context: Context
    ) -> pb.ResolveApprovalResponse:
        admin = current_admin("ResolveApproval")
        violations = []
        if request.decision not in (pb.APPROVAL_DECISION_APPROVE, pb.APPROVAL_DECISION_DENY):
            violations.append(FieldViolation("decision", "required: APPROVE or DENY"))
        if len(request.note.encode()) > 4096:
            violations.append(FieldViolation("note", "at most 4096 bytes"))
        if not request.approval_id:
            violations.append(FieldViolation("approval_id", "required"))
        if violations:
            raise invalid(Reason.INVALID_REQUEST, violations)
        approval = await self._audit.resolve_approval(
            admin,
            request.approval_id,
            request.decision == pb.APPROVAL_DECISION_APPROVE,
            request.note,
        )
        return pb.ResolveApprovalResponse(approval=encode_approval(approval))

    async def SetPlanStatus(
        self, request: pb.SetPlanStatusRequest, context: Context
    ) -> pb.SetPlanStatusResponse:
        admin = current_admin("SetPlanStatus")
        view = await self._governance.set_status(
            admin, request.plan_id, int(request.status), request.reason
        )
        terms = terms_from_document(view.plan.document)
        return pb.SetPlanStatusResponse(state=encode_plan_state(view, terms))

    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, context: Context
    ) -> pb.VerifyAuditChainResponse:
        admin = current_admin("VerifyAuditChain")
        verdict = await self._audit.verify_chain(admin.org_id)
        return pb.VerifyAuditChainResponse(
            intact=verdict.intact,
            events_checked=verdict.events_checked,
            first_broken_event_id=verdict.first_broken_event_id,
            detail=verdict.detail,
        )


def _key(record: KeyRecord) -> pb.ApiKey:
    return pb.ApiKey(
        key_id=record.key_id,
        prefix=record.prefix,
        created_at=to_timestamp(record.created_at),
        revoked_at=to_timestamp(record.revoked_at),
    )


def _agent(record: principal_store.PrincipalRecord) -> pb.Agent:
    return pb.Agent(
        name=record.principal.name,
        role=int(record.principal.role),  # type: ignore[arg-type]
        created_at=to_timestamp(record.created_at),
        keys=[_key(k) for k in record.keys],
    )
