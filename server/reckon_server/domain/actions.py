"""What a check proposes or a seller confirms, read from AdCP payloads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reckon_server.domain.money import MAX_AMOUNT_MICROS, MICROS, units_to_micros
from reckon_server.errors import FieldViolation

MAX_SELLER_CHARS = 1024
"""The longest seller identity (an agent URL) a campaign records."""


@dataclass(frozen=True)
class Package:
    package_id: str
    budget_micros: int | None
    countries: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """What a check proposes, or what a seller confirmed."""

    amount_micros: int
    packages: tuple[Package, ...] = ()
    countries: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    flight_start: datetime | None = None
    flight_end: datetime | None = None
    seller: str | None = None

    def all_countries(self) -> set[str]:
        return set(self.countries).union(*(p.countries for p in self.packages))


def countries_of(targeting: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Country codes of an AdCP targeting overlay (`geo.include[{type: country, code}]`, or
    `geo.countries`)."""
    if not isinstance(targeting, Mapping):
        return ()
    geo = targeting.get("geo")
    if not isinstance(geo, Mapping):
        return ()
    found: list[str] = []
    for entry in geo.get("include") or ():
        if isinstance(entry, Mapping) and entry.get("type") == "country":
            found.append(str(entry.get("code", "")))
    found.extend(str(c) for c in geo.get("countries") or ())
    return tuple(dict.fromkeys(found))


def action_from_payload(
    payload: Mapping[str, Any], parse_time: Callable[[Any], datetime | None]
) -> tuple[Action, list[FieldViolation]]:
    """An intent check's action from its AdCP tool payload (amounts in currency units)."""
    violations: list[FieldViolation] = []
    packages = []
    raw_packages = payload.get("packages") or []
    if not isinstance(raw_packages, list):
        violations.append(FieldViolation("payload.packages", "must be a list"))
        raw_packages = []
    for i, raw in enumerate(raw_packages):
        if not isinstance(raw, Mapping):
            violations.append(FieldViolation(f"payload.packages[{i}]", "must be an object"))
            continue
        budget = None
        if raw.get("budget") is not None:
            budget = units_to_micros(raw["budget"])
            if budget is None:
                violations.append(_amount_violation(f"payload.packages[{i}].budget"))
        packages.append(
            Package(
                str(raw.get("package_id", "")), budget, countries_of(raw.get("targeting_overlay"))
            )
        )
    amount = sum(p.budget_micros or 0 for p in packages)
    if amount > MAX_AMOUNT_MICROS:
        violations.append(
            FieldViolation(
                "payload.packages", f"budgets total more than {MAX_AMOUNT_MICROS // MICROS} units"
            )
        )
    if not any(p.budget_micros is not None for p in packages):
        total = payload.get("total_budget", payload.get("budget"))
        if isinstance(total, Mapping):
            total = total.get("total")
        if total is not None:
            parsed = units_to_micros(total)
            if parsed is None:
                violations.append(_amount_violation("payload.total_budget"))
            amount = parsed or 0
    channels = payload.get("channels") or []
    flight = []
    for key in ("start_time", "end_time"):
        value = payload.get(key)
        moment = None
        if value is not None:
            moment = parse_time(value)
            if moment is None:
                violations.append(FieldViolation(f"payload.{key}", "must be an ISO 8601 time"))
        flight.append(moment)
    if flight[0] and flight[1] and flight[1] <= flight[0]:
        violations.append(FieldViolation("payload.end_time", "must be after start_time"))
    seller_key = "seller_agent_url" if payload.get("seller_agent_url") else "seller"
    seller = payload.get(seller_key)
    if seller and len(str(seller)) > MAX_SELLER_CHARS:
        violations.append(
            FieldViolation(f"payload.{seller_key}", f"at most {MAX_SELLER_CHARS} characters")
        )
    action = Action(
        amount_micros=amount,
        packages=tuple(packages),
        countries=countries_of(payload.get("targeting_overlay")),
        channels=tuple(str(c) for c in channels) if isinstance(channels, list) else (),
        flight_start=flight[0],
        flight_end=flight[1],
        seller=str(seller) if seller else None,
    )
    return action, violations


def _amount_violation(path: str) -> FieldViolation:
    return FieldViolation(path, "must be a non-negative amount with at most 6 decimals")
