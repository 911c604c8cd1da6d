"""The error edge: every reason has a code, and details stay under the trailer budget."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from reckon.v1 import error_reason_pb2
from reckon_server.errors import FieldViolation, Reason, ReckonError, invalid, unavailable
from reckon_server.transport.status import MAX_DETAILS_BYTES, code_of, rich_status


def test_reasons_mirror_the_contract_enum() -> None:
    contract = {
        name.removeprefix("ERROR_REASON_")
        for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert {r.value for r in Reason} == contract


def test_every_reason_maps_to_a_code() -> None:
    for reason in Reason:
        assert isinstance(code_of(reason), grpc.StatusCode)


def test_invalid_argument_carries_every_violation() -> None:
    status = rich_status(
        invalid(
            Reason.INVALID_REQUEST,
            [
                FieldViolation("plans[0].budget.total_micros", "must be >= 0"),
                FieldViolation("plans[0].flight.end", "must be after start"),
            ],
        )
    )
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [
        "plans[0].budget.total_micros",
        "plans[0].flight.end",
    ]
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_huge_errors_are_trimmed_below_the_trailer_budget() -> None:
    violations = [FieldViolation(f"items[{i}]." + "x" * 300, "y" * 300) for i in range(500)]
    err = invalid(Reason.INVALID_REQUEST, violations)
    status = rich_status(err)
    assert status.ByteSize() <= MAX_DETAILS_BYTES
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "INVALID_REQUEST"


def test_transient_errors_carry_retry_info_and_recovery() -> None:
    status = rich_status(unavailable(Reason.REPORT_FAILED, "db down", retry_after_seconds=1.5))
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.metadata["recovery"] == "transient"
    assert status.details[-1].Unpack(retry)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)


def test_not_found_hides_nothing_but_the_name() -> None:
    status = rich_status(ReckonError(Reason.PLAN_NOT_FOUND, "plan 'p' not found", {"plan_id": "p"}))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
