"""Pure governance rules: money, pacing, discrepancies and check decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reckon_server.clock import LATEST_MICROS
from reckon_server.domain.actions import Action, Package
from reckon_server.domain.documents import canonical_json
from reckon_server.domain.findings import Finding, Severity
from reckon_server.domain.governance import Decision, Headroom, PlanTerms, evaluate
from reckon_server.domain.money import format_money, micros_to_units, units_to_micros
from reckon_server.domain.pacing import (
    DeliveryFigures,
    DeliveryRules,
    Pacing,
    _iso_second,
    cpm_finding,
    overspend_finding,
    pacing,
    pacing_finding,
)
from reckon_server.domain.reconciliation import describe, discrepancies, over_commitment
from reckon_server.storage.delivery import _findings_json as findings_json

M = 1_000_000


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (150000, 150_000 * M),
        (15.0, 15 * M),
        (0.1, 100_000),
        (0.000001, 1),
        (0, 0),
        (-1, None),
        (0.0000001, None),
        (float("nan"), None),
        (float("inf"), None),
        (True, None),
        ("1", None),
        (10**12, None),
    ],
)
def test_units_to_micros(value: object, micros: int | None) -> None:
    assert units_to_micros(value) == micros


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False))
def test_units_round_trip_exactly(amount: Decimal) -> None:
    micros = units_to_micros(float(amount))
    if micros is not None:  # floats cannot hold every 6-decimal amount
        assert Decimal(str(micros_to_units(micros))) == Decimal(micros) / M


@pytest.mark.parametrize(
    ("micros", "currency", "text"),
    [
        (150_000 * M, "USD", "$150,000"),
        (120_000_500_000, "USD", "$120,000.50"),
        (5 * M, "JPY", "5 JPY"),
        (1_234_567 * M, "EUR", "€1,234,567"),
    ],
)
def test_format_money(micros: int, currency: str, text: str) -> None:
    assert format_money(micros, currency) == text


FLIGHT = (day("2026-03-15"), day("2026-06-15"))


@pytest.mark.parametrize(
    ("period", "spend", "cumulative", "overpace", "exhaustion", "weeks_early"),
    [
        (("2026-03-15", "2026-03-22"), 18_750, 18_750, 62, "2026-05-10", 5),  # the seed
        (("2026-03-15", "2026-03-22"), 11_538, 11_538, 0, "2026-06-14", 0),
        (("2026-03-15", "2026-03-22"), 5_769, 5_769, -50, "2026-09-13", -13),
        (("2026-03-22", "2026-03-29"), 11_000, 22_000, -4, "2026-06-18", 0),
        (("2026-03-15", "2026-03-22"), 0, 0, -100, None, None),
    ],
)
def test_pacing_table(
    period: tuple[str, str],
    spend: int,
    cumulative: int,
    overpace: int,
    exhaustion: str | None,
    weeks_early: int | None,
) -> None:
    figures = pacing(
        committed_micros=150_000 * M,
        flight_start=FLIGHT[0],
        flight_end=FLIGHT[1],
        period_start=day(period[0]),
        period_end=day(period[1]),
        period_spend_micros=spend * M,
        cumulative_spend_micros=cumulative * M,
    )
    assert figures is not None
    assert figures.overpace_pct == overpace
    assert figures.weeks_early == weeks_early
    if exhaustion is None:
        assert figures.projected_exhaustion is None
    else:
        assert figures.projected_exhaustion is not None
        assert figures.projected_exhaustion.date().isoformat() == exhaustion


def test_pacing_is_undefined_outside_the_flight_or_without_commitment() -> None:
    common = {
        "flight_start": FLIGHT[0],
        "flight_end": FLIGHT[1],
        "period_spend_micros": 1,
        "cumulative_spend_micros": 1,
    }
    assert (
        pacing(
            committed_micros=0,
            period_start=day("2026-03-15"),
            period_end=day("2026-03-22"),
            **common,
        )
        is None
    )  # type: ignore[arg-type]
    assert (
        pacing(
            committed_micros=M,
            period_start=day("2026-03-01"),
            period_end=day("2026-03-08"),
            **common,
        )
        is None
    )  # type: ignore[arg-type]


def _first_week_pacing(spend_micros: int) -> Pacing | None:
    """The pacing of the seed's 150,000 flight after its first week, `spend_micros` spent."""
    return pacing(
        committed_micros=150_000 * M,
        flight_start=FLIGHT[0],
        flight_end=FLIGHT[1],
        period_start=day("2026-03-15"),
        period_end=day("2026-03-22"),
        period_spend_micros=spend_micros,
        cumulative_spend_micros=spend_micros,
    )


