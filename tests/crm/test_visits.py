"""Visits: status rules (pure), booking and changes through the API and the service."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import ActorType, AuditLog
from crm.db import get_sessionmaker
from crm.errors import Conflict, InvalidInput, NotFound
from crm.leads.models import ActivityKind, Lead, LeadActivity
from crm.pipeline.service import enter_initial
from crm.pipeline.stages import Stage
from crm.scoring.models import ScoreSnapshot
from crm.timeutil import utcnow
from crm.visits import service as visits
from crm.visits import states
from crm.visits.models import VisitStatus
from tests.conftest import Tenant


def make_lead(db: Session, broker_id: int, **fields: object) -> Lead:
    lead = Lead(
        broker_id=broker_id,
        phone=f"+3461{random.randint(1000000, 9999999)}",
        full_name="Ana García",
        **fields,
    )
    db.add(lead)
    db.flush()
    enter_initial(db, lead=lead, actor=Actor.system())
    db.commit()
    return lead


def future(days: int = 3, hour: int = 10, minute: int = 0) -> datetime:
    day = (utcnow() + timedelta(days=days)).date()
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def visit_activities(db: Session, lead: Lead) -> list[LeadActivity]:
    return list(
        db.scalars(
            select(LeadActivity)
            .where(LeadActivity.lead_id == lead.id, LeadActivity.kind == ActivityKind.visit)
            .order_by(LeadActivity.id)
        )
    )


async def book(
    client: httpx.AsyncClient, tenant: Tenant, lead: Lead, at: datetime, **body: object
) -> httpx.Response:
    return await client.post(
        "/api/v1/visits",
        json={"lead_id": lead.id, "scheduled_at": at.isoformat(), **body},
        headers=tenant.headers,
    )


# -- pure ---------------------------------------------------------------------------------


def test_a_scheduled_visit_can_end_three_ways() -> None:
    for target in (VisitStatus.completed, VisitStatus.cancelled, VisitStatus.no_show):
        states.check(VisitStatus.scheduled, target)
    states.check(VisitStatus.scheduled, VisitStatus.scheduled)


@pytest.mark.parametrize("final", sorted(states.FINAL))
def test_nothing_leaves_a_final_status(final: VisitStatus) -> None:
    states.check(final, final)
    for target in VisitStatus:
        if target is not final:
            with pytest.raises(states.VisitTransitionError) as exc:
                states.check(final, target)
            assert exc.value.allowed == []


# -- booking ------------------------------------------------------------------------------


async def test_booking_logs_audits_and_advances_the_lead(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, time_zone="Europe/Madrid")
    at = future(hour=15, minute=30)
    r = await book(
        client, tenant, lead, at, duration_minutes=60, location="Calle Mayor 1", property_ref="P-7"
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "scheduled"
    assert datetime.fromisoformat(body["scheduled_at"]) == at
    assert datetime.fromisoformat(body["ends_at"]) == at + timedelta(minutes=60)
    assert body["location"] == "Calle Mayor 1"

    db.refresh(lead)
    assert lead.stage is Stage.visit_scheduled
    [activity] = visit_activities(db, lead)
    local = at.astimezone(ZoneInfo("Europe/Madrid"))
    assert activity.body == f"Visit booked for {local:%Y-%m-%d %H:%M %Z} at Calle Mayor 1"
    assert activity.data is not None
    assert activity.data["visit_id"] == body["id"]
    assert (
        db.scalar(
            select(AuditLog.action).where(
                AuditLog.object_type == "visit", AuditLog.object_id == str(body["id"])
            )
        )
        == "visit.create"
    )
    triggers = db.scalars(select(ScoreSnapshot.trigger).where(ScoreSnapshot.lead_id == lead.id))
    assert any("visit.booked" in t for t in triggers)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scheduled_at": "2020-01-01T10:00:00+00:00"}, "scheduled_at"),
        ({"scheduled_at": "2099-01-01T10:00:00"}, "scheduled_at"),  # naive
        ({"duration_minutes": 10}, "duration_minutes"),
        ({"duration_minutes": 481}, "duration_minutes"),
        ({"location": "x" * 301}, "location"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_booking_refuses_bad_input_and_writes_nothing(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, change: dict[str, object], field: str
) -> None:
    lead = make_lead(db, tenant.id)
    r = await client.post(
        "/api/v1/visits",
        json={"lead_id": lead.id, "scheduled_at": future().isoformat(), **change},
        headers=tenant.headers,
    )
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    assert visit_activities(db, lead) == []
    db.refresh(lead)
    assert lead.stage is Stage.new


async def test_booking_for_another_brokers_lead_is_not_found(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    foreign = make_lead(db, other_tenant.id)
    r = await book(client, tenant, foreign, future())
    assert r.status_code == 404


async def test_a_do_not_call_lead_can_still_book(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, do_not_call=True, dnc_reason="asked")
    r = await book(client, tenant, lead, future())
    assert r.status_code == 201


async def test_overlapping_visits_for_one_lead_are_refused(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    other_lead = make_lead(db, tenant.id)
    first = await book(client, tenant, lead, future(hour=10), duration_minutes=60)
    assert first.status_code == 201
    clash = await book(client, tenant, lead, future(hour=10, minute=30))
    assert clash.status_code == 409
    assert clash.json()["conflicting_visit_id"] == first.json()["id"]
    earlier_clash = await book(client, tenant, lead, future(hour=9, minute=30), duration_minutes=45)
    assert earlier_clash.status_code == 409
    back_to_back = await book(client, tenant, lead, future(hour=11))
    assert back_to_back.status_code == 201
    ends_before = await book(client, tenant, lead, future(hour=9), duration_minutes=60)
    assert ends_before.status_code == 201
    another_lead = await book(client, tenant, other_lead, future(hour=10, minute=30))
    assert another_lead.status_code == 201

    cancel = await client.patch(
        f"/api/v1/visits/{first.json()['id']}",
        json={"status": "cancelled"},
        headers=tenant.headers,
    )
    assert cancel.status_code == 200
    rebooked = await book(client, tenant, lead, future(hour=10, minute=15), duration_minutes=30)
    assert rebooked.status_code == 201


def test_concurrent_bookings_for_one_lead_are_checked_in_turn(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    at = future(hour=12)
    visits.book(db, broker_id=tenant.id, lead_id=lead.id, scheduled_at=at, actor=Actor.agent("c1"))
    result: dict[str, object] = {}

    def second_booking() -> None:
        with get_sessionmaker()() as s2:
            try:
                visits.book(
                    s2,
                    broker_id=tenant.id,
                    lead_id=lead.id,
                    scheduled_at=at + timedelta(minutes=10),
                    actor=Actor.agent("c2"),
                )
                s2.commit()
                result["outcome"] = "booked"
            except Conflict:
                result["outcome"] = "conflict"

    thread = threading.Thread(target=second_booking)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "the second booking should wait on the lead row lock"
    db.commit()
    thread.join(timeout=10)
    assert result["outcome"] == "conflict"


def test_the_agent_books_through_the_service(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    visit = visits.book(
        db,
        broker_id=tenant.id,
        lead_id=lead.id,
        scheduled_at=future(),
        location="  Calle Sol 3 ",
        actor=Actor.agent("call:42"),
    )
    db.commit()
    assert visit.location == "Calle Sol 3"
    row = db.scalars(
        select(AuditLog).where(AuditLog.object_type == "visit", AuditLog.object_id == str(visit.id))
    ).one()
    assert (row.actor_type, row.actor_id) == (ActorType.agent, "call:42")
    with pytest.raises(InvalidInput):
        visits.book(
            db,
            broker_id=tenant.id,
            lead_id=lead.id,
            scheduled_at=future(),
            duration_minutes=5,
            actor=Actor.agent("call:42"),
        )
    with pytest.raises(NotFound):
        visits.book(
            db, broker_id=tenant.id, lead_id=-1, scheduled_at=future(), actor=Actor.agent("x")
        )


# -- reading -------------------------------------------------------------------------------


async def test_list_and_get_visits(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    ana = make_lead(db, tenant.id)
    luis = make_lead(db, tenant.id)
    a1 = (await book(client, tenant, ana, future(days=2))).json()
    a2 = (await book(client, tenant, ana, future(days=5))).json()
    l1 = (await book(client, tenant, luis, future(days=3))).json()
    await client.patch(
        f"/api/v1/visits/{a2['id']}", json={"status": "cancelled"}, headers=tenant.headers
    )

    async def ids(**params: str | int | list[str]) -> list[int]:
        r = await client.get("/api/v1/visits", params=params, headers=tenant.headers)
        assert r.status_code == 200, r.text
        return [v["id"] for v in r.json()["items"]]

    assert await ids(order="asc") == [a1["id"], l1["id"], a2["id"]]
    assert await ids(lead_id=ana.id, order="asc") == [a1["id"], a2["id"]]
    assert await ids(status="cancelled") == [a2["id"]]
    assert await ids(status=["scheduled"], order="asc") == [a1["id"], l1["id"]]
    window = {"from": future(days=3, hour=0).isoformat(), "to": future(days=5, hour=0).isoformat()}
    assert await ids(**window) == [l1["id"]]
    bad = await client.get(
        "/api/v1/visits", params={"from": "2025-01-01T00:00:00"}, headers=tenant.headers
    )
    assert bad.status_code == 422

    one = await client.get(f"/api/v1/visits/{a1['id']}", headers=tenant.headers)
    assert one.json() == a1
    hidden = await client.get(f"/api/v1/visits/{a1['id']}", headers=other_tenant.headers)
    assert hidden.status_code == 404
    foreign_list = await client.get("/api/v1/visits", headers=other_tenant.headers)
    assert foreign_list.json()["total"] == 0
    patch_foreign = await client.patch(
        f"/api/v1/visits/{a1['id']}", json={"notes": "x"}, headers=other_tenant.headers
    )
    assert patch_foreign.status_code == 404


# -- changing ------------------------------------------------------------------------------


async def test_reschedule(client: httpx.AsyncClient, db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    v1 = (await book(client, tenant, lead, future(days=2))).json()
    v2 = (await book(client, tenant, lead, future(days=4))).json()
    url = f"/api/v1/visits/{v1['id']}"

    moved = await client.patch(
        url, json={"scheduled_at": future(days=3).isoformat()}, headers=tenant.headers
    )
    assert moved.status_code == 200, moved.text
    assert datetime.fromisoformat(moved.json()["scheduled_at"]) == future(days=3)
    assert (visit_activities(db, lead)[-1].body or "").startswith("Visit rescheduled to ")

    past = await client.patch(
        url, json={"scheduled_at": "2020-01-01T10:00:00Z"}, headers=tenant.headers
    )
    assert past.status_code == 422
    clash = await client.patch(
        url, json={"scheduled_at": future(days=4).isoformat()}, headers=tenant.headers
    )
    assert clash.status_code == 409
    assert clash.json()["conflicting_visit_id"] == v2["id"]
    longer = await client.patch(url, json={"duration_minutes": 90}, headers=tenant.headers)
    assert longer.json()["duration_minutes"] == 90
    null = await client.patch(url, json={"scheduled_at": None}, headers=tenant.headers)
    assert null.status_code == 422


async def test_complete_then_nothing_but_notes(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    visit = (await book(client, tenant, lead, future())).json()
    url = f"/api/v1/visits/{visit['id']}"

    done = await client.patch(url, json={"status": "completed"}, headers=tenant.headers)
    assert done.status_code == 200
    db.refresh(lead)
    assert lead.stage is Stage.visited
    assert visit_activities(db, lead)[-1].body == "Visit completed"

    again = await client.patch(url, json={"status": "completed"}, headers=tenant.headers)
    assert again.status_code == 200  # staying put is not a transition
    undo = await client.patch(url, json={"status": "cancelled"}, headers=tenant.headers)
    assert undo.status_code == 409
    assert undo.json()["allowed"] == []
    assert undo.json()["current"] == "completed"
    move = await client.patch(
        url, json={"scheduled_at": future(days=9).isoformat()}, headers=tenant.headers
    )
    assert move.status_code == 409
    notes = await client.patch(url, json={"notes": "Loved the terrace."}, headers=tenant.headers)
    assert notes.status_code == 200
    assert notes.json()["notes"] == "Loved the terrace."

    actions = list(
        db.scalars(
            select(AuditLog.action)
            .where(AuditLog.object_type == "visit", AuditLog.object_id == str(visit["id"]))
            .order_by(AuditLog.id)
        )
    )
    assert actions == ["visit.create", "visit.update", "visit.update"]


async def test_cancel_and_no_show_leave_the_stage_alone(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    first = (await book(client, tenant, lead, future(days=2))).json()
    second = (await book(client, tenant, lead, future(days=3))).json()
    for visit, status in ((first, "cancelled"), (second, "no_show")):
        r = await client.patch(
            f"/api/v1/visits/{visit['id']}", json={"status": status}, headers=tenant.headers
        )
        assert r.json()["status"] == status
    db.refresh(lead)
    assert lead.stage is Stage.visit_scheduled
    bodies = [a.body for a in visit_activities(db, lead)]
    assert bodies[-2:] == ["Visit cancelled", "Lead did not show up for the visit"]


async def test_visits_cannot_be_deleted(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id)
    visit = (await book(client, tenant, lead, future())).json()
    r = await client.delete(f"/api/v1/visits/{visit['id']}", headers=tenant.headers)
    assert r.status_code == 405
