"""Governance checks: what an action proposes, and how a plan judges it.

Decision: any critical finding denies; otherwise any warning asks for conditions; otherwise
the action is approved (informational findings may accompany an approval).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reckon_server.domain.actions import Action
from reckon_server.domain.findings import (
    BUDGET_AUTHORITY,
    SELLER_VERIFICATION,
    STRATEGIC_ALIGNMENT,
    Finding,
    Severity,
    has_critical,
)
from reckon_server.domain.money import format_money, micros_to_units
from reckon_server.domain.reconciliation import seller_verification

LOW_HEADROOM_FRACTION = 0.1


class Decision(enum.IntEnum):
    """Matches `reckon.v1.GovernanceDecision` numbering."""

    APPROVED = 1
    DENIED = 2
    CONDITIONS = 3


@dataclass(frozen=True)
class Allocation:
    amount_micros: int | None
    max_pct: float | None


@dataclass(frozen=True)
class PlanTerms:
    """What a plan authorizes, as the rules need it."""

    plan_id: str
    currency: str
    total_micros: int
    flight_start: datetime
    flight_end: datetime
    countries: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    per_seller_max_pct: float | None = None
    allocations: Mapping[int, Allocation] = field(default_factory=dict)
    approved_sellers: frozenset[str] | None = None


@dataclass(frozen=True)
class Headroom:
    """The plan's budget at the moment of a check (micros)."""

    total: int
    committed: int
    reserved: int
    purchase_type_used: int = 0
    """Committed + reserved of the check's purchase type."""
    seller_used: int = 0
    """Committed + reserved with the check's seller."""

    @property
    def available(self) -> int:
        return self.total - self.committed - self.reserved


@dataclass(frozen=True)
class Condition:
    field: str
    required_value: Any
    reason: str


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    findings: tuple[Finding, ...]
    conditions: tuple[Condition, ...]
    categories_evaluated: tuple[str, ...]
    explanation: str


def advisory_conditions(
    findings: Sequence[Finding], conditions: Sequence[Condition]
) -> list[Condition]:
    """A CONDITIONS verdict always names what to change (AdCP requires at least one
    condition): warnings no actionable condition covers become advisory ones."""
    if conditions:
        return []
    return [
        Condition(_FIELD_OF.get(f.category_id, f.category_id), None, f.explanation)
        for f in findings
        if f.severity is Severity.WARNING
    ]


_FIELD_OF = {
    SELLER_VERIFICATION: "planned_delivery",
    BUDGET_AUTHORITY: "total_budget",
    STRATEGIC_ALIGNMENT: "targeting_overlay",
}


