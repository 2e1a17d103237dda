"""Stage changes in the database: history rows, timeline, audit, score, concurrency."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.brokers.models import Broker
from crm.db import get_sessionmaker
from crm.errors import Conflict, InvalidInput
from crm.leads.models import ActivityKind, Lead, LeadActivity
from crm.pipeline import service
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.rules import PipelineEvent
from crm.pipeline.stages import DEFAULT_ROT_DAYS, Stage
from crm.scoring.models import ScoreSnapshot
from crm.timeutil import utcnow
from tests.conftest import Tenant

ACTOR = Actor.system("tests")
_numbers = itertools.count(1_000_000)


def make_lead(db: Session, broker_id: int, *, at: datetime | None = None, **fields: Any) -> Lead:
    """A lead as the CRUD would leave it: flushed, with its first stay open."""
    lead = Lead(broker_id=broker_id, phone=f"+3460{next(_numbers)}", **fields)
    if at is not None:
        lead.created_at = lead.last_activity_at = at
    db.add(lead)
    db.flush()
    service.enter_initial(db, lead=lead, actor=ACTOR, at=at)
    db.flush()
    return lead


def stays(db: Session, lead: Lead) -> list[LeadStageHistory]:
    return list(service.history(db, lead=lead))


def stage_of(lead: Lead) -> Stage:
    """The lead's stage, read afresh (a plain attribute read stays narrowed for mypy)."""
    return lead.stage


def count(db: Session, model: Any, *where: Any) -> int:
    return db.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_enter_initial_opens_the_first_stay(db: Session, tenant: Tenant) -> None:
    start = utcnow() - timedelta(days=3)
    lead = make_lead(db, tenant.id, at=start)
    (first,) = stays(db, lead)
    assert (first.stage, first.from_stage, first.reason) == (Stage.new, None, "created")
    assert first.entered_at == start == lead.stage_entered_at
    assert first.exited_at is None
    assert service.open_stay(db, lead_id=lead.id) is first


def test_transitions_close_one_stay_and_open_the_next(db: Session, tenant: Tenant) -> None:
    t0 = utcnow() - timedelta(days=10)
    lead = make_lead(db, tenant.id, at=t0)
    t1, t2 = t0 + timedelta(days=2), t0 + timedelta(days=5, hours=3)
    service.transition(db, lead=lead, target=Stage.contacted, actor=ACTOR, at=t1)
    last = service.transition(
        db, lead=lead, target=Stage.qualified, actor=ACTOR, reason="budget confirmed", at=t2
    )
    rows = stays(db, lead)
    assert [(r.stage, r.from_stage) for r in rows] == [
        (Stage.new, None),
        (Stage.contacted, Stage.new),
        (Stage.qualified, Stage.contacted),
    ]
    assert [(r.entered_at, r.exited_at) for r in rows] == [(t0, t1), (t1, t2), (t2, None)]
    assert rows[-1] is last
    assert last.reason == "budget confirmed"
    assert (
        count(
            db,
            LeadStageHistory,
            LeadStageHistory.lead_id == lead.id,
            LeadStageHistory.exited_at.is_(None),
        )
        == 1
    )
    assert (lead.stage, lead.stage_entered_at) == (Stage.qualified, t2)
    assert [service.seconds_in_stage(r) for r in rows[:2]] == [2 * 86400.0, (3 * 24 + 3) * 3600.0]
    now = t2 + timedelta(minutes=5)
    assert service.seconds_in_stage(rows[-1], now=now) == 300.0


def test_a_change_writes_a_timeline_entry_and_an_audit_row(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    actor = Actor.agent("call-42")
    service.transition(db, lead=lead, target=Stage.visit_scheduled, actor=actor, reason="booked")
    (activity,) = db.scalars(
        select(LeadActivity).where(
            LeadActivity.lead_id == lead.id, LeadActivity.kind == ActivityKind.stage_change
        )
    ).all()
    assert activity.body == "new → visit_scheduled"
    assert activity.data == {"from": "new", "to": "visit_scheduled", "reason": "booked"}
    assert (activity.actor_type, activity.actor_id) == (actor.type, "call-42")
    assert lead.last_activity_at == activity.occurred_at
    (row,) = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id,
            AuditLog.object_type == "lead",
            AuditLog.object_id == str(lead.id),
        )
    ).all()
    assert row.action == "lead.stage_change"
    assert row.diff == {"stage": ["new", "visit_scheduled"], "reason": "booked"}
    assert (row.actor_type, row.actor_id) == (actor.type, "call-42")


def _snapshot_of_everything(db: Session, lead: Lead) -> tuple[Any, ...]:
    db.flush()
    return (
        lead.stage,
        lead.stage_entered_at,
        [(r.id, r.stage, r.exited_at) for r in stays(db, lead)],
        count(db, LeadActivity, LeadActivity.lead_id == lead.id),
        count(db, AuditLog, AuditLog.broker_id == lead.broker_id),
    )


