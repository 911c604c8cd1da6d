"""AdCP 3.0 JSON in and out: the seed's examples go through the adapter to a real server, and
every response is validated against the official schemas in shared/reference/adcp-3.0."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from reckon_client import adcp
from tests.support.api import RunningServer, bearer

SCHEMAS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "adcp-3.0"


@pytest.fixture(scope="module")
def registry() -> Registry:
    assert SCHEMAS.is_dir(), f"AdCP schemas not found at {SCHEMAS}"
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        document = json.loads(path.read_text())
        resources.append((document["$id"], Resource.from_contents(document)))
    return Registry().with_resources(resources)


def validate(registry: Registry, schema: str, instance: dict[str, Any]) -> None:
    document = registry.contents(f"/schemas/3.0.18/governance/{schema}.json")
    validator = jsonschema.Draft7Validator(document, registry=registry)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def key() -> str:
    return str(uuid.uuid4())


PLAN = {
    "plan_id": "plan_q1_2026_launch",
    "brand": {"domain": "acme.example"},
    "objectives": "Launch awareness in North America",
    "budget": {
        "total": 500000,
        "currency": "USD",
        "reallocation_threshold": 25000.5,
        "allocations": {"media_buy": {"amount": 450000}},
    },
    "channels": {"allowed": ["olv", "ctv", "display"]},
    "flight": {"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"},
    "countries": ["US", "CA"],
    "approved_sellers": None,
}

SEED_COMPLETED = {
    "plan_id": "plan_q1_2026_launch",
    "check_id": "chk_xyz789",
    "outcome": "completed",
    "seller_response": {
        "media_buy_id": "mb_seller_456",
        "packages": [
            {
                "package_id": "pkg_001",
                "product_id": "premium_video_300k",
                "budget": 150000,
                "targeting_overlay": {
                    "geo": {"include": [{"type": "country", "code": "US"}]},
                    "viewability": {"standard": "mrc", "threshold": 50},
                },
            }
        ],
        "planned_delivery": {
            "geo": {"countries": ["US"]},
            "channels": ["olv"],
            "start_time": "2026-03-15T00:00:00Z",
            "end_time": "2026-06-15T00:00:00Z",
            "total_budget": 150000,
            "currency": "USD",
        },
        "creative_deadline": "2026-03-20T00:00:00Z",
    },
}

SEED_DELIVERY = {
    "plan_id": "plan_q1_2026_launch",
    "outcome": "delivery",
    "delivery": {
        "media_buy_id": "mb_seller_456",
        "reporting_period": {"start": "2026-03-15T00:00:00Z", "end": "2026-03-22T00:00:00Z"},
        "impressions": 1250000,
        "spend": 18750,
        "cpm": 15.00,
        "viewability_rate": 0.72,
        "completion_rate": 0.65,
    },
}


async def test_the_seed_through_the_adapter_matches_the_schemas(
    api: RunningServer, registry: Registry
) -> None:
    md = bearer(await api.register("adcp-orchestrator"))
    stub = api.stubs.governance

    sync_args = {"idempotency_key": key(), "plans": [PLAN], "context": {"trace": "t-1"}}
    validate(registry, "sync-plans-request", sync_args)
    synced = adcp.sync_plans_response(
        await stub.SyncPlans(adcp.sync_plans_request(sync_args), metadata=md)
    )
    validate(registry, "sync-plans-response", synced)
    assert synced["plans"][0]["version"] == 1
    assert synced["context"] == {"trace": "t-1"}

    # 275,000 committed by an earlier campaign, as in the seed.
    earlier = await _check(stub, md, registry, 275000)
    completed = _completed(earlier, 275000, "mb_earlier")
    await stub.ReportPlanOutcome(adcp.report_plan_outcome_request(completed), metadata=md)

    check = await _check(stub, md, registry, 150000)
    arguments = {
        **SEED_COMPLETED,
        "check_id": check["check_id"],
        "governance_context": check["governance_context"],
        "idempotency_key": key(),
    }
    validate(registry, "report-plan-outcome-request", arguments)
    accepted = adcp.report_plan_outcome_response(
        await stub.ReportPlanOutcome(adcp.report_plan_outcome_request(arguments), metadata=md)
    )
    validate(registry, "report-plan-outcome-response", accepted)
    assert {k: v for k, v in accepted.items() if k != "outcome_id"} == {
        "status": "accepted",
        "committed_budget": 150000,
        "plan_summary": {"total_committed": 425000, "budget_remaining": 75000},
    }
    replay = adcp.report_plan_outcome_response(
        await stub.ReportPlanOutcome(adcp.report_plan_outcome_request(arguments), metadata=md)
    )
    validate(registry, "report-plan-outcome-response", replay)
    assert replay["replayed"] is True

    delivery = {
        **SEED_DELIVERY,
        "idempotency_key": key(),
        "governance_context": check["governance_context"],
    }
    validate(registry, "report-plan-outcome-request", delivery)
    anomaly = adcp.report_plan_outcome_response(
        await stub.ReportPlanOutcome(adcp.report_plan_outcome_request(delivery), metadata=md)
    )
    validate(registry, "report-plan-outcome-response", anomaly)
    assert anomaly["status"] == "findings"
    assert anomaly["findings"] == [
        {
            "category_id": "budget_authority",
            "severity": "warning",
            "explanation": "Spend is pacing 62% above plan. At current rate, budget will be "
            "exhausted 5 weeks early.",
            "details": {
                "planned_weekly_spend": 11538,
                "actual_weekly_spend": 18750,
                "overpace_pct": 62,
                "projected_exhaustion": "2026-05-10T00:00:00Z",
            },
        }
    ]

    failing = await _check(stub, md, registry, 10000)
    failed = {
        "plan_id": PLAN["plan_id"],
        "check_id": failing["check_id"],
        "outcome": "failed",
        "governance_context": failing["governance_context"],
        "idempotency_key": key(),
        "error": {
            "code": "PRODUCT_UNAVAILABLE",
            "message": "Product premium_video_300k is no longer available.",
        },
    }
    validate(registry, "report-plan-outcome-request", failed)
    failure = adcp.report_plan_outcome_response(
        await stub.ReportPlanOutcome(adcp.report_plan_outcome_request(failed), metadata=md)
    )
    validate(registry, "report-plan-outcome-response", failure)
    assert (failure["committed_budget"], failure["plan_summary"]) == (
        0,
        {"total_committed": 425000, "budget_remaining": 75000},
    )

    logs_args = {"plan_ids": [PLAN["plan_id"]], "include_entries": True}
    validate(registry, "get-plan-audit-logs-request", logs_args)
    logs = adcp.get_plan_audit_logs_response(
        await stub.GetPlanAuditLogs(adcp.get_plan_audit_logs_request(logs_args), metadata=md)
    )
    validate(registry, "get-plan-audit-logs-response", logs)
    [log] = logs["plans"]
    assert log["budget"] == {
        "authorized": 500000,
        "committed": 425000,
        "remaining": 75000,
        "utilization_pct": 85.0,
    }
    assert log["summary"]["checks_performed"] == 3
    assert log["summary"]["outcomes_reported"] == 4

    # Entries a page at a time, joined into AdCP's one document.
    request = adcp.get_plan_audit_logs_request(logs_args)
    request.page_size = 3
    pages = [await stub.GetPlanAuditLogs(request, metadata=md)]
    while pages[-1].next_page_token:
        request.page_token = pages[-1].next_page_token
        pages.append(await stub.GetPlanAuditLogs(request, metadata=md))
    assert len(pages) == 3
    assert adcp.get_plan_audit_logs_response(*pages) == logs
    assert await adcp.get_plan_audit_logs(stub, logs_args, md) == logs


async def test_conditions_and_denials_match_the_schema(
    api: RunningServer, registry: Registry
) -> None:
    md = bearer(await api.register("adcp-edge"))
    stub = api.stubs.governance
    small = {**PLAN, "plan_id": "small", "budget": {"total": 1000, "currency": "USD"}}
    await stub.SyncPlans(
        adcp.sync_plans_request({"idempotency_key": key(), "plans": [small]}), metadata=md
    )
    for amount, status in ((1500, "conditions"), (1000, "approved"), (1, "denied")):
        arguments = {
            "plan_id": "small",
            "caller": "https://buyer.example/agent",
            "tool": "create_media_buy",
            "payload": {"packages": [{"package_id": "p", "budget": amount}]},
        }
        validate(registry, "check-governance-request", arguments)
        response = adcp.check_governance_response(
            await stub.CheckGovernance(adcp.check_governance_request(arguments), metadata=md)
        )
        validate(registry, "check-governance-response", response)
        assert response["status"] == status


async def _check(stub: Any, md: Any, registry: Registry, amount: int) -> dict[str, Any]:
    arguments = {
        "plan_id": PLAN["plan_id"],
        "caller": "https://buyer.example/agent",
        "tool": "create_media_buy",
        "payload": {
            "packages": [
                {
                    "package_id": "pkg_001",
                    "budget": amount,
                    "targeting_overlay": {"geo": {"include": [{"type": "country", "code": "US"}]}},
                }
            ]
        },
    }
    validate(registry, "check-governance-request", arguments)
    response = adcp.check_governance_response(
        await stub.CheckGovernance(adcp.check_governance_request(arguments), metadata=md)
    )
    validate(registry, "check-governance-response", response)
    assert response["status"] == "approved", response
    return response


def _completed(check: dict[str, Any], amount: int, media_buy_id: str) -> dict[str, Any]:
    return {
        "plan_id": PLAN["plan_id"],
        "check_id": check["check_id"],
        "outcome": "completed",
        "governance_context": check["governance_context"],
        "idempotency_key": key(),
        "seller_response": {"seller_reference": media_buy_id, "committed_budget": amount},
    }
