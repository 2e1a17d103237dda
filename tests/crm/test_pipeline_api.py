"""The pipeline routes through the real app: shapes, status codes and tenancy."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import ActorType, AuditLog
from crm.leads.models import Lead
from crm.pipeline import service
from crm.pipeline.stages import DEFAULT_ROT_DAYS, Stage
from crm.timeutil import utcnow
from tests.conftest import Tenant

ACTOR = Actor.system("tests")
_numbers = itertools.count(2_000_000)


def make_lead(
    db: Session,
    broker_id: int,
    *,
    at: datetime | None = None,
    path: tuple[Stage, ...] = (),
    **fields: Any,
) -> Lead:
    """A committed lead that entered at `at` (default: an hour ago) and then took `path`."""
    start = at or utcnow() - timedelta(hours=1)
    lead = Lead(broker_id=broker_id, phone=f"+3460{next(_numbers)}", **fields)
    lead.created_at = start
    db.add(lead)
    db.flush()
    service.enter_initial(db, lead=lead, actor=ACTOR, at=start)
    for stage in path:
        service.transition(db, lead=lead, target=stage, actor=ACTOR)
    db.commit()
    return lead


def set_last_activity(db: Session, lead: Lead, *, days_ago: float) -> None:
    lead.last_activity_at = utcnow() - timedelta(days=days_ago)
    db.commit()


# --- POST /leads/{id}/stage and GET /leads/{id}/stage-history ------------------------


async def test_change_stage_and_read_history(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, full_name="Ana")
    response = await client.post(
        f"/api/v1/leads/{lead.id}/stage",
        json={"stage": "qualified", "reason": "budget confirmed"},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["lead_id"], body["previous_stage"], body["stage"]) == (lead.id, "new", "qualified")
    assert body["stay"]["stage"] == "qualified"
    assert body["stay"]["from_stage"] == "new"
    assert body["stay"]["reason"] == "budget confirmed"
    assert body["stay"]["is_open"] is True
    assert body["stay"]["actor_type"] == "api_key"
    assert body["stage_entered_at"] == body["stay"]["entered_at"]

    history = await client.get(f"/api/v1/leads/{lead.id}/stage-history", headers=tenant.headers)
    assert history.status_code == 200
    page = history.json()
    assert page["total"] == 2
    first, second = page["items"]
    assert (first["stage"], first["is_open"], first["reason"]) == ("new", False, "created")
    assert (second["stage"], second["is_open"]) == ("qualified", True)
    assert first["exited_at"] == second["entered_at"]
    assert 3590 <= first["seconds_in_stage"] <= 3700  # an hour in `new`
    assert 0 <= second["seconds_in_stage"] < 60  # so far, in `qualified`

    db.expire_all()
    stored = db.get(Lead, lead.id)
    assert stored is not None
    assert stored.stage is Stage.qualified
    audit = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "lead.stage_change"
        )
    ).one()
    assert audit.actor_type is ActorType.api_key
    assert audit.diff == {"stage": ["new", "qualified"], "reason": "budget confirmed"}


async def test_reason_defaults_to_manual(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    response = await client.post(
        f"/api/v1/leads/{lead.id}/stage", json={"stage": "contacted"}, headers=tenant.headers
    )
    assert response.status_code == 200
    assert response.json()["stay"]["reason"] == "manual"


async def test_history_pages_and_can_be_read_newest_first(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    path = (Stage.contacted, Stage.lost, Stage.contacted, Stage.qualified)
    lead = make_lead(db, tenant.id, path=path)
    url = f"/api/v1/leads/{lead.id}/stage-history"
    oldest = (await client.get(url, params={"limit": 2}, headers=tenant.headers)).json()
    assert oldest["total"] == 5
    assert [i["stage"] for i in oldest["items"]] == ["new", "contacted"]
    rest = (await client.get(url, params={"limit": 2, "offset": 2}, headers=tenant.headers)).json()
    assert [i["stage"] for i in rest["items"]] == ["lost", "contacted"]
    newest = (await client.get(url, params={"order": "desc"}, headers=tenant.headers)).json()
    assert [i["stage"] for i in newest["items"]] == [
        "qualified",
        "contacted",
        "lost",
        "contacted",
        "new",
    ]
    bad_sort = await client.get(url, params={"sort": "stage"}, headers=tenant.headers)
    assert bad_sort.status_code == 422


async def test_an_illegal_move_is_409_with_the_allowed_list_and_changes_nothing(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, path=(Stage.lost,))
    response = await client.post(
        f"/api/v1/leads/{lead.id}/stage", json={"stage": "won"}, headers=tenant.headers
    )
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["allowed"] == ["contacted"]
    assert (body["current"], body["target"]) == ("lost", "won")
    history = await client.get(f"/api/v1/leads/{lead.id}/stage-history", headers=tenant.headers)
    assert [i["stage"] for i in history.json()["items"]] == ["new", "lost"]

    same = await client.post(
        f"/api/v1/leads/{lead.id}/stage", json={"stage": "lost"}, headers=tenant.headers
    )
    assert same.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stage": "cold"}, "stage"),
        ({"stage": "WON"}, "stage"),
        ({}, "stage"),
        ({"stage": "contacted", "reason": ""}, "reason"),
        ({"stage": "contacted", "reason": "x" * 101}, "reason"),
        ({"stage": "contacted", "at": "2030-01-01T00:00:00Z"}, "at"),
    ],
)
async def test_bad_stage_bodies_are_422(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    lead = make_lead(db, tenant.id)
    response = await client.post(
        f"/api/v1/leads/{lead.id}/stage", json=body, headers=tenant.headers
    )
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_lead_routes_are_404_for_another_brokers_lead(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = make_lead(db, other_tenant.id)
    deleted = make_lead(db, tenant.id)
    deleted.deleted_at = utcnow()
    db.commit()
    for lead_id in (theirs.id, deleted.id, 10**12):
        moved = await client.post(
            f"/api/v1/leads/{lead_id}/stage", json={"stage": "contacted"}, headers=tenant.headers
        )
        listed = await client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=tenant.headers)
        assert moved.status_code == listed.status_code == 404
        assert moved.json()["detail"] == f"lead {lead_id} not found"
    # Even a bad body does not tell the intruder the lead exists.
    bad = await client.post(
        f"/api/v1/leads/{theirs.id}/stage", json={"stage": "cold"}, headers=tenant.headers
    )
    assert bad.status_code == 404
    db.expire_all()
    assert [s.stage for s in service.history(db, lead=theirs)] == [Stage.new]


async def test_every_pipeline_route_needs_a_key(client: httpx.AsyncClient) -> None:
    for method, url in [
        ("POST", "/api/v1/leads/1/stage"),
        ("GET", "/api/v1/leads/1/stage-history"),
        ("GET", "/api/v1/pipeline/stages"),
        ("GET", "/api/v1/pipeline/metrics"),
        ("GET", "/api/v1/pipeline/rotting"),
        ("GET", "/api/v1/pipeline/rot-days"),
        ("PUT", "/api/v1/pipeline/rot-days"),
    ]:
        response = await client.request(method, url, json={})
        assert response.status_code == 401, (method, url)


# --- GET /pipeline/stages --------------------------------------------------------------


async def test_stages_describe_the_table(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/api/v1/pipeline/stages", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["funnel"] == [
        "new",
        "contacted",
        "qualified",
        "visit_scheduled",
        "visited",
        "negotiating",
        "won",
    ]
    by_stage = {s["stage"]: s for s in body["stages"]}
    assert list(by_stage) == [*body["funnel"], "lost"]
    assert by_stage["won"] == {
        "stage": "won",
        "rank": 6,
        "is_open": False,
        "is_final": True,
        "allowed": [],
        "rot_days_default": None,
    }
    assert by_stage["lost"]["allowed"] == ["contacted"]
    assert by_stage["lost"]["is_final"] is False
    assert by_stage["new"]["allowed"] == [
        "contacted",
        "qualified",
        "visit_scheduled",
        "visited",
        "negotiating",
        "won",
        "lost",
    ]
    assert by_stage["visit_scheduled"]["rot_days_default"] == 3
    assert body["auto_advance"]["visit_booked"] == "visit_scheduled"
    assert len(body["auto_advance"]) == 6


# --- GET /pipeline/metrics ------------------------------------------------------------


async def test_metrics_default_to_the_last_30_days(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    make_lead(db, tenant.id, path=(Stage.contacted,))
    make_lead(db, tenant.id, at=utcnow() - timedelta(days=40))
    response = await client.get("/api/v1/pipeline/metrics", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    since, until = (datetime.fromisoformat(body[k]) for k in ("since", "until"))
    assert until - since == timedelta(days=30)
    assert abs((utcnow() - until).total_seconds()) < 60
    stages = {s["stage"]: s for s in body["stages"]}
    assert (stages["new"]["current"], stages["new"]["entered"]) == (1, 1)
    assert (stages["contacted"]["current"], stages["contacted"]["entered"]) == (1, 1)
    conversion = {c["from_stage"]: c for c in body["conversion"]}
    assert conversion["new"] == {
        "from_stage": "new",
        "to_stage": "contacted",
        "entered": 1,
        "converted": 1,
        "rate": 1.0,
    }
    assert (conversion["contacted"]["entered"], conversion["contacted"]["rate"]) == (1, 0.0)
    assert conversion["qualified"]["rate"] is None
    tis = {t["stage"]: t for t in body["time_in_stage"]}
    assert tis["new"]["stays"] == 1
    assert 3590 <= tis["new"]["median_seconds"] == tis["new"]["mean_seconds"] <= 3700
    assert (body["won"], body["lost"], body["lost_from"]) == (0, 0, {})


async def test_metrics_take_a_window_and_show_only_the_callers_data(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    make_lead(db, tenant.id, at=utcnow() - timedelta(days=100), path=(Stage.lost,))
    params = {"since": (utcnow() - timedelta(days=1)).isoformat(), "until": utcnow().isoformat()}
    mine = (
        await client.get("/api/v1/pipeline/metrics", params=params, headers=tenant.headers)
    ).json()
    assert (mine["lost"], mine["lost_from"]) == (1, {"new": 1})
    theirs = (
        await client.get("/api/v1/pipeline/metrics", params=params, headers=other_tenant.headers)
    ).json()
    assert theirs["lost"] == 0
    assert all(s["current"] == s["entered"] == 0 for s in theirs["stages"])
    older = {"since": "2000-01-01T00:00:00+00:00", "until": "2000-02-01T00:00:00+01:00"}
    empty = (
        await client.get("/api/v1/pipeline/metrics", params=older, headers=tenant.headers)
    ).json()
    assert empty["until"] == "2000-01-31T23:00:00Z"
    assert empty["lost"] == 0
    assert {s["stage"]: s["current"] for s in empty["stages"]}["lost"] == 1  # current: not windowed


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2030-01-01T00:00:00"}, "since"),  # naive
        ({"until": "2030-01-01"}, "until"),  # a date, not a time
        ({"since": "yesterday"}, "since"),
        ({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "since"),
        ({"since": "2030-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"}, "since"),
    ],
)
async def test_bad_metric_windows_are_422(
    client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], field: str
) -> None:
    response = await client.get("/api/v1/pipeline/metrics", params=params, headers=tenant.headers)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


# --- GET /pipeline/rotting and /pipeline/rot-days ---------------------------------------


async def test_rotting_counts_and_pages_the_stale_leads(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    fresh_new = make_lead(db, tenant.id, full_name="Fresh")
    stale_new = make_lead(db, tenant.id, full_name="Stale new")
    staler_new = make_lead(db, tenant.id, full_name="Staler new")
    stale_contacted = make_lead(db, tenant.id, full_name="Stale contacted", path=(Stage.contacted,))
    young_contacted = make_lead(db, tenant.id, path=(Stage.contacted,))
    old_won = make_lead(db, tenant.id, path=(Stage.won,))
    deleted = make_lead(db, tenant.id)
    set_last_activity(db, fresh_new, days_ago=1)
    set_last_activity(db, stale_new, days_ago=3)
    set_last_activity(db, staler_new, days_ago=9.5)
    set_last_activity(db, stale_contacted, days_ago=6)
    set_last_activity(db, young_contacted, days_ago=4)
    set_last_activity(db, old_won, days_ago=300)
    set_last_activity(db, deleted, days_ago=30)
    deleted.deleted_at = utcnow()
    db.commit()
    other_stale = make_lead(db, other_tenant.id)
    set_last_activity(db, other_stale, days_ago=30)

    response = await client.get("/api/v1/pipeline/rotting", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["leads"] is None
    assert body["total"] == 3
    assert body["stages"] == [
        {
            "stage": s.value,
            "threshold_days": DEFAULT_ROT_DAYS[s],
            "rotting": {Stage.new: 2, Stage.contacted: 1}.get(s, 0),
        }
        for s in (
            Stage.new,
            Stage.contacted,
            Stage.qualified,
            Stage.visit_scheduled,
            Stage.visited,
            Stage.negotiating,
        )
    ]

    listed = await client.get(
        "/api/v1/pipeline/rotting", params={"include_leads": "true"}, headers=tenant.headers
    )
    leads = listed.json()["leads"]
    assert leads["total"] == 3
    assert [i["full_name"] for i in leads["items"]] == [
        "Staler new",
        "Stale contacted",
        "Stale new",
    ]
    assert [i["days_inactive"] for i in leads["items"]] == [9, 6, 3]
    first = leads["items"][0]
    assert (first["id"], first["stage"], first["phone"]) == (staler_new.id, "new", staler_new.phone)

    only_new = await client.get(
        "/api/v1/pipeline/rotting",
        params={"include_leads": "true", "stage": "new", "order": "desc", "limit": 1},
        headers=tenant.headers,
    )
    page = only_new.json()["leads"]
    assert page["total"] == 2
    assert [i["full_name"] for i in page["items"]] == ["Stale new"]
    assert only_new.json()["total"] == 3  # the counts are never filtered

    won = await client.get(
        "/api/v1/pipeline/rotting",
        params={"include_leads": "true", "stage": "won"},
        headers=tenant.headers,
    )
    assert won.json()["leads"] == {"items": [], "total": 0, "limit": 50, "offset": 0}
    bad = await client.get(
        "/api/v1/pipeline/rotting", params={"stage": "cold"}, headers=tenant.headers
    )
    assert bad.status_code == 422


async def test_rot_days_override_changes_what_rots(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, path=(Stage.contacted,))
    set_last_activity(db, lead, days_ago=3)
    before = (await client.get("/api/v1/pipeline/rotting", headers=tenant.headers)).json()
    assert before["total"] == 0

    response = await client.put(
        "/api/v1/pipeline/rot-days", json={"contacted": 2, "new": 1}, headers=tenant.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["overrides"] == {"new": 1, "contacted": 2}
    assert body["rot_days"] == {
        **{s.value: d for s, d in DEFAULT_ROT_DAYS.items()},
        "new": 1,
        "contacted": 2,
    }
    assert body["defaults"]["contacted"] == 5
    read = await client.get("/api/v1/pipeline/rot-days", headers=tenant.headers)
    assert read.json() == body

    after = (await client.get("/api/v1/pipeline/rotting", headers=tenant.headers)).json()
    assert after["total"] == 1
    assert {s["stage"]: s["threshold_days"] for s in after["stages"]}["contacted"] == 2
    others = (await client.get("/api/v1/pipeline/rot-days", headers=other_tenant.headers)).json()
    assert others["overrides"] == {}

    audit = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "broker.rot_days.update"
        )
    ).one()
    assert audit.diff == {"rot_days": [None, {"new": 1, "contacted": 2}]}
    assert audit.actor_type is ActorType.api_key

    cleared = await client.put("/api/v1/pipeline/rot-days", json={}, headers=tenant.headers)
    assert cleared.json()["overrides"] == {}
    assert cleared.json()["rot_days"]["contacted"] == 5


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"cold": 3}, ["cold"]),
        ({"won": 3, "lost": 3}, ["lost", "won"]),
        ({"new": 0}, ["new"]),
        ({"new": 366}, ["new"]),
        ({"new": "3"}, ["new"]),
        ({"new": True}, ["new"]),
        ({"new": 2.5}, ["new"]),
        ({"new": 2, "cold": 1, "negotiating": -1}, ["cold", "negotiating"]),
        (["new", 3], ["body"]),
    ],
)
async def test_bad_rot_days_are_422_and_keep_the_old_ones(
    client: httpx.AsyncClient, tenant: Tenant, body: Any, fields: list[str]
) -> None:
    ok = await client.put("/api/v1/pipeline/rot-days", json={"new": 4}, headers=tenant.headers)
    assert ok.status_code == 200
    response = await client.put("/api/v1/pipeline/rot-days", json=body, headers=tenant.headers)
    assert response.status_code == 422
    assert sorted(e["field"] for e in response.json()["errors"]) == fields
    kept = await client.get("/api/v1/pipeline/rot-days", headers=tenant.headers)
    assert kept.json()["overrides"] == {"new": 4}