def test_underpacing_warns_without_an_exhaustion_date() -> None:
    figures = _first_week_pacing(5_769 * M)
    assert figures is not None
    finding = pacing_finding(figures)
    assert finding is not None
    assert finding.explanation == "Spend is pacing 50% below plan."
    assert "projected_exhaustion" not in finding.details
    assert pacing_finding(figures, threshold_pct=60) is None


def test_an_exhaustion_date_past_year_9999_is_left_out() -> None:
    """Within the horizon in years, but past the last date a Timestamp can name."""
    figures = pacing(
        committed_micros=150_000 * M,
        flight_start=day("9990-01-01"),
        flight_end=day("9999-12-31"),
        period_start=day("9990-01-01"),
        period_end=day("9990-01-08"),
        period_spend_micros=100 * M,
        cumulative_spend_micros=100 * M,
    )
    assert figures is not None
    assert (figures.projected_exhaustion, figures.weeks_early) == (None, None)
    finding = pacing_finding(figures)
    assert finding is not None
    assert finding.explanation == "Spend is pacing 65% below plan."


@given(st.integers(-62_135_596_800_000_000, LATEST_MICROS))
def test_an_exhaustion_time_reads_as_the_datetime_it_is(epoch_us: int) -> None:
    """Formatted from integers, it is the datetime's own ISO form, from year 1 to 9999."""
    at = datetime(1970, 1, 1) + timedelta(microseconds=epoch_us)
    assert _iso_second(epoch_us) == at.replace(microsecond=0).isoformat() + "Z"


@given(
    spend=st.integers(1, 10**6), cumulative_extra=st.integers(0, 10**6), days_in=st.integers(1, 80)
)
def test_overpace_sign_matches_exhaustion_before_the_end(
    spend: int, cumulative_extra: int, days_in: int
) -> None:
    end = FLIGHT[0] + timedelta(days=days_in)
    figures = pacing(
        committed_micros=150_000 * M,
        flight_start=FLIGHT[0],
        flight_end=FLIGHT[1],
        period_start=end - timedelta(days=1),
        period_end=end,
        period_spend_micros=spend * M,
        cumulative_spend_micros=(spend + cumulative_extra) * M,
    )
    assert figures is not None
    if figures.projected_exhaustion is None:  # a trickle that outlasts any horizon
        assert figures.overpace_pct < -90
        return
    if figures.overpace_pct > 0:
        assert figures.projected_exhaustion <= FLIGHT[1] + timedelta(days=6)
    if figures.overpace_pct < -1:
        assert figures.projected_exhaustion >= FLIGHT[1] - timedelta(days=1)


@given(
    flight_start=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9990, 1, 1), timezones=st.just(UTC)
    ),
    days_in=st.integers(1, 90),
    pace_pct=st.integers(130, 1000),
)
def test_the_exhaustion_date_is_the_projected_time_in_utc_to_the_second(
    flight_start: datetime, days_in: int, pace_pct: int
) -> None:
    """Over a 13-week flight, spending `pace_pct` % of the planned rate so far."""
    end = flight_start + timedelta(days=days_in)
    figures = pacing(
        committed_micros=150_000 * M,
        flight_start=flight_start,
        flight_end=flight_start + timedelta(days=91),
        period_start=end - timedelta(days=1),
        period_end=end,
        period_spend_micros=M,
        cumulative_spend_micros=150_000 * M * days_in * pace_pct // (91 * 100),
    )
    assert figures is not None
    assert figures.projected_exhaustion is not None
    finding = pacing_finding(figures)
    assert finding is not None
    expected = figures.projected_exhaustion.replace(tzinfo=None).isoformat(timespec="seconds")
    assert finding.details["projected_exhaustion"] == expected + "Z"


