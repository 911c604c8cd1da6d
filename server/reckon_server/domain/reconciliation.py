"""Reconciling what a seller confirmed with what was checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reckon_server.domain.actions import Action
from reckon_server.domain.findings import BUDGET_AUTHORITY, SELLER_VERIFICATION, Finding, Severity
from reckon_server.domain.money import format_money, micros_to_units


@dataclass(frozen=True)
class Discrepancy:
    field: str
    requested: Any
    received: Any
    phrase: str
    """How the change reads in an explanation, e.g. "added geo targeting for CA"."""

    def as_detail(self) -> dict[str, Any]:
        return {"field": self.field, "requested": self.requested, "received": self.received}


def discrepancies(requested: Action, received: Action, currency: str) -> list[Discrepancy]:
    """Differences per package (matched by package_id, else by position), or in totals when
    either side states none (a planned delivery states totals); then channels and flight.
    Amounts in details are currency units, as AdCP shows them."""
    if requested.packages and received.packages:
        found = _packages(requested, received, currency)
    else:
        found = _totals(requested, received, currency)
    return found + _delivery_terms(requested, received)


def _money_change(path: str, asked: int, got: int, label: str, currency: str) -> Discrepancy:
    verb = "reduced" if got < asked else "increased"
    return Discrepancy(
        path,
        micros_to_units(asked),
        micros_to_units(got),
        f"{verb} budget{label} from {format_money(asked, currency)} to "
        f"{format_money(got, currency)}",
    )


def _geo_change(path: str, asked: list[str], got: list[str], label: str) -> Discrepancy:
    added = [c for c in got if c not in asked]
    dropped = [c for c in asked if c not in got]
    phrases = []
    if added:
        phrases.append(f"added geo targeting for {', '.join(added)}{label} that was not requested")
    if dropped:
        phrases.append(f"dropped geo targeting for {', '.join(dropped)}{label}")
    return Discrepancy(path, asked, got, " and ".join(phrases))


def _packages(requested: Action, received: Action, currency: str) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    by_id = {p.package_id: p for p in received.packages if p.package_id}
    several = len(requested.packages) > 1
    for index, asked in enumerate(requested.packages):
        got = by_id.get(asked.package_id) if asked.package_id else None
        if got is None and index < len(received.packages):
            got = received.packages[index]
        label = f" of {asked.package_id or f'package {index}'}" if several else ""
        path = f"packages[{index}]"
        if got is None:
            found.append(
                Discrepancy(
                    path, asked.package_id, None, f"dropped package {asked.package_id or index}"
                )
            )
            continue
        if (
            asked.budget_micros is not None
            and got.budget_micros is not None
            and (asked.budget_micros != got.budget_micros)
        ):
            found.append(
                _money_change(
                    f"{path}.budget", asked.budget_micros, got.budget_micros, label, currency
                )
            )
        if got.countries and set(got.countries) != set(asked.countries):
            found.append(
                _geo_change(
                    f"{path}.targeting_overlay.geo.include",
                    list(asked.countries),
                    list(got.countries),
                    label,
                )
            )
    return found


def _totals(requested: Action, received: Action, currency: str) -> list[Discrepancy]:
    found = []
    if requested.amount_micros != received.amount_micros:
        found.append(
            _money_change(
                "total_budget", requested.amount_micros, received.amount_micros, "", currency
            )
        )
    asked, got = sorted(requested.all_countries()), sorted(received.all_countries())
    if got and asked != got:
        found.append(_geo_change("geo.countries", asked, got, ""))
    return found


def _delivery_terms(requested: Action, received: Action) -> list[Discrepancy]:
    found = []
    if (
        requested.channels
        and received.channels
        and set(requested.channels) != set(received.channels)
    ):
        found.append(
            Discrepancy(
                "planned_delivery.channels",
                list(requested.channels),
                list(received.channels),
                f"changed channels to {', '.join(received.channels)}",
            )
        )
    for name, asked_time, got_time in (
        ("start_time", requested.flight_start, received.flight_start),
        ("end_time", requested.flight_end, received.flight_end),
    ):
        if asked_time and got_time and asked_time != got_time:
            found.append(
                Discrepancy(
                    f"planned_delivery.{name}",
                    asked_time.isoformat(),
                    got_time.isoformat(),
                    f"moved the {name.replace('_', ' ')}",
                )
            )
    return found


def describe(found: list[Discrepancy], currency: str) -> str:
    """ "Seller reduced budget from $150,000 to $120,000 and added geo targeting for CA that
    was not requested." """
    phrases = [d.phrase for d in found]
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"Seller {joined}."


def seller_verification(requested: Action, received: Action, currency: str) -> Finding | None:
    found = discrepancies(requested, received, currency)
    if not found:
        return None
    return Finding(
        SELLER_VERIFICATION,
        Severity.WARNING,
        describe(found, currency),
        {"discrepancies": [d.as_detail() for d in found]},
    )


def over_commitment(total_committed: int, total_budget: int, currency: str) -> Finding | None:
    """The plan's total is exceeded: the seller's amount is committed anyway, and flagged."""
    if total_committed <= total_budget:
        return None
    return Finding(
        BUDGET_AUTHORITY,
        Severity.CRITICAL,
        f"Committed {format_money(total_committed, currency)} exceeds the plan's authorized "
        f"{format_money(total_budget, currency)}.",
        {
            "total_committed": micros_to_units(total_committed),
            "authorized": micros_to_units(total_budget),
            "budget_remaining": micros_to_units(total_budget - total_committed),
        },
    )
