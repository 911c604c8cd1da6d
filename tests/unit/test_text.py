"""NUL in request strings: every place a string can sit in a message is found, with its path."""

from __future__ import annotations

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server.transport.text import nul_violations
from tests.support.governance import struct

RULE = "must not contain U+0000 (NUL)"


def fields(message: object, path: str = "") -> list[str]:
    return [v.field for v in nul_violations(message, path)]  # type: ignore[arg-type]


def test_a_message_without_nul_has_no_violations() -> None:
    plan = pb.Plan(plan_id="p", objectives="ünïcödé ✓", countries=["US"])
    plan.ext.update({"a": [1, "b", {"c": None}], "d": True})
    assert nul_violations(plan) == []


def test_every_kind_of_string_is_walked() -> None:
    plan = pb.Plan(plan_id="p\x00", objectives="\x00", countries=["US", "C\x00A"])
    plan.ext.update({"k\x00": 1, "notes": ["ok", {"deep": "x\x00"}]})
    check = pb.CheckGovernanceRequest(
        plan_id="p",
        planned_delivery=pb.PlannedDelivery(geo=pb.GeoScope(regions=["\x00"])),
        delivery_metrics=pb.DeliveryMetrics(geo_distribution={"U\x00S": 50.0}),
    )
    assert sorted(fields(plan)) == [
        "countries[1]",
        "ext.k\\u0000",
        "ext.notes[1].deep",
        "objectives",
        "plan_id",
    ]
    assert sorted(fields(check, "request")) == [
        "request.delivery_metrics.geo_distribution[U\\u0000S]",
        "request.planned_delivery.geo.regions[0]",
    ]
    assert {v.description for v in nul_violations(plan)} == {RULE}


def test_deep_documents_are_walked_and_violations_are_capped() -> None:
    document: dict[str, object] = {"leaf": "\x00"}
    for _ in range(30):
        document = {"d": document}
    deep = types_pb2.DeliveryReport(ext=struct(document))
    assert fields(deep) == ["ext" + ".d" * 30 + ".leaf"]
    many = pb.Plan(countries=["\x00"] * 50)
    assert fields(many) == [f"countries[{i}]" for i in range(20)]