def test_a_streamed_reports_findings_document_is_canonical_json() -> None:
    paced = _first_week_pacing(30_000 * M)
    assert paced is not None
    findings = [
        pacing_finding(paced),
        overspend_finding(151_000 * M, 150_000 * M, "EUR"),
        cpm_finding(18_750 * M, 1_250_001, 17 * M),
    ]
    kept = [f for f in findings if f is not None]
    assert len(kept) == 3
    assert findings_json(kept) == canonical_json({"findings": [f.document() for f in kept]})
    # Beyond what the rules write, the same document, whatever its floats are spelled like.
    for details in ({"n": 10**18, "f": 1e-7}, {"past_64_bits": [10**30, -(10**30)]}):
        odd = Finding("ünïcode", Severity.INFO, "“quoted” \\ \n\u2028", details)
        assert json.loads(findings_json([odd])) == {"findings": [odd.document()]}


@pytest.mark.parametrize(
    ("cpm", "consistent"), [(15 * M, True), (15_500_000, True), (16 * M, False), (None, True)]
)
def test_cpm_consistency(cpm: int | None, consistent: bool) -> None:
    assert (cpm_finding(18_750 * M, 1_250_000, cpm) is None) is consistent


REQUESTED = Action(150_000 * M, (Package("pkg_001", 150_000 * M, ("US",)),), channels=("olv",))


@pytest.mark.parametrize(
    ("received", "fields", "text"),
    [
        (REQUESTED, [], None),
        (
            Action(120_000 * M, (Package("pkg_001", 120_000 * M, ("US", "CA")),)),
            ["packages[0].budget", "packages[0].targeting_overlay.geo.include"],
            "Seller reduced budget from $150,000 to $120,000 and added geo targeting for CA "
            "that was not requested.",
        ),
        (
            Action(160_000 * M, (Package("other", 160_000 * M, ()),)),
            ["packages[0].budget"],
            "Seller increased budget from $150,000 to $160,000.",
        ),
        (
            Action(150_000 * M, (Package("pkg_001", 150_000 * M, ("CA",)),), channels=("ctv",)),
            ["packages[0].targeting_overlay.geo.include", "planned_delivery.channels"],
            "Seller added geo targeting for CA that was not requested and dropped geo "
            "targeting for US and changed channels to ctv.",
        ),
        (
            Action(140_000 * M, countries=("US",)),
            ["total_budget"],
            "Seller reduced budget from $150,000 to $140,000.",
        ),
    ],
)
def test_discrepancies(received: Action, fields: list[str], text: str | None) -> None:
    found = discrepancies(REQUESTED, received, "USD")
    assert [d.field for d in found] == fields
    if text is not None:
        assert describe(found, "USD") == text


def test_over_commitment_is_critical_and_shows_the_negative_remainder() -> None:
    assert over_commitment(500 * M, 500 * M, "USD") is None
    finding = over_commitment(530 * M, 500 * M, "USD")
    assert finding is not None
    assert finding.severity is Severity.CRITICAL
    assert finding.details["budget_remaining"] == -30


TERMS = PlanTerms(
    "p",
    "USD",
    500_000 * M,
    day("2026-01-01"),
    day("2026-12-31"),
    countries=frozenset({"US", "CA"}),
    allowed_channels=frozenset({"olv"}),
)


