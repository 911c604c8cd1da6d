"""The compliance export's file formats: one row per audit event, intent + decision + outcome."""

from __future__ import annotations

import csv
import json
from typing import IO, Any

from reckon_server.domain.audit import OutcomeStatus
from reckon_server.domain.policy import Decision
from reckon_server.storage.audit import AuditRecord

CSV_COLUMNS = (
    "audit_event_id",
    "created_at",
    "agent_name",
    "action_type",
    "decision",
    "policy_name",
    "policy_version",
    "rule_name",
    "denial_reason",
    "approval_id",
    "approval_state",
    "outcome_status",
    "outcome_message",
    "reported_at",
    "revisions",
    "event_id",
    "data_accessed",
    "metadata",
    "outcome_metadata",
    "conditions_evaluated",
    "chain_hash",
)


def as_document(record: AuditRecord) -> dict[str, Any]:
    event, outcome, approval = record.event, record.outcome, record.approval
    return {
        "audit_event_id": event.audit_event_id,
        "created_at": event.created_at.isoformat(),
        "agent_name": event.agent_name,
        "action_type": event.action_type,
        "metadata": event.metadata,
        "data_accessed": event.data_accessed,
        "event_id": event.event_id,
        "decision": event.status.name,
        "denial_reason": event.denial_reason,
        "policy_name": event.policy_name,
        "policy_version": event.policy_version,
        "rule_name": event.rule_name,
        "conditions_evaluated": event.conditions,
        "approval_id": event.approval_id,
        "approval_state": approval.state.name if approval else None,
        "outcome": None
        if outcome is None
        else {
            "status": OutcomeStatus(outcome.status).name,
            "message": outcome.message,
            "metadata": outcome.metadata,
            "reported_at": outcome.reported_at.isoformat(),
        },
        "revisions": outcome.revision if outcome else 0,
        "chain_hash": event.chain_hash,
    }


class JsonlWriter:
    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, document: dict[str, Any]) -> None:
        self._out.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")


class CsvWriter:
    """Flat columns; nested values (metadata, conditions) as JSON text."""

    def __init__(self, out: IO[str]) -> None:
        self._writer = csv.writer(out)
        self._writer.writerow(CSV_COLUMNS)

    def write(self, document: dict[str, Any]) -> None:
        outcome = document["outcome"] or {}
        row = {
            **document,
            "outcome_status": outcome.get("status"),
            "outcome_message": outcome.get("message"),
            "reported_at": outcome.get("reported_at"),
            "outcome_metadata": outcome.get("metadata"),
        }
        self._writer.writerow(
            json.dumps(row[c], ensure_ascii=False) if isinstance(row[c], dict | list) else row[c]
            for c in CSV_COLUMNS
        )


DECISIONS = {d.name.lower(): int(d) for d in Decision}
"""Decision names accepted by `reckon export --decision`."""
OUTCOMES = {o.name.lower(): int(o) for o in OutcomeStatus}
"""Outcome names accepted by `reckon export --outcome`."""
