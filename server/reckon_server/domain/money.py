"""Exact money. Amounts are integer micros (1 unit = 1,000,000 micros) everywhere but in AdCP
JSON and finding details, which speak currency units."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from reckon_server.errors import FieldViolation, Reason, ReckonError, invalid

MICROS = 1_000_000
MAX_AMOUNT_MICROS = 10**17
"""Largest single amount (100 billion units), and the most the packages of one action total."""
MAX_PLAN_TOTAL_MICROS = 10**18
"""The most a plan may have committed, and the most it may have delivered (a trillion units).
Amounts are never negative, so every campaign and purchase-type figure stays within it too,
and every stored sum and every `int64` on the wire stays in range: a sum past int64 would be
refused by the database (or the wire) after the request had been accepted."""

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def units_to_micros(value: Any) -> int | None:
    """Micros of a JSON number of currency units, or None when it is not a finite,
    non-negative number with at most 6 decimals within MAX_AMOUNT_MICROS."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    # repr() of a float is the shortest decimal that round-trips, so 0.1 stays 0.1.
    micros = Decimal(repr(value)) * MICROS
    if micros != micros.to_integral_value() or not 0 <= micros <= MAX_AMOUNT_MICROS:
        return None
    return int(micros)


def micros_to_units(micros: int | Fraction) -> int | float:
    """Currency units for finding details: an int when whole, else a float."""
    if isinstance(micros, int):
        # int / int is correctly rounded, as float(Fraction) is, and far cheaper.
        whole, rest = divmod(micros, MICROS)
        return micros / MICROS if rest else whole
    units = Fraction(micros) / MICROS
    return int(units) if units.denominator == 1 else float(units)


def format_money(micros: int, currency: str) -> str:
    """ "$150,000" for USD, "150,000.5 JPY" for currencies without a symbol here."""
    units = Decimal(micros) / MICROS
    text = f"{units:,.2f}".removesuffix(".00")
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def past_plan_total(path: str, total: str) -> ReckonError:
    """The error for an amount at `path` that would take the plan's `total` past its limit."""
    return invalid(
        Reason.INVALID_REQUEST,
        [
            FieldViolation(
                path, f"would take the plan's {total} past {MAX_PLAN_TOTAL_MICROS} micros"
            )
        ],
    )
