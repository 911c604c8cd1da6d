"""Exact money: amounts travel as integer micros (1 unit = 1,000,000 micros)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
_INT64_MAX = 2**63 - 1


def to_micros(amount: Decimal | int | str) -> int:
    """Exact micros of an amount; refuses floats, more than 6 decimals and int64 overflow."""
    if isinstance(amount, float):
        raise TypeError("amounts are Decimal, int or str, never float")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    micros = value * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise ValueError(f"{amount} has more than 6 decimal places")
    result = int(micros)
    if abs(result) > _INT64_MAX:
        raise ValueError(f"{amount} does not fit in int64 micros")
    return result


def from_micros(micros: int) -> Decimal:
    """The exact Decimal amount of `micros`."""
    return Decimal(micros).scaleb(-6).normalize() if micros else Decimal(0)
