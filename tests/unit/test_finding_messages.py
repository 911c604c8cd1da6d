"""A stored finding's details become the same Struct however they are filled."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from reckon_server.transport.governance_codec import encode_stored_finding

DETAILS: dict[str, Any] = {
    "text": "2026-03-25T00:02:00Z",
    "unicode": "dépense ✓",
    "count": 809,
    "huge": 2**63 + 1,
    "negative": -77,
    "ratio": 0.125,
    "flag": True,
    "off": False,
    "nothing": None,
    "nested": {"a": [1, "two", None, {"b": False}], "empty": {}},
    "list": [],
}


def test_details_are_the_struct_that_struct_update_makes() -> None:
    expected = struct_pb2.Struct()
    expected.update(DETAILS)
    finding = encode_stored_finding(
        {"category_id": "budget_authority", "severity": 2, "explanation": "x", "details": DETAILS}
    )
    assert finding.details == expected


def test_a_finding_without_details_carries_an_empty_object() -> None:
    finding = encode_stored_finding({"category_id": "c", "severity": 1, "explanation": "x"})
    assert finding.HasField("details")
    assert not finding.details.fields
