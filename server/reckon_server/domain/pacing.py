"""Delivery pacing (linear), overspend and data-consistency rules for delivery reports."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from reckon_server.clock import LATEST_MICROS, epoch_micros, from_epoch_micros
from reckon_server.domain.findings import (
    BUDGET_AUTHORITY,
    SELLER_VERIFICATION,
    Finding,
    Severity,
)
from reckon_server.domain.money import format_money, micros_to_units

DEFAULT_THRESHOLD_PCT = 20
CPM_TOLERANCE_DIVISOR = 20
"""A reported CPM within 1/20 (5 %) of spend / impressions * 1000 is consistent."""
_DAY = 86_400
_WEEK = 7


@dataclass(frozen=True)
class DeliveryFigures:
    """One delivery report's figures for one reporting period (absolute totals)."""

    media_buy_id: str
    period_start: datetime
    period_end: datetime
    spend_micros: int
    impressions: int
    cpm_micros: int | None = None
    viewability_rate: float | None = None
    completion_rate: float | None = None
    cumulative_spend_micros: int | None = None
    """Given by delivery-phase checks; otherwise summed from stored periods."""

    @property
    def start_us(self) -> int:
        return epoch_micros(self.period_start)

    @property
    def end_us(self) -> int:
        return epoch_micros(self.period_end)


class PeriodFigures(Protocol):
    """What the findings of a delivery report read from it."""

    @property
    def start_us(self) -> int:
        """The period's start in microseconds since the epoch."""

    @property
    def end_us(self) -> int:
        """The period's end in microseconds since the epoch."""

    @property
    def spend_micros(self) -> int: ...
    @property
    def impressions(self) -> int: ...
    @property
    def cpm_micros(self) -> int | None: ...


@dataclass
class Pacing:
    """The pacing figures of one media buy after one reporting period.

    Not frozen: compiled (see `native`), a frozen dataclass is built through the generic
    dataclass `__init__`, which cost a third as much as the pacing arithmetic itself, for every
    report off pace."""

    planned_weekly_units: int
    actual_weekly_units: int
    overpace_pct: int
    projected_exhaustion_us: int | None
    """When the budget runs out at this rate, in microseconds since the epoch."""
    weeks_early: int | None

    @property
    def projected_exhaustion(self) -> datetime | None:
        us = self.projected_exhaustion_us
        return None if us is None else from_epoch_micros(us)


_WEEK_US = _WEEK * _DAY * 1_000_000
_HORIZON_US = 100 * 366 * _DAY * 1_000_000
_MICROS = 1_000_000


def _half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up (denominator > 0), in integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def _trunc_div(numerator: int, denominator: int) -> int:
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


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
    """Linear pacing in exact integer arithmetic (micros, microseconds); None when it is
    undefined (nothing committed, an empty flight or period, or a period that ends before the
    flight starts)."""
    return _pacing(
        committed_micros=committed_micros,
        flight_start_us=epoch_micros(flight_start),
        flight_end_us=epoch_micros(flight_end),
        period_start_us=epoch_micros(period_start),
        period_end_us=epoch_micros(period_end),
        period_spend_micros=period_spend_micros,
        cumulative_spend_micros=cumulative_spend_micros,
    )


def _pacing(
    *,
    committed_micros: int,
    flight_start_us: int,
    flight_end_us: int,
    period_start_us: int,
    period_end_us: int,
    period_spend_micros: int,
    cumulative_spend_micros: int,
) -> Pacing | None:
    """`pacing` with every time in microseconds since the epoch."""
    flight_us = flight_end_us - flight_start_us
    period_us = period_end_us - period_start_us
    elapsed_us = period_end_us - flight_start_us
    if committed_micros <= 0 or flight_us <= 0 or period_us <= 0 or elapsed_us <= 0:
        return None
    weeks = max(1, _half_up(flight_us, _WEEK_US))
    # expected_to_date = committed / weeks * elapsed / week; overpace = cumulative / expected - 1
    expected_scaled = committed_micros * elapsed_us
    overpace_pct = _trunc_div(
        100 * (cumulative_spend_micros * weeks * _WEEK_US - expected_scaled), expected_scaled
    )
    exhaustion: int | None = None
    weeks_early: int | None = None
    exhaust_after_us = (
        committed_micros * elapsed_us // cumulative_spend_micros if cumulative_spend_micros else 0
    )
    exhaustion_us = flight_start_us + exhaust_after_us
    # Spend so slow that the budget lasts past any horizon, or past the last day a date can
    # name, has no exhaustion date.
    if 0 < exhaust_after_us <= _HORIZON_US and exhaustion_us <= LATEST_MICROS:
        exhaustion = exhaustion_us
        weeks_early = _half_up(flight_end_us - exhaustion_us, _WEEK_US)
    return Pacing(
        planned_weekly_units=_half_up(committed_micros, weeks * _MICROS),
        actual_weekly_units=_half_up(period_spend_micros * _WEEK_US, period_us * _MICROS),
        overpace_pct=overpace_pct,
        projected_exhaustion_us=exhaustion,
        weeks_early=weeks_early,
    )


