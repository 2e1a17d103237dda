"""The scoring endpoints: scores and history per lead, the broker's weights, tenancy."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.config import get_settings
from crm.leads.models import ActivityKind, Direction, Lead
from crm.leads.timeline import add_activity
from crm.pipeline.stages import Stage
from crm.scoring import service, tasks
from crm.scoring.models import ScoreSnapshot
from crm.timeutil import utcnow
from tests.conftest import Tenant

_phones = itertools.count(200_000)


def make_lead(db: Session, broker_id: int, **fields: Any) -> Lead:
    lead = Lead(broker_id=broker_id, phone=f"+34612{next(_phones):06d}", **fields)
    db.add(lead)
    db.flush()
    return lead


def snapshot_count(db: Session, lead_id: int) -> int:
    return db.scalar(select(func.count()).where(ScoreSnapshot.lead_id == lead_id)) or 0


# --- one lead's score -----------------------------------------------------------------


async def test_score_is_computed_on_first_read_then_served(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, intent=0.7, last_activity_at=utcnow())
    add_activity(
        db, lead=lead, kind=ActivityKind.message, actor=Actor.cli(), direction=Direction.inbound
    )
    db.commit()
    assert snapshot_count(db, lead.id) == 0

    first = await client.get(f"/api/v1/leads/{lead.id}/score", headers=tenant.headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["lead_id"] == lead.id
    assert body["trigger"] == "first_read"
    assert body["score"] == body["breakdown"]["score"] == 29  # 15 + 10.5 + 2 (1 msg) + 1.5
    components = {c["name"]: c for c in body["breakdown"]["components"]}
    assert components["engagement"]["explanation"] == (
        "1 inbound message, 0 answered calls, 0 notes in the last 30 days "
        "(1 of 10 engagement points)"
    )
    assert components["qualification"]["explanation"].startswith("0 of 6 qualification")

    second = await client.get(f"/api/v1/leads/{lead.id}/score", headers=tenant.headers)
    assert second.json()["id"] == body["id"]
    db.expire_all()
    assert snapshot_count(db, lead.id) == 1
    assert db.get(Lead, lead.id).score == 29  # type: ignore[union-attr]


async def test_recompute_stores_a_new_snapshot_and_audits_it(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, last_activity_at=utcnow())
    db.commit()
    await client.get(f"/api/v1/leads/{lead.id}/score", headers=tenant.headers)
    lead.intent = 0.9
    db.commit()

    response = await client.post(f"/api/v1/leads/{lead.id}/score/recompute", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trigger"] == "api.recompute"
    assert body["score"] == 30  # 15 + 13.5 + 1.5, up from 24 (15 + 7.5 + 1.5)
    current = await client.get(f"/api/v1/leads/{lead.id}/score", headers=tenant.headers)
    assert current.json()["id"] == body["id"]
    row = db.scalars(
        select(AuditLog).where(
            AuditLog.action == "lead.score.recompute", AuditLog.object_id == str(lead.id)
        )
    ).one()
    assert row.diff == {"score": [24, 30]}
    assert row.broker_id == tenant.id
    assert row.actor_type.value == "api_key"


async def test_history_is_paged_newest_first(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    start = utcnow()
    for hours in range(3):
        service.recompute(db, lead=lead, trigger=f"t{hours}", now=start + timedelta(hours=hours))
    db.commit()
    url = f"/api/v1/leads/{lead.id}/score/history"

    first = await client.get(url, params={"limit": 2}, headers=tenant.headers)
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["total"] == 3
    assert [s["trigger"] for s in page["items"]] == ["t2", "t1"]
    assert page["items"][0]["breakdown"]["components"][0]["name"] == "qualification"
    rest = await client.get(url, params={"limit": 2, "offset": 2}, headers=tenant.headers)
    assert [s["trigger"] for s in rest.json()["items"]] == ["t0"]
    oldest_first = await client.get(url, params={"order": "asc"}, headers=tenant.headers)
    assert [s["trigger"] for s in oldest_first.json()["items"]] == ["t0", "t1", "t2"]
    bad_sort = await client.get(url, params={"sort": "score"}, headers=tenant.headers)
    assert bad_sort.status_code == 422
    assert bad_sort.json()["errors"][0]["field"] == "sort"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/leads/{id}/score"),
        ("GET", "/api/v1/leads/{id}/score/history"),
        ("POST", "/api/v1/leads/{id}/score/recompute"),
    ],
)
async def test_another_brokers_lead_is_not_found(
    client: httpx.AsyncClient,
    db: Session,
    tenant: Tenant,
    other_tenant: Tenant,
    method: str,
    path: str,
) -> None:
    lead = make_lead(db, tenant.id)
    service.recompute(db, lead=lead, trigger="lead.create")
    gone = make_lead(db, tenant.id, deleted_at=utcnow())
    db.commit()

    theirs = await client.request(method, path.format(id=lead.id), headers=other_tenant.headers)
    assert theirs.status_code == 404
    assert theirs.headers["content-type"].startswith("application/problem+json")
    missing = await client.request(method, path.format(id=gone.id), headers=tenant.headers)
    assert missing.status_code == 404
    anonymous = await client.request(method, path.format(id=lead.id))
    assert anonymous.status_code == 401
    assert snapshot_count(db, lead.id) == 1


# --- weights --------------------------------------------------------------------------


async def test_default_weights(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/api/v1/scoring/weights", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["customised"] is False
    assert body["components"] == {
        "qualification": 25.0,
        "engagement": 20.0,
        "recency": 15.0,
        "intent": 15.0,
        "budget_fit": 10.0,
        "stage": 15.0,
    }
    assert sum(body["points"].values()) == pytest.approx(100)
    assert body["recency_half_life_days"] == 14
    assert body["engagement_window_days"] == 30
    assert body["stage_multipliers"]["negotiating"] == 1.2
    assert body["fixed_scores"] == {"won": 100, "lost": 0}
    assert body["target_price"] is None


async def test_put_weights_rescores_the_brokers_leads(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine = make_lead(db, tenant.id, intent=0.6)
    won = make_lead(db, tenant.id, stage=Stage.won)
    theirs = make_lead(db, other_tenant.id, intent=0.6)
    db.commit()
    body = {
        "components": {
            "qualification": 0,
            "engagement": 0,
            "recency": 0,
            "intent": 2,
            "budget_fit": 0,
            "stage": 0,
        },
        "recency_half_life_days": 7,
        "stage_multipliers": {"new": 1.5},
        "target_price": {"min": "150000", "max": "400000", "currency": "eur"},
    }

    response = await client.put("/api/v1/scoring/weights", json=body, headers=tenant.headers)

    assert response.status_code == 200, response.text
    out = response.json()
    assert out["rescore"] == "in_process"
    assert out["customised"] is True
    assert out["points"]["intent"] == 100
    assert out["stage_multipliers"]["new"] == 1.5
    assert out["stage_multipliers"]["visited"] == 1.15  # left out: default
    assert out["target_price"] == {"min": "150000", "max": "400000", "currency": "EUR"}
    # the background rescore ran after the response: 0.6 × 100 × 1.5
    db.expire_all()
    assert db.get(Lead, mine.id).score == 90  # type: ignore[union-attr]
    assert snapshot_count(db, won.id) == 0
    assert snapshot_count(db, theirs.id) == 0
    latest = service.latest_snapshot(db, broker_id=tenant.id, lead_id=mine.id)
    assert latest is not None
    assert latest.trigger == "weights"

    audit = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "scoring.weights.update"
        )
    ).one()
    assert audit.diff is not None
    assert audit.diff["components.intent"] == [15.0, 2.0]
    assert audit.diff["target_price.currency"] == [None, "EUR"]
    assert audit.actor_type.value == "api_key"

    read_back = await client.get("/api/v1/scoring/weights", headers=tenant.headers)
    assert read_back.json() == {k: v for k, v in out.items() if k != "rescore"}
    untouched = await client.get("/api/v1/scoring/weights", headers=other_tenant.headers)
    assert untouched.json()["customised"] is False


async def test_put_the_same_weights_again_changes_nothing(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    body = {"recency_half_life_days": 30}
    first = await client.put("/api/v1/scoring/weights", json=body, headers=tenant.headers)
    again = await client.put("/api/v1/scoring/weights", json=body, headers=tenant.headers)
    assert first.json()["rescore"] == "in_process"
    assert again.json()["rescore"] == "not_needed"
    reset = await client.put("/api/v1/scoring/weights", json={}, headers=tenant.headers)
    assert reset.json()["customised"] is False
    assert reset.json()["rescore"] == "in_process"
    updates = db.scalar(
        select(func.count()).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "scoring.weights.update"
        )
    )
    assert updates == 2


async def test_put_weights_with_redis_queues_the_celery_task(
    client: httpx.AsyncClient,
    db: Session,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lead = make_lead(db, tenant.id)
    db.commit()
    queued: list[int] = []
    settings = get_settings().model_copy(update={"redis_url": "redis://127.0.0.1:6379/15"})
    monkeypatch.setattr("crm.scoring.views.get_settings", lambda: settings)
    monkeypatch.setattr(tasks.rescore_broker_task, "delay", queued.append)

    response = await client.put(
        "/api/v1/scoring/weights", json={"engagement_window_days": 7}, headers=tenant.headers
    )

    assert response.json()["rescore"] == "queued"
    assert queued == [tenant.id]
    assert snapshot_count(db, lead.id) == 0  # the worker does it, not the request


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"components": {"intent": -1}}, "components.intent"),
        ({"components": {"intent": "lots"}}, "components.intent"),
        (
            {
                "components": dict.fromkeys(
                    ["qualification", "engagement", "recency", "intent", "budget_fit", "stage"], 0
                )
            },
            "components",
        ),
        ({"components": {"charm": 3}}, "components.charm"),
        ({"recency_half_life_days": 0}, "recency_half_life_days"),
        ({"engagement_window_days": 0}, "engagement_window_days"),
        ({"stage_multipliers": {"visited": 2.5}}, "stage_multipliers.visited"),
        ({"stage_multipliers": {"won": 1.0}}, "stage_multipliers"),
        ({"stage_multipliers": {"limbo": 1.0}}, "stage_multipliers.limbo.[key]"),
        ({"target_price": {"min": 500, "max": 100, "currency": "EUR"}}, "target_price"),
        ({"target_price": {"min": 100, "max": 500, "currency": "euro"}}, "target_price.currency"),
        ({"target_price": {"min": -1, "max": 500, "currency": "EUR"}}, "target_price.min"),
        ({"half_life": 3}, "half_life"),
    ],
)
async def test_invalid_weights_are_422_with_field_errors_and_change_nothing(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    response = await client.put("/api/v1/scoring/weights", json=body, headers=tenant.headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in problem["errors"]], problem["errors"]
    current = await client.get("/api/v1/scoring/weights", headers=tenant.headers)
    assert current.json()["customised"] is False
    assert (
        db.scalar(
            select(func.count()).where(
                AuditLog.broker_id == tenant.id, AuditLog.action == "scoring.weights.update"
            )
        )
        == 0
    )


async def test_weights_need_a_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/scoring/weights")).status_code == 401
    assert (await client.put("/api/v1/scoring/weights", json={})).status_code == 401