@pytest.mark.parametrize(
    ("path", "target", "allowed"),
    [
        ([Stage.won], Stage.lost, []),
        ([Stage.won], Stage.negotiating, []),
        ([Stage.lost], Stage.qualified, ["contacted"]),
        ([Stage.lost], Stage.new, ["contacted"]),
        (
            [],
            Stage.new,
            ["contacted", "qualified", "visit_scheduled", "visited", "negotiating", "won", "lost"],
        ),
    ],
)
def test_an_illegal_transition_changes_nothing(
    db: Session, tenant: Tenant, path: list[Stage], target: Stage, allowed: list[str]
) -> None:
    lead = make_lead(db, tenant.id, at=utcnow() - timedelta(hours=1))
    for stage in path:
        service.transition(db, lead=lead, target=stage, actor=ACTOR)
    before = _snapshot_of_everything(db, lead)
    with pytest.raises(Conflict) as caught:
        service.transition(db, lead=lead, target=target, actor=ACTOR)
    problem = caught.value.to_dict()
    assert problem["status"] == 409
    assert problem["allowed"] == allowed
    assert (problem["current"], problem["target"]) == (lead.stage.value, target.value)
    assert _snapshot_of_everything(db, lead) == before


def test_reopening_a_lost_lead_goes_to_contacted(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id, at=utcnow() - timedelta(hours=1))
    service.transition(db, lead=lead, target=Stage.lost, actor=ACTOR, reason="no budget")
    service.transition(db, lead=lead, target=Stage.contacted, actor=ACTOR, reason="called back")
    assert [r.stage for r in stays(db, lead)] == [Stage.new, Stage.lost, Stage.contacted]


@pytest.mark.parametrize(
    ("reason", "message"),
    [("", "required"), ("  ", "required"), ("x" * 101, "at most 100 characters")],
)
def test_a_bad_reason_is_refused_before_anything_is_written(
    db: Session, tenant: Tenant, reason: str, message: str
) -> None:
    lead = make_lead(db, tenant.id)
    before = _snapshot_of_everything(db, lead)
    with pytest.raises(InvalidInput) as caught:
        service.transition(db, lead=lead, target=Stage.contacted, actor=ACTOR, reason=reason)
    assert caught.value.errors == [{"field": "reason", "message": message, "type": "value_error"}]
    assert _snapshot_of_everything(db, lead) == before


def test_a_change_cannot_be_dated_before_the_current_stay(db: Session, tenant: Tenant) -> None:
    start = utcnow() - timedelta(days=1)
    lead = make_lead(db, tenant.id, at=start)
    before = _snapshot_of_everything(db, lead)
    with pytest.raises(InvalidInput) as caught:
        service.transition(
            db, lead=lead, target=Stage.contacted, actor=ACTOR, at=start - timedelta(seconds=1)
        )
    assert caught.value.errors[0]["field"] == "at"
    assert _snapshot_of_everything(db, lead) == before
    with pytest.raises(ValueError, match="naive"):
        service.transition(
            db,
            lead=lead,
            target=Stage.contacted,
            actor=ACTOR,
            at=datetime(2030, 1, 1),  # noqa: DTZ001
        )
    assert _snapshot_of_everything(db, lead) == before


def test_apply_event_moves_forward_only(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id, at=utcnow() - timedelta(hours=2))
    moved = service.apply_event(db, lead=lead, event=PipelineEvent.visit_booked, actor=ACTOR)
    assert moved is not None
    assert moved.reason == "auto:visit_booked"
    assert lead.stage is Stage.visit_scheduled
    before = _snapshot_of_everything(db, lead)
    assert (
        service.apply_event(db, lead=lead, event=PipelineEvent.contact_succeeded, actor=ACTOR)
        is None
    )
    assert service.apply_event(db, lead=lead, event=PipelineEvent.visit_booked, actor=ACTOR) is None
    assert _snapshot_of_everything(db, lead) == before
    service.apply_event(db, lead=lead, event=PipelineEvent.deal_won, actor=ACTOR)
    assert stage_of(lead) is Stage.won
    assert service.apply_event(db, lead=lead, event=PipelineEvent.offer_made, actor=ACTOR) is None


def test_an_event_older_than_the_stay_moves_the_lead_when_the_stay_began(
    db: Session, tenant: Tenant
) -> None:
    start = utcnow() - timedelta(hours=1)
    lead = make_lead(db, tenant.id, at=start)
    stay = service.apply_event(
        db,
        lead=lead,
        event=PipelineEvent.contact_succeeded,
        actor=ACTOR,
        at=start - timedelta(days=2),
    )
    assert stay is not None
    assert stay.entered_at == start
    assert [(r.stage, r.entered_at, r.exited_at) for r in stays(db, lead)] == [
        (Stage.new, start, start),
        (Stage.contacted, start, None),
    ]