def pacing_finding(figures: Pacing, threshold_pct: int = DEFAULT_THRESHOLD_PCT) -> Finding | None:
    if abs(figures.overpace_pct) < threshold_pct:
        return None
    details: dict[str, object] = {
        "planned_weekly_spend": figures.planned_weekly_units,
        "actual_weekly_spend": figures.actual_weekly_units,
        "overpace_pct": figures.overpace_pct,
    }
    if figures.overpace_pct > 0:
        explanation = f"Spend is pacing {figures.overpace_pct}% above plan."
        if figures.projected_exhaustion_us is not None:
            details["projected_exhaustion"] = _iso_second(figures.projected_exhaustion_us)
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
    # Compare cpm * impressions with spend * 1000, in integers: within 5 % is consistent.
    implied_scaled, reported_scaled = spend_micros * 1000, cpm_micros * impressions
    if abs(reported_scaled - implied_scaled) * CPM_TOLERANCE_DIVISOR <= implied_scaled and (
        implied_scaled or not reported_scaled
    ):
        return None
    implied = implied_scaled / impressions
    return Finding(
        SELLER_VERIFICATION,
        Severity.WARNING,
        f"Reported CPM {micros_to_units(cpm_micros)} does not match spend and impressions "
        f"(implied CPM {implied / 1_000_000:.2f}).",
        {
            "reported_cpm": micros_to_units(cpm_micros),
            "implied_cpm": round(implied / 1_000_000, 6),
        },
    )


def _iso_second(epoch_us: int) -> str:
    """A time in microseconds since the epoch, in UTC to the second, as in
    "2026-05-10T00:00:00Z": formatted from integers, without a datetime, at less than half the
    cost, as every off-pace report of a stream has one. Its fields are joined from strings
    made once (a format spec per field cost more than the rest of the finding's text)."""
    day, second = divmod(epoch_us // 1_000_000, 86_400)
    minute, second = divmod(second, 60)
    hour, minute = divmod(minute, 60)
    return f"{_iso_date(day)}T{_TWO_DIGITS[hour]}:{_TWO_DIGITS[minute]}:{_TWO_DIGITS[second]}Z"


_TWO_DIGITS = tuple(f"{n:02d}" for n in range(60))


@functools.lru_cache(maxsize=1024)
def _iso_date(days_since_epoch: int) -> str:
    return (_EPOCH_DATE + timedelta(days=days_since_epoch)).isoformat()


_EPOCH_DATE = date(1970, 1, 1)


class DeliveryRules:
    """The findings rules for the delivery reports of one campaign: pacing, overspend and CPM
    consistency. Its flight and budget are worked out once, for the many reports of a stream.
    """

    def __init__(
        self,
        *,
        committed_micros: int,
        settled: bool,
        flight_start: datetime,
        flight_end: datetime,
        currency: str,
        threshold_pct: int = DEFAULT_THRESHOLD_PCT,
    ) -> None:
        self._committed = committed_micros
        self._settled = settled
        self._currency = currency
        self._threshold = threshold_pct
        self._flight_start_us = epoch_micros(flight_start)
        self._flight_end_us = epoch_micros(flight_end)
        flight_days = (self._flight_end_us - self._flight_start_us) / 1_000_000 / _DAY
        self._planned_per_us: float | None = None
        """Planned spend per microsecond of flight, for the quick pacing estimate; None when
        undefined."""
        if committed_micros > 0 and flight_days > 0:
            weekly = committed_micros / max(1, math.floor(flight_days / _WEEK + 0.5))
            self._planned_per_us = weekly / _WEEK_US
        self._estimate_margin = (threshold_pct - 1) / 100

    def findings(self, figures: PeriodFigures, cumulative_micros: int) -> list[Finding]:
        """Every finding of one report, given the campaign's cumulative spend after it."""
        findings: list[Finding] = []
        if self._may_be_off_pace(figures.end_us, cumulative_micros):
            paced = _pacing(
                committed_micros=self._committed,
                flight_start_us=self._flight_start_us,
                flight_end_us=self._flight_end_us,
                period_start_us=figures.start_us,
                period_end_us=figures.end_us,
                period_spend_micros=figures.spend_micros,
                cumulative_spend_micros=cumulative_micros,
            )
            finding = pacing_finding(paced, self._threshold) if paced is not None else None
            if finding is not None:
                findings.append(finding)
        if self._settled:
            over = overspend_finding(cumulative_micros, self._committed, self._currency)
            if over is not None:
                findings.append(over)
        inconsistent = cpm_finding(figures.spend_micros, figures.impressions, figures.cpm_micros)
        if inconsistent is not None:
            findings.append(inconsistent)
        return findings

    def _may_be_off_pace(self, period_end_us: int, cumulative: int) -> bool:
        """A float estimate of |overpace|, with a margin, so that the exact rational
        arithmetic runs only for reports near or past the threshold (streams carry many
        on-plan reports): |cumulative / expected - 1| against the threshold less a point,
        without its division."""
        elapsed_us = period_end_us - self._flight_start_us
        if self._planned_per_us is None or elapsed_us <= 0:
            return False
        expected = self._planned_per_us * elapsed_us
        return abs(cumulative - expected) >= expected * self._estimate_margin