@pytest.mark.parametrize(
    ("action", "headroom", "decision"),
    [
        (Action(100 * M), Headroom(500_000 * M, 0, 0), Decision.APPROVED),
        (Action(400_000 * M), Headroom(500_000 * M, 200_000 * M, 0), Decision.CONDITIONS),
        (Action(1), Headroom(500_000 * M, 300_000 * M, 200_000 * M), Decision.DENIED),
        (Action(0), Headroom(500_000 * M, 500_000 * M, 0), Decision.APPROVED),
        (Action(10 * M, countries=("FR",)), Headroom(500_000 * M, 0, 0), Decision.CONDITIONS),
        (Action(10 * M, channels=("radio",)), Headroom(500_000 * M, 0, 0), Decision.CONDITIONS),
        (
            Action(10 * M, flight_start=day("2025-12-01")),
            Headroom(500_000 * M, 0, 0),
            Decision.CONDITIONS,
        ),
    ],
)
def test_check_decisions(action: Action, headroom: Headroom, decision: Decision) -> None:
    verdict = evaluate(TERMS, headroom, action, purchase_type=1)
    assert verdict.decision is decision
    if decision is Decision.CONDITIONS:
        assert verdict.conditions
    if decision is Decision.DENIED:
        assert any(f.severity is Severity.CRITICAL for f in verdict.findings)


@given(
    amount=st.integers(0, 10**12), committed=st.integers(0, 10**12), reserved=st.integers(0, 10**12)
)
def test_an_approval_never_exceeds_the_headroom(amount: int, committed: int, reserved: int) -> None:
    headroom = Headroom(500_000 * M, committed, reserved)
    verdict = evaluate(TERMS, headroom, Action(amount), purchase_type=1)
    if verdict.decision is Decision.APPROVED:
        assert amount <= max(headroom.available, 0) or amount == 0


def test_a_trickle_of_spend_has_no_exhaustion_date_and_does_not_overflow() -> None:
    figures = pacing(
        committed_micros=150_000 * M,
        flight_start=FLIGHT[0],
        flight_end=FLIGHT[1],
        period_start=day("2026-03-15"),
        period_end=day("2026-03-16"),
        period_spend_micros=1,
        cumulative_spend_micros=1,
    )
    assert figures is not None
    assert (figures.projected_exhaustion, figures.weeks_early) == (None, None)
    finding = pacing_finding(figures)
    assert finding is not None
    assert "projected_exhaustion" not in finding.details


@settings(max_examples=1000)
@given(
    committed=st.integers(1, 10**13),
    flight_minutes=st.integers(1, 400 * 1440),
    elapsed_minutes=st.integers(-1440, 420 * 1440),
    period_minutes=st.integers(1, 7 * 1440),
    pace_basis_points=st.integers(-10_000, 20_000),
    threshold_pct=st.integers(2, 95),
)
def test_a_streams_rules_give_every_pacing_finding_the_exact_rules_give(
    committed: int,
    flight_minutes: int,
    elapsed_minutes: int,
    period_minutes: int,
    pace_basis_points: int,
    threshold_pct: int,
) -> None:
    """The rules of a stream's reports estimate pacing in floats first, to skip the exact
    arithmetic for reports plainly on plan; the estimate must never skip one that is not.
    Spend is drawn around the plan's, so that many cases fall near the threshold."""
    planned = committed * max(elapsed_minutes, 0) // flight_minutes
    cumulative = max(0, planned + planned * pace_basis_points // 10_000)
    start = day("2026-01-01")
    end = start + timedelta(minutes=flight_minutes)
    period_end = start + timedelta(minutes=elapsed_minutes)
    figures = DeliveryFigures(
        "mb_1", period_end - timedelta(minutes=period_minutes), period_end, 1_000, 0
    )
    rules = DeliveryRules(
        committed_micros=committed,
        settled=False,
        flight_start=start,
        flight_end=end,
        currency="USD",
        threshold_pct=threshold_pct,
    )
    exact = pacing(
        committed_micros=committed,
        flight_start=start,
        flight_end=end,
        period_start=figures.period_start,
        period_end=period_end,
        period_spend_micros=figures.spend_micros,
        cumulative_spend_micros=cumulative,
    )
    expected = None if exact is None else pacing_finding(exact, threshold_pct)
    assert rules.findings(figures, cumulative) == ([] if expected is None else [expected])
