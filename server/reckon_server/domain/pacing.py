"""Delivery pacing (linear), overspend and data-consistency rules for delivery reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from reckon_server.domain.findings import (
    BUDGET_AUTHORITY,
    SELLER_VERIFICATION,
    Finding,
    Severity,
)
from reckon_server.domain.money import format_money, micros_to_units, round_half_up, round_units

DEFAULT_THRESHOLD_PCT = 20
CPM_TOLERANCE = Fraction(5, 100)
_DAY = 86_400
_WEEK = 7


@dataclass(frozen=True)
class Pacing:
    """The pacing figures of one media buy after one reporting period (micros, exact)."""

    planned_weekly: Fraction
    actual_weekly: Fraction
    overpace_pct: int
    projected_exhaustion: datetime | None
    weeks_early: int | None


def _days(delta: timedelta) -> Fraction:
    return Fraction(int(delta.total_seconds() * 1_000_000), _DAY * 1_000_000)


def pacing(
    *,
    committed_micros: int,
    flight_start: datetime,
    flight_end: datetime,
    period_start: datetime,
    period_end: datetime,
    period_spend_micros: int,
    cumulative_spend_micros: int,
) -> Pacing | None:
    """Linear pacing; None when it is undefined (nothing committed, an empty flight or
    period, or a period that ends before the flight starts)."""
    flight_days = _days(flight_end - flight_start)
    period_days = _days(period_end - period_start)
    elapsed_days = _days(period_end - flight_start)
    if committed_micros <= 0 or flight_days <= 0 or period_days <= 0 or elapsed_days <= 0:
        return None
    weeks = max(1, round_half_up(flight_days / _WEEK))
    planned_weekly = Fraction(committed_micros, weeks)
    actual_weekly = period_spend_micros * _WEEK / period_days
    expected_to_date = planned_weekly * elapsed_days / _WEEK
    overpace_pct = math.trunc((cumulative_spend_micros / expected_to_date - 1) * 100)
    exhaustion = weeks_early = None
    if cumulative_spend_micros > 0:
        days_to_exhaust = committed_micros / (cumulative_spend_micros / elapsed_days)
        exhaustion = flight_start + timedelta(seconds=float(days_to_exhaust * _DAY))
        weeks_early = round_half_up(_days(flight_end - exhaustion) / _WEEK)
    return Pacing(planned_weekly, actual_weekly, overpace_pct, exhaustion, weeks_early)


def pacing_finding(figures: Pacing, threshold_pct: int = DEFAULT_THRESHOLD_PCT) -> Finding | None:
    if abs(figures.overpace_pct) < threshold_pct:
        return None
    details: dict[str, object] = {
        "planned_weekly_spend": round_units(figures.planned_weekly),
        "actual_weekly_spend": round_units(figures.actual_weekly),
        "overpace_pct": figures.overpace_pct,
    }
    if figures.overpace_pct > 0:
        explanation = f"Spend is pacing {figures.overpace_pct}% above plan."
        if figures.projected_exhaustion is not None:
            details["projected_exhaustion"] = _iso_day(figures.projected_exhaustion)
        if figures.weeks_early and figures.weeks_early > 0:
            unit = "week" if figures.weeks_early == 1 else "weeks"
            explanation += (
                f" At current rate, budget will be exhausted {figures.weeks_early} {unit} early."
            )
    else:
        explanation = f"Spend is pacing {-figures.overpace_pct}% below plan."
    return Finding(BUDGET_AUTHORITY, Severity.WARNING, explanation, details)


def overspend_finding(
    cumulative_spend_micros: int, committed_micros: int, currency: str
) -> Finding | None:
    if cumulative_spend_micros <= committed_micros:
        return None
    return Finding(
        BUDGET_AUTHORITY,
        Severity.CRITICAL,
        f"Delivered spend {format_money(cumulative_spend_micros, currency)} exceeds the "
        f"committed {format_money(committed_micros, currency)}.",
        {
            "cumulative_spend": micros_to_units(cumulative_spend_micros),
            "committed_budget": micros_to_units(committed_micros),
        },
    )


def cpm_finding(spend_micros: int, impressions: int, cpm_micros: int | None) -> Finding | None:
    """Flags a reported CPM more than 5 % away from spend / impressions * 1000."""
    if cpm_micros is None or impressions <= 0:
        return None
    implied = Fraction(spend_micros * 1000, impressions)
    if implied == 0:
        consistent = cpm_micros == 0
    else:
        consistent = abs(cpm_micros - implied) / implied <= CPM_TOLERANCE
    if consistent:
        return None
    return Finding(
        SELLER_VERIFICATION,
        Severity.WARNING,
        f"Reported CPM {micros_to_units(cpm_micros)} does not match spend and impressions "
        f"(implied CPM {float(implied / 1_000_000):.2f}).",
        {
            "reported_cpm": micros_to_units(cpm_micros),
            "implied_cpm": round(float(implied / 1_000_000), 6),
        },
    )


def _iso_day(moment: datetime) -> str:
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


_DAY_US = _DAY * 1_000_000


def delivery_findings(
    *,
    committed_micros: int,
    settled: bool,
    flight_start: datetime,
    flight_end: datetime,
    currency: str,
    period_start: datetime,
    period_end: datetime,
    spend_micros: int,
    impressions: int,
    cpm_micros: int | None,
    cumulative_micros: int,
    threshold_pct: int = DEFAULT_THRESHOLD_PCT,
) -> list[Finding]:
    """Every finding of one delivery report: pacing, overspend and CPM consistency."""
    findings: list[Finding] = []
    if _may_be_off_pace(
        committed=committed_micros,
        flight_start=flight_start,
        flight_end=flight_end,
        period_end=period_end,
        cumulative=cumulative_micros,
        threshold_pct=threshold_pct,
    ):
        figures = pacing(
            committed_micros=committed_micros,
            flight_start=flight_start,
            flight_end=flight_end,
            period_start=period_start,
            period_end=period_end,
            period_spend_micros=spend_micros,
            cumulative_spend_micros=cumulative_micros,
        )
        finding = pacing_finding(figures, threshold_pct) if figures is not None else None
        if finding is not None:
            findings.append(finding)
    if settled:
        over = overspend_finding(cumulative_micros, committed_micros, currency)
        if over is not None:
            findings.append(over)
    inconsistent = cpm_finding(spend_micros, impressions, cpm_micros)
    if inconsistent is not None:
        findings.append(inconsistent)
    return findings


def _may_be_off_pace(
    *,
    committed: int,
    flight_start: datetime,
    flight_end: datetime,
    period_end: datetime,
    cumulative: int,
    threshold_pct: int,
) -> bool:
    """A float estimate of |overpace|, with a margin, so that the exact rational arithmetic
    runs only for reports near or past the threshold (streams carry many on-plan reports)."""
    flight_days = (flight_end - flight_start).total_seconds() / _DAY
    elapsed_days = (period_end - flight_start).total_seconds() / _DAY
    if committed <= 0 or flight_days <= 0 or elapsed_days <= 0:
        return False
    weeks = max(1, math.floor(flight_days / _WEEK + 0.5))
    expected = committed / weeks * elapsed_days / _WEEK
    return abs((cumulative / expected - 1) * 100) >= threshold_pct - 1