def evaluate(
    terms: PlanTerms,
    headroom: Headroom,
    action: Action,
    *,
    purchase_type: int,
    approved: Action | None = None,
) -> Verdict:
    """Judge an action against the plan. `approved` is the campaign's approved intent, for an
    execution check (seller verification)."""
    findings: list[Finding] = []
    conditions: list[Condition] = []
    categories = [BUDGET_AUTHORITY, STRATEGIC_ALIGNMENT]
    currency = terms.currency

    def money(micros: int) -> str:
        return format_money(micros, currency)

    available = headroom.available
    if action.amount_micros > 0 and available <= 0:
        findings.append(
            Finding(
                BUDGET_AUTHORITY,
                Severity.CRITICAL,
                f"No budget is available: {money(headroom.committed)} committed and "
                f"{money(headroom.reserved)} reserved of {money(terms.total_micros)}.",
                {"requested": micros_to_units(action.amount_micros), "available": 0},
            )
        )
    elif action.amount_micros > available:
        findings.append(
            Finding(
                BUDGET_AUTHORITY,
                Severity.WARNING,
                f"Requested {money(action.amount_micros)} exceeds the "
                f"{money(available)} available.",
                {
                    "requested": micros_to_units(action.amount_micros),
                    "available": micros_to_units(available),
                },
            )
        )
        conditions.append(
            Condition(
                "total_budget",
                micros_to_units(available),
                f"at most {money(available)} is available",
            )
        )
    elif terms.total_micros and available - action.amount_micros < (
        terms.total_micros * LOW_HEADROOM_FRACTION
    ):
        findings.append(
            Finding(
                BUDGET_AUTHORITY,
                Severity.INFO,
                f"After this action {money(available - action.amount_micros)} of "
                f"{money(terms.total_micros)} remains available.",
                {"remaining_after": micros_to_units(available - action.amount_micros)},
            )
        )

    allocation = terms.allocations.get(purchase_type)
    if allocation is not None:
        caps = [allocation.amount_micros] if allocation.amount_micros is not None else []
        if allocation.max_pct is not None:
            caps.append(int(terms.total_micros * allocation.max_pct / 100))
        cap = min(caps) if caps else None
        if cap is not None and headroom.purchase_type_used + action.amount_micros > cap:
            left = max(0, cap - headroom.purchase_type_used)
            findings.append(
                Finding(
                    BUDGET_AUTHORITY,
                    Severity.WARNING,
                    f"The allocation for this purchase type is {money(cap)}; "
                    f"{money(left)} of it is left.",
                    {"allocation": micros_to_units(cap), "available": micros_to_units(left)},
                )
            )
            conditions.append(
                Condition(
                    "total_budget",
                    micros_to_units(left),
                    "stay within the purchase type's allocation",
                )
            )

    if terms.per_seller_max_pct is not None and action.seller:
        cap = int(terms.total_micros * terms.per_seller_max_pct / 100)
        if headroom.seller_used + action.amount_micros > cap:
            left = max(0, cap - headroom.seller_used)
            findings.append(
                Finding(
                    BUDGET_AUTHORITY,
                    Severity.WARNING,
                    f"At most {terms.per_seller_max_pct:g}% of the budget ({money(cap)}) may go to "
                    f"one seller; {money(left)} is left for {action.seller}.",
                    {"seller": action.seller, "available": micros_to_units(left)},
                )
            )
            conditions.append(
                Condition("total_budget", micros_to_units(left), "stay within the per-seller limit")
            )

    sellers = terms.approved_sellers
    if sellers is not None and action.seller and action.seller not in sellers:
        findings.append(
            Finding(
                STRATEGIC_ALIGNMENT,
                Severity.CRITICAL,
                f"Seller {action.seller} is not approved for this plan.",
                {"seller": action.seller},
            )
        )

    countries = action.all_countries()
    if terms.countries and countries - terms.countries:
        outside = sorted(countries - terms.countries)
        findings.append(
            Finding(
                STRATEGIC_ALIGNMENT,
                Severity.WARNING,
                f"Targeting includes markets outside the plan: {', '.join(outside)}.",
                {"outside_countries": outside, "authorized_countries": sorted(terms.countries)},
            )
        )
        conditions.append(
            Condition(
                "targeting_overlay.geo.include",
                sorted(countries & terms.countries),
                "target only the plan's authorized markets",
            )
        )
    if terms.allowed_channels and set(action.channels) - terms.allowed_channels:
        outside = sorted(set(action.channels) - terms.allowed_channels)
        findings.append(
            Finding(
                STRATEGIC_ALIGNMENT,
                Severity.WARNING,
                f"Channels outside the plan: {', '.join(outside)}.",
                {"outside_channels": outside, "allowed_channels": sorted(terms.allowed_channels)},
            )
        )
        conditions.append(
            Condition(
                "channels",
                sorted(set(action.channels) & terms.allowed_channels),
                "use only the plan's allowed channels",
            )
        )
    if action.flight_start is not None and action.flight_start < terms.flight_start:
        findings.append(
            Finding(
                STRATEGIC_ALIGNMENT,
                Severity.WARNING,
                "The action starts before the plan's flight.",
                {
                    "start_time": action.flight_start.isoformat(),
                    "flight_start": terms.flight_start.isoformat(),
                },
            )
        )
        conditions.append(
            Condition(
                "start_time", terms.flight_start.isoformat(), "start within the plan's flight"
            )
        )
    if action.flight_end is not None and action.flight_end > terms.flight_end:
        findings.append(
            Finding(
                STRATEGIC_ALIGNMENT,
                Severity.WARNING,
                "The action ends after the plan's flight.",
                {
                    "end_time": action.flight_end.isoformat(),
                    "flight_end": terms.flight_end.isoformat(),
                },
            )
        )
        conditions.append(
            Condition("end_time", terms.flight_end.isoformat(), "end within the plan's flight")
        )

    if approved is not None:
        categories.append(SELLER_VERIFICATION)
        verification = seller_verification(approved, action, currency)
        if verification is not None:
            findings.append(verification)

    if has_critical(findings):
        decision = Decision.DENIED
        explanation = " ".join(f.explanation for f in findings if f.severity is Severity.CRITICAL)
    elif any(f.severity is Severity.WARNING for f in findings):
        decision = Decision.CONDITIONS
        conditions.extend(advisory_conditions(findings, conditions))
        explanation = "Adjust and check again: " + " ".join(
            f.explanation for f in findings if f.severity is Severity.WARNING
        )
    else:
        decision = Decision.APPROVED
        explanation = f"Within plan: {money(action.amount_micros)} of {money(available)} available."
    return Verdict(decision, tuple(findings), tuple(conditions), tuple(categories), explanation)
