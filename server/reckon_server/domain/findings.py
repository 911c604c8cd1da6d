"""Findings: what a check or an outcome flags, in AdCP's vocabulary."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BUDGET_AUTHORITY = "budget_authority"
STRATEGIC_ALIGNMENT = "strategic_alignment"
SELLER_VERIFICATION = "seller_verification"


class Severity(enum.IntEnum):
    """Matches `reckon.v1.Severity` numbering."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3


@dataclass(frozen=True)
class Finding:
    category_id: str
    severity: Severity
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The finding as stored in a response document (and read back by the API)."""
        return {
            "category_id": self.category_id,
            "severity": int(self.severity),
            "explanation": self.explanation,
            "details": self.details,
        }


def has_critical(findings: Sequence[Finding]) -> bool:
    return any(f.severity is Severity.CRITICAL for f in findings)
