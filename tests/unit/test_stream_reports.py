"""How a streamed report is read: what each field's presence and value become."""

from __future__ import annotations

import pytest

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server import native
from reckon_server.errors import ReckonError
from reckon_server.storage.delivery import StreamReport
from reckon_server.transport.stream_reports import batch_reports, read_report

HOUR = 3_600_000_000


def delivery(start_s: int, end_s: int, start_nanos: int = 0, **figures: int) -> pb.PlanDelivery:
    period = types_pb2.ReportingPeriod()
    period.start.seconds, period.start.nanos, period.end.seconds = start_s, start_nanos, end_s
    return pb.PlanDelivery(
        plan_id="plan",
        delivery=types_pb2.DeliveryReport(
            media_buy_id="mb", reporting_period=period, spend_micros=5, **figures
        ),
    )


@pytest.mark.parametrize(
    ("item", "start_us", "end_us", "cpm"),
    [
        (delivery(3_600, 7_200, impressions=1), HOUR, 2 * HOUR, None),
        (delivery(3_600, 7_200, cpm_micros=0), HOUR, 2 * HOUR, 0),
        (delivery(3_600, 7_200, cpm_micros=7), HOUR, 2 * HOUR, 7),
        (delivery(0, 3_600), 0, HOUR, None),
        (delivery(0, 3_600, start_nanos=1_500), 1, HOUR, None),
        (delivery(-3_600, 0, cpm_micros=0), -HOUR, 0, 0),
    ],
)
def test_a_report_keeps_its_times_and_tells_a_cpm_of_zero_from_none(
    item: pb.PlanDelivery, start_us: int, end_us: int, cpm: int | None
) -> None:
    """The epoch is a time like any other, and a CPM sent as 0 is 0, not absent."""
    read = read_report(item, 0, {})
    assert isinstance(read, StreamReport)
    assert (read.start_us, read.end_us, read.cpm_micros) == (start_us, end_us, cpm)
    assert read.viewability_rate is None
    assert read.completion_rate is None


def test_a_report_without_both_times_of_its_period_is_refused() -> None:
    no_period = pb.PlanDelivery(
        plan_id="plan", delivery=types_pb2.DeliveryReport(media_buy_id="mb", spend_micros=5)
    )
    no_start, no_end = delivery(0, 3_600), delivery(3_600, 7_200)
    no_start.delivery.reporting_period.ClearField("start")
    no_end.delivery.reporting_period.ClearField("end")
    for item in (no_period, no_start, no_end):
        read = read_report(item, 3, {})
        assert isinstance(read, ReckonError)
        assert all(
            v.field.startswith("reports[3].delivery.reporting_period") for v in read.violations
        )


def test_the_reports_of_a_batch_share_their_equal_names() -> None:
    """One object per distinct name in a batch, which pickle then writes once."""
    batch = pb.DeliveryBatch(seq=1, reports=[delivery(3_600, 7_200), delivery(7_200, 10_800)])
    first, second = batch_reports(batch)
    assert isinstance(first, StreamReport)
    assert isinstance(second, StreamReport)
    assert (first.plan_id, first.media_buy_id) == (second.plan_id, second.media_buy_id)
    assert first.plan_id is second.plan_id
    assert first.media_buy_id is second.media_buy_id


def test_the_server_reads_reports_compiled() -> None:
    """The suite runs after `make native`: the servicer reads streamed reports and fills their
    acks with the build, not the interpreted source."""
    assert "reckon_server.transport.stream_reports" in native.running_compiled()
