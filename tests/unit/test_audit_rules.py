"""Audit rules: report validation, documents, the hash chain, page tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reckon_server.domain import audit, documents, paging
from reckon_server.errors import ReckonError

EVENT = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("event_id", "has_outcome", "status", "message", "metadata", "reason", "field"),
    [
        ("", True, 1, "", {}, "INVALID_AUDIT_EVENT_ID", "audit_event_id"),
        ("nope", True, 1, "", {}, "INVALID_AUDIT_EVENT_ID", "audit_event_id"),
        ("", False, 0, "", {}, "INVALID_AUDIT_EVENT_ID", "audit_event_id"),
        (EVENT, False, 0, "", {}, "INVALID_OUTCOME", "outcome"),
        (EVENT, True, 0, "", {}, "INVALID_OUTCOME", "outcome.status"),
        (EVENT, True, 4, "", {}, "INVALID_OUTCOME", "outcome.status"),
        (EVENT, True, -1, "", {}, "INVALID_OUTCOME", "outcome.status"),
        (EVENT, True, 1, "x" * 4097, {}, "INVALID_OUTCOME", "outcome.message"),
        (EVENT, True, 1, "", {"a": "x" * 65536}, "INVALID_OUTCOME", "outcome.metadata"),
        (EVENT, True, 1, "", {"a": float("inf")}, "INVALID_OUTCOME", "outcome.metadata"),
    ],
)
def test_invalid_reports(
    event_id: str,
    has_outcome: bool,
    status: int,
    message: str,
    metadata: dict[str, object],
    reason: str,
    field: str,
) -> None:
    with pytest.raises(ReckonError) as raised:
        audit.validate_report(event_id, has_outcome, status, message, metadata)
    assert raised.value.reason == reason
    assert raised.value.violations[0].field == field


def test_valid_report_canonicalises_the_uuid() -> None:
    report = audit.validate_report(EVENT.upper(), True, 3, "ok", {"n": 1})
    assert report.audit_event_id == EVENT
    assert report.status is audit.OutcomeStatus.PARTIAL


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 0),
        ({}, 1),
        ([], 1),
        ({"a": {"b": []}}, 3),
        ([[[[]]]], 4),
        ({"a": 1, "b": [{}]}, 3),
    ],
)
def test_depth(value: object, expected: int) -> None:
    assert documents.depth(value) == expected


def test_deep_documents_are_refused_without_recursion() -> None:
    deep: object = {}
    for _ in range(100_000):
        deep = {"n": deep}
    assert documents.document_problem(deep) == "nested deeper than 16 levels"


def _content(seq: int, **changes: object) -> dict[str, object]:
    base = audit.chained_content(
        audit_event_id=str(uuid.UUID(int=seq)),
        chain_seq=seq,
        agent_name="a",
        action_type="db.migrate",
        metadata={"n": seq},
        data_accessed=[],
        event_id=None,
        status=1,
        denial_reason="",
        policy_name="p",
        policy_version="1",
        rule_name="r",
        conditions=[],
        approval_id=None,
        created_at=datetime(2026, 3, 28, tzinfo=UTC),
    )
    return {**base, **changes}


def test_chain_hash_covers_content_and_predecessor() -> None:
    first = audit.chain_hash("", _content(1))
    assert audit.chain_hash("", _content(1)) == first
    assert audit.chain_hash("", _content(1, action_type="db.drop")) != first
    assert audit.chain_hash("x", _content(1)) != first
    assert len(first) == 64


@given(
    st.one_of(
        st.integers(0, 2**63 - 1),
        st.text(st.characters(blacklist_characters="\x00"), max_size=30),
    ),
    st.text(max_size=20),
)
def test_page_tokens_round_trip_and_stay_bound_to_their_scope(
    position: int | str, scope: str
) -> None:
    token = paging.encode_page_token(position, scope)
    parse = paging.int64_position if isinstance(position, int) else paging.text_position
    assert paging.decode_page_token(token, scope, parse) == position
    with pytest.raises(ReckonError):
        paging.decode_page_token(token, scope + "!", parse)
