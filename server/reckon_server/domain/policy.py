"""The policy engine of AuditService.Execute.

A policy is an ordered list of rules. A rule matches an action when its `action` glob matches
the action type and every condition holds on the action's metadata; the first matching rule
decides (allow / deny / require_approval). No match is POLICY_NOT_FOUND: nothing is allowed by
default.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=1)
_MISSING = object()


class Effect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


class Operator(enum.StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    NOT_IN = "not_in"


class Decision(enum.IntEnum):
    """Matches `reckon.v1.ExecuteStatus` numbering."""

    EXECUTED = 1
    DENIED = 2
    REQUESTED = 3
    POLICY_NOT_FOUND = 4


@dataclass(frozen=True)
class Condition:
    field: str
    operator: Operator
    value: Any


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    effect: Effect
    conditions: tuple[Condition, ...] = ()
    reason: str = ""
    approval_timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT


@dataclass(frozen=True)
class Policy:
    name: str
    version: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class ConditionResult:
    field: str
    operator: str
    expected: Any
    actual: Any
    """The value found at `field`; None when absent."""
    matched: bool


@dataclass(frozen=True)
class Evaluation:
    decision: Decision
    policy_name: str = ""
    policy_version: str = ""
    rule_name: str = ""
    denial_reason: str = ""
    conditions: tuple[ConditionResult, ...] = field(default_factory=tuple)
    approval_timeout: timedelta | None = None


NO_POLICY = Policy(name="", version="")


def evaluate(policy: Policy, action_type: str, metadata: Mapping[str, Any]) -> Evaluation:
    for rule in policy.rules:
        if not fnmatch.fnmatchcase(action_type, rule.action):
            continue
        results = tuple(_check(c, metadata) for c in rule.conditions)
        if not all(r.matched for r in results):
            continue
        decision = {
            Effect.ALLOW: Decision.EXECUTED,
            Effect.DENY: Decision.DENIED,
            Effect.REQUIRE_APPROVAL: Decision.REQUESTED,
        }[rule.effect]
        return Evaluation(
            decision=decision,
            policy_name=policy.name,
            policy_version=policy.version,
            rule_name=rule.name,
            denial_reason=(rule.reason or f"denied by rule {rule.name!r}")
            if decision is Decision.DENIED
            else "",
            conditions=results,
            approval_timeout=rule.approval_timeout if decision is Decision.REQUESTED else None,
        )
    return Evaluation(Decision.POLICY_NOT_FOUND, policy.name, policy.version)


def _check(condition: Condition, metadata: Mapping[str, Any]) -> ConditionResult:
    actual = lookup(metadata, condition.field)
    matched = actual is not _MISSING and _holds(condition.operator, actual, condition.value)
    return ConditionResult(
        condition.field,
        condition.operator.value,
        condition.value,
        None if actual is _MISSING else actual,
        matched,
    )


def lookup(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or the module's missing marker."""
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    # Struct numbers arrive as floats and TOML integers as ints: compare numbers by value, but
    # never a bool with a number.
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _holds(operator: Operator, actual: Any, expected: Any) -> bool:
    if operator is Operator.EQ:
        return _same(actual, expected)
    if operator is Operator.NE:
        return not _same(actual, expected)
    if operator in (Operator.IN, Operator.NOT_IN):
        found = any(_same(actual, option) for option in expected)
        return found if operator is Operator.IN else not found
    comparable = (_is_number(actual) and _is_number(expected)) or (
        isinstance(actual, str) and isinstance(expected, str)
    )
    if not comparable or (_is_number(actual) and math.isnan(actual)):
        return False
    if operator is Operator.LT:
        return bool(actual < expected)
    if operator is Operator.LTE:
        return bool(actual <= expected)
    if operator is Operator.GT:
        return bool(actual > expected)
    return bool(actual >= expected)


class PolicyError(ValueError):
    """The policy file is not valid; the message names the offending entry."""


def load(path: Path) -> Policy:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise PolicyError(f"{path}: {err}") from err
    return parse(document, source=str(path))


def parse(document: Mapping[str, Any], *, source: str = "policy") -> Policy:
    header = document.get("policy", {})
    name, version = header.get("name"), str(header.get("version", ""))
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{source}: [policy] name is required")
    rules_doc = document.get("rules", [])
    if not isinstance(rules_doc, list):
        raise PolicyError(f"{source}: rules must be an array of tables ([[rules]])")
    return Policy(
        name, version, tuple(_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(rules_doc))
    )


def _rule(doc: Mapping[str, Any], where: str) -> Rule:
    try:
        effect = Effect(doc["effect"])
        conditions = tuple(
            _condition(c, f"{where}.conditions[{j}]")
            for j, c in enumerate(doc.get("conditions", []))
        )
        timeout = float(
            doc.get("approval_timeout_seconds", DEFAULT_APPROVAL_TIMEOUT.total_seconds())
        )
        if not timeout > 0:
            raise PolicyError(f"{where}: approval_timeout_seconds must be positive")
        name, action = str(doc.get("name") or doc["action"]), str(doc["action"])
    except KeyError as err:
        raise PolicyError(f"{where}: missing {err.args[0]!r}") from err
    except ValueError as err:
        if isinstance(err, PolicyError):
            raise
        raise PolicyError(f"{where}: {err}") from err
    return Rule(
        name, action, effect, conditions, str(doc.get("reason", "")), timedelta(seconds=timeout)
    )


def _condition(doc: Mapping[str, Any], where: str) -> Condition:
    try:
        operator = Operator(doc["op"])
        field_path, value = str(doc["field"]), doc["value"]
    except KeyError as err:
        raise PolicyError(f"{where}: missing {err.args[0]!r}") from err
    except ValueError as err:
        raise PolicyError(f"{where}: {err}") from err
    if operator in (Operator.IN, Operator.NOT_IN) and not isinstance(value, list):
        raise PolicyError(f"{where}: {operator} needs a list value")
    return Condition(field_path, operator, value)
