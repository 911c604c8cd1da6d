"""The policy evaluator: table-driven rules and properties."""

from __future__ import annotations

import fnmatch
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reckon_server.domain import policy
from reckon_server.domain.policy import Condition, Decision, Effect, Operator, Policy, Rule

CASES: list[tuple[str, Operator, Any, dict[str, Any], bool]] = [
    ("eq-string", Operator.EQ, "prod", {"env": "prod"}, True),
    ("eq-int-float", Operator.EQ, 3, {"env": 3.0}, True),
    ("eq-bool-is-not-int", Operator.EQ, 1, {"env": True}, False),
    ("ne", Operator.NE, "prod", {"env": "dev"}, True),
    ("ne-missing-never-matches", Operator.NE, "prod", {}, False),
    ("lt", Operator.LT, 10, {"env": 9.5}, True),
    ("lt-equal", Operator.LT, 10, {"env": 10}, False),
    ("lte-equal", Operator.LTE, 10, {"env": 10}, True),
    ("gt", Operator.GT, 1000, {"env": 1001}, True),
    ("gte", Operator.GTE, 1000, {"env": 999}, False),
    ("gt-string-vs-number", Operator.GT, 1, {"env": "2"}, False),
    ("lt-strings", Operator.LT, "b", {"env": "a"}, True),
    ("in", Operator.IN, ["US", "EU"], {"env": "EU"}, True),
    ("in-numbers", Operator.IN, [1, 2], {"env": 2.0}, True),
    ("not-in", Operator.NOT_IN, ["US"], {"env": "CA"}, True),
    ("not-in-member", Operator.NOT_IN, ["US"], {"env": "US"}, False),
    ("missing", Operator.EQ, "x", {"other": "x"}, False),
    ("null-value", Operator.EQ, "x", {"env": None}, False),
]


@pytest.mark.parametrize(
    ("operator", "expected", "metadata", "matches"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_operators(
    operator: Operator, expected: Any, metadata: dict[str, Any], matches: bool
) -> None:
    rule = Rule("r", "a", Effect.ALLOW, (Condition("env", operator, expected),))
    result = policy.evaluate(Policy("p", "1", (rule,)), "a", metadata)
    assert (result.decision is Decision.EXECUTED) is matches
    if matches:
        assert result.conditions[0].matched


def test_dotted_paths_first_match_wins_and_nothing_matches_by_default() -> None:
    rules = (
        Rule(
            "deny-big",
            "db.*",
            Effect.DENY,
            (Condition("target.rows", Operator.GT, 1000),),
            reason="too big",
        ),
        Rule("review", "db.migrate", Effect.REQUIRE_APPROVAL, approval_timeout=timedelta(60)),
        Rule("allow-db", "db.*", Effect.ALLOW),
    )
    p = Policy("p", "2", rules)
    denied = policy.evaluate(p, "db.migrate", {"target": {"rows": 5000}})
    assert (denied.decision, denied.rule_name, denied.denial_reason) == (
        Decision.DENIED,
        "deny-big",
        "too big",
    )
    assert denied.conditions[0].actual == 5000
    review = policy.evaluate(p, "db.migrate", {"target": {"rows": 5}})
    assert review.decision is Decision.REQUESTED
    assert review.approval_timeout == timedelta(60)
    assert policy.evaluate(p, "db.read", {}).decision is Decision.EXECUTED
    nothing = policy.evaluate(p, "fs.write", {})
    assert (nothing.decision, nothing.policy_name) == (Decision.POLICY_NOT_FOUND, "p")


def test_parse_reports_the_offending_entry() -> None:
    with pytest.raises(policy.PolicyError, match=r"rules\[0\]: missing 'effect'"):
        policy.parse({"policy": {"name": "p"}, "rules": [{"action": "x"}]})
    with pytest.raises(policy.PolicyError, match=r"conditions\[0\].*needs a list"):
        policy.parse(
            {
                "policy": {"name": "p"},
                "rules": [
                    {
                        "action": "x",
                        "effect": "allow",
                        "conditions": [{"field": "a", "op": "in", "value": "US"}],
                    }
                ],
            }
        )
    with pytest.raises(policy.PolicyError, match="name is required"):
        policy.parse({"rules": []})


scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


@given(actual=scalars, expected=scalars)
def test_complementary_operators_never_both_match(actual: Any, expected: Any) -> None:
    def holds(op: Operator, value: Any) -> bool:
        rule = Rule("r", "*", Effect.ALLOW, (Condition("f", op, value),))
        return policy.evaluate(Policy("p", "1", (rule,)), "x", {"f": actual}).decision is (
            Decision.EXECUTED
        )

    assert holds(Operator.EQ, expected) != holds(Operator.NE, expected)
    assert holds(Operator.IN, [expected]) != holds(Operator.NOT_IN, [expected])
    assert not (holds(Operator.LT, expected) and holds(Operator.GTE, expected))
    assert not (holds(Operator.GT, expected) and holds(Operator.LTE, expected))


@given(
    st.lists(st.sampled_from(["db.*", "db.migrate", "*", "fs.?", "x"]), min_size=1, max_size=6),
    st.sampled_from(["db.migrate", "fs.a", "x", "other"]),
)
def test_the_first_matching_rule_decides(globs: list[str], action: str) -> None:
    rules = tuple(Rule(f"r{i}", g, Effect.ALLOW) for i, g in enumerate(globs))
    result = policy.evaluate(Policy("p", "1", rules), action, {})
    first = next((i for i, g in enumerate(globs) if fnmatch.fnmatchcase(action, g)), None)
    if first is None:
        assert result.decision is Decision.POLICY_NOT_FOUND
    else:
        assert result.rule_name == f"r{first}"
