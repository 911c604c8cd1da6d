"""The server's share of every streamed report: read off its decoded batch and checked on the
way in, its result filled into the batch's ack on the way out. Compiled by mypyc once built
(see `native`): with its figures typed, the checks and the tuple they make run as C, where
interpreted they cost about as much as the protobuf reads themselves.
"""

from __future__ import annotations

from typing import Final

import orjson

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server.domain.money import MAX_AMOUNT_MICROS
from reckon_server.errors import FieldViolation, Reason, ReckonError, invalid
from reckon_server.storage.delivery import BatchApplied, StreamReport
from reckon_server.transport.codec import MAX_SECONDS, MIN_SECONDS
from reckon_server.transport.governance_codec import delivery_figures, encode_stored_finding
from reckon_server.transport.status import rich_status
from reckon_server.transport.text import NUL, nul_violations

# Final copies: compiled, a Final is a C constant, where an imported name is looked up in its
# module's dictionary on every read.
_MAX_AMOUNT: Final = MAX_AMOUNT_MICROS
_MIN_SECONDS: Final = MIN_SECONDS
_MAX_SECONDS: Final = MAX_SECONDS
_NUL: Final = NUL
_ACCEPTED: Final = types_pb2.PLAN_OUTCOME_STATUS_ACCEPTED
_FINDINGS: Final = types_pb2.PLAN_OUTCOME_STATUS_FINDINGS


def batch_reports(batch: pb.DeliveryBatch) -> list[StreamReport | ReckonError]:
    """The batch's reports, each validated or refused (see `read_report`)."""
    names: dict[str, str] = {}
    return [read_report(item, index, names) for index, item in enumerate(batch.reports)]


def read_report(
    item: pb.PlanDelivery, index: int, names: dict[str, str]
) -> StreamReport | ReckonError:
    """A validated report, or the error it gets in its ack (the batch goes on).

    `names` holds the plan ids, contexts and media buy ids of the batch's reports so far, so
    that equal names are one object: pickle writes each once per batch on its way to the
    writer, which then makes one string of it instead of one per report, and every lookup by
    it there finds its hash already computed.

    Plainly valid reports take a direct path: every field is read once (each read of a
    decoded message costs about as much as a Python call) and checked against the same rules
    as `delivery_figures`, and for NUL, which the edge leaves to this function (see `edge`).
    Anything else gets the full rules with field paths.
    """
    delivery = item.delivery
    period = delivery.reporting_period
    start = period.start
    end = period.end
    plan_id: str = item.plan_id
    context: str = item.governance_context
    media_buy_id: str = delivery.media_buy_id
    spend: int = delivery.spend_micros
    impressions: int = delivery.impressions
    start_s: int = start.seconds
    start_n: int = start.nanos
    end_s: int = end.seconds
    end_n: int = end.nanos
    present = delivery.HasField
    # A value other than the default is present: HasField, which finds its field by name,
    # costs several reads.
    cpm: int | None = delivery.cpm_micros or (0 if present("cpm_micros") else None)
    viewability = delivery.viewability_rate if present("viewability_rate") else None
    completion = delivery.completion_rate if present("completion_rate") else None
    if (
        plan_id
        and (media_buy_id or context)
        and len(media_buy_id) <= 255
        and _NUL not in plan_id
        and _NUL not in context
        and _NUL not in media_buy_id
        and 0 <= spend <= _MAX_AMOUNT
        and impressions >= 0
        # Non-zero seconds show both times are present; the epoch itself takes the full rules.
        and start_s != 0
        and end_s != 0
        and _MIN_SECONDS <= start_s <= _MAX_SECONDS
        and _MIN_SECONDS <= end_s <= _MAX_SECONDS
        and 0 <= start_n < 1_000_000_000
        and 0 <= end_n < 1_000_000_000
        and (start_s < end_s or (start_s == end_s and start_n < end_n))
        and (cpm is None or 0 <= cpm <= _MAX_AMOUNT)
        and (viewability is None or 0 <= viewability <= 1)
        and (completion is None or 0 <= completion <= 1)
        and not present("ext")
    ):
        # tuple.__new__, which `_make` calls: a fraction of the cost of the named tuple's
        # own constructor. Microseconds truncate the nanos, as Timestamp.ToDatetime does.
        shared = names.setdefault
        return tuple.__new__(
            StreamReport,
            (
                shared(plan_id, plan_id),
                shared(context, context),
                shared(media_buy_id, media_buy_id),
                start_s * 1_000_000 + start_n // 1000,
                end_s * 1_000_000 + end_n // 1000,
                spend,
                impressions,
                cpm,
                viewability,
                completion,
            ),
        )
    return _read_by_the_full_rules(item, f"reports[{index}]")


def _read_by_the_full_rules(item: pb.PlanDelivery, path: str) -> StreamReport | ReckonError:
    out = nul_violations(item, path)
    if not item.plan_id:
        out.append(FieldViolation(f"{path}.plan_id", "required"))
    figures = delivery_figures(item.delivery, f"{path}.delivery", out)
    if not item.delivery.media_buy_id and not item.governance_context:
        out.append(
            FieldViolation(
                f"{path}.delivery.media_buy_id",
                "required unless governance_context names the campaign",
            )
        )
    if out or figures is None:
        return invalid(Reason.INVALID_REQUEST, out or [FieldViolation(path, "invalid")])
    return StreamReport(
        item.plan_id,
        item.governance_context,
        figures.media_buy_id,
        figures.start_us,
        figures.end_us,
        figures.spend_micros,
        figures.impressions,
        figures.cpm_micros,
        figures.viewability_rate,
        figures.completion_rate,
    )


def fill_results(ack: pb.BatchAck, applied: BatchApplied) -> None:
    """Each report's result into a committed batch's ack, in batch order."""
    # Filled in place: nested keyword construction costs several times as much per report.
    add_result = ack.results.add
    findings = applied.findings
    for index, result in enumerate(applied.results):
        # An outcome id: compiled, checking for the type nearly every result has is a flag test.
        if not isinstance(result, str):
            add_result().error.CopyFrom(rich_status(result))
            continue
        accepted = add_result().accepted
        accepted.outcome_id = result
        document = findings.get(index) if findings else None
        if document:
            accepted.status = _FINDINGS
            add_finding = accepted.findings.add
            for finding in orjson.loads(document)["findings"]:
                encode_stored_finding(finding, add_finding())
        else:
            accepted.status = _ACCEPTED