def test_a_stage_change_asks_for_one_score_at_commit(tenant: Tenant) -> None:
    with get_sessionmaker()() as db:
        lead = make_lead(db, tenant.id, at=utcnow() - timedelta(hours=1))
        db.commit()
        service.transition(db, lead=lead, target=Stage.qualified, actor=ACTOR)
        assert count(db, ScoreSnapshot, ScoreSnapshot.lead_id == lead.id) == 0
        db.commit()
        (snapshot,) = db.scalars(
            select(ScoreSnapshot).where(ScoreSnapshot.lead_id == lead.id)
        ).all()
        assert "stage_change" in snapshot.trigger.split(",")
        assert lead.score == snapshot.score


def test_a_change_made_meanwhile_by_another_session_is_a_conflict(tenant: Tenant) -> None:
    maker = get_sessionmaker()
    with maker() as setup:
        lead_id = make_lead(setup, tenant.id, at=utcnow() - timedelta(hours=1)).id
        setup.commit()
    with maker() as slow, maker() as fast:
        stale = slow.get(Lead, lead_id)
        assert stale is not None
        assert stale.stage is Stage.new
        fresh = fast.get(Lead, lead_id)
        assert fresh is not None
        service.transition(fast, lead=fresh, target=Stage.contacted, actor=ACTOR)
        fast.commit()
        with pytest.raises(Conflict) as caught:
            service.transition(slow, lead=stale, target=Stage.lost, actor=ACTOR)
        assert caught.value.to_dict()["current"] == "contacted"
        slow.rollback()
        reloaded = slow.get(Lead, lead_id)
        assert reloaded is not None
        assert reloaded.stage is Stage.contacted
        rows = slow.scalars(
            select(LeadStageHistory).where(LeadStageHistory.lead_id == lead_id)
        ).all()
        assert sorted(r.stage for r in rows) == sorted([Stage.new, Stage.contacted])


def test_history_is_oldest_first_and_scoped(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    lead = make_lead(db, tenant.id, at=t0)
    for i, stage in enumerate([Stage.contacted, Stage.lost, Stage.contacted], start=1):
        service.transition(db, lead=lead, target=stage, actor=ACTOR, at=t0 + timedelta(hours=i))
    assert [r.entered_at for r in stays(db, lead)] == [t0 + timedelta(hours=i) for i in range(4)]
    other = db.scalars(service.history_query(broker_id=other_tenant.id, lead_id=lead.id)).all()
    assert other == []


# --- rot thresholds -------------------------------------------------------------------


def _broker(db: Session, tenant: Tenant) -> Broker:
    broker = db.get(Broker, tenant.id)
    assert broker is not None
    return broker


def test_set_rot_days_stores_validated_overrides_and_audits(db: Session, tenant: Tenant) -> None:
    broker = _broker(db, tenant)
    effective = service.set_rot_days(
        db, broker=broker, rot_days={"negotiating": 14, "new": 1}, actor=ACTOR
    )
    assert effective == {**DEFAULT_ROT_DAYS, Stage.new: 1, Stage.negotiating: 14}
    assert broker.rot_days == {"new": 1, "negotiating": 14}
    assert list(broker.rot_days) == ["new", "negotiating"]
    rows = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "broker.rot_days.update"
        )
    ).all()
    assert [r.diff for r in rows] == [{"rot_days": [None, {"new": 1, "negotiating": 14}]}]
    # Setting the same again changes nothing, so it is not audited again.
    service.set_rot_days(db, broker=broker, rot_days={"new": 1, "negotiating": 14}, actor=ACTOR)
    service.set_rot_days(db, broker=broker, rot_days={}, actor=ACTOR)
    assert broker.rot_days is None
    rows = db.scalars(
        select(AuditLog)
        .where(AuditLog.broker_id == tenant.id, AuditLog.action == "broker.rot_days.update")
        .order_by(AuditLog.id)
    ).all()
    assert [r.diff for r in rows][-1] == {"rot_days": [{"new": 1, "negotiating": 14}, None]}
    assert len(rows) == 2


def test_set_rot_days_refuses_bad_values_and_keeps_the_old_ones(
    db: Session, tenant: Tenant
) -> None:
    broker = _broker(db, tenant)
    service.set_rot_days(db, broker=broker, rot_days={"new": 4}, actor=ACTOR)
    with pytest.raises(InvalidInput) as caught:
        service.set_rot_days(
            db, broker=broker, rot_days={"new": 1, "won": 3, "qualified": 400}, actor=ACTOR
        )
    assert sorted(e["field"] for e in caught.value.errors) == ["qualified", "won"]
    assert broker.rot_days == {"new": 4}
