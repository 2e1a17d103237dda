"""Scoring against the real database: inputs gathered, one snapshot per transaction, bulk."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.brokers.models import Broker
from crm.enums import Channel
from crm.leads.models import ActivityKind, Direction, Financing, Lead, PropertyType, Timeline
from crm.leads.timeline import add_activity
from crm.pipeline.stages import Stage
from crm.scoring import service
from crm.scoring.engine import EngagementCounts
from crm.scoring.models import ScoreSnapshot
from crm.scoring.weights import DEFAULT_WEIGHTS, ComponentWeights, ScoringWeights
from crm.timeutil import utcnow
from tests.conftest import Tenant

_phones = itertools.count(100_000)
AGENT = Actor.agent("test-call")


def make_lead(db: Session, broker_id: int, **fields: Any) -> Lead:
    lead = Lead(broker_id=broker_id, phone=f"+34612{next(_phones):06d}", **fields)
    db.add(lead)
    db.flush()
    return lead


def snapshots(db: Session, lead: Lead) -> list[ScoreSnapshot]:
    return list(
        db.scalars(
            select(ScoreSnapshot).where(ScoreSnapshot.lead_id == lead.id).order_by(ScoreSnapshot.id)
        )
    )


@contextmanager
def count_statements(db: Session) -> Iterator[list[str]]:
    statements: list[str] = []
    engine = db.get_bind()

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- once per transaction -------------------------------------------------------------


def test_many_requests_in_one_transaction_leave_one_snapshot(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    service.request_recompute(db, lead=lead, trigger="lead.create")
    lead.bedrooms = 3
    service.request_recompute(db, lead=lead, trigger="lead.update")
    service.request_recompute(db, lead=lead, trigger="lead.update")
    db.commit()
    (snapshot,) = snapshots(db, lead)
    assert snapshot.trigger == "lead.create,lead.update"
    assert snapshot.broker_id == tenant.id
    assert lead.score == snapshot.score
    # the score saw the last value of every input, not the first
    qualification = snapshot.breakdown["components"][0]
    assert qualification["details"]["known"] == 1


def test_each_transaction_scores_again(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    service.request_recompute(db, lead=lead, trigger="lead.create")
    db.commit()
    lead.intent = 0.9
    service.request_recompute(db, lead=lead, trigger="lead.update")
    db.commit()
    first, second = snapshots(db, lead)
    assert second.score > first.score
    db.commit()  # nothing asked for: nothing stored
    assert len(snapshots(db, lead)) == 2


def test_rollback_stores_nothing_and_forgets_the_request(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    db.commit()
    lead.intent = 0.9
    service.request_recompute(db, lead=lead, trigger="lead.update")
    db.rollback()
    assert snapshots(db, lead) == []
    db.commit()
    assert snapshots(db, lead) == []
    assert db.get(Lead, lead.id) is not None
    assert lead.score == 0


def test_deleted_lead_is_not_scored(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    service.request_recompute(db, lead=lead, trigger="lead.update")
    lead.deleted_at = utcnow()
    db.commit()
    assert snapshots(db, lead) == []


def test_recompute_now_folds_in_a_pending_request(db: Session, tenant: Tenant) -> None:
    lead = make_lead(db, tenant.id)
    service.request_recompute(db, lead=lead, trigger="lead.update")
    snapshot = service.recompute(db, lead=lead, trigger="api.recompute")
    db.commit()
    assert snapshots(db, lead) == [snapshot]
    assert snapshot.trigger == "lead.update,api.recompute"


# --- inputs -------------------------------------------------------------------------


def test_recompute_gathers_every_input_and_stores_the_breakdown(
    db: Session, tenant: Tenant
) -> None:
    now = utcnow()
    lead = make_lead(
        db,
        tenant.id,
        stage=Stage.qualified,
        budget_max=Decimal("300000"),
        budget_currency="EUR",
        areas=["Chamberí"],
        property_type=PropertyType.apartment,
        bedrooms=2,
        timeline=Timeline.within_3_months,
        financing=Financing.cash,
        intent=1.0,
    )
    for _ in range(4):
        add_activity(
            db,
            lead=lead,
            kind=ActivityKind.message,
            actor=AGENT,
            channel=Channel.whatsapp,
            direction=Direction.inbound,
            occurred_at=now - timedelta(hours=1),
        )
    for _ in range(2):
        add_activity(
            db,
            lead=lead,
            kind=ActivityKind.call,
            actor=AGENT,
            direction=Direction.outbound,
            data={"status": "completed"},
            occurred_at=now,
        )
        add_activity(
            db, lead=lead, kind=ActivityKind.note, actor=Actor.cli(), body="keen", occurred_at=now
        )
    snapshot = service.recompute(db, lead=lead, trigger="test", now=now)
    db.commit()
    breakdown = snapshot.breakdown
    by_name = {c["name"]: c for c in breakdown["components"]}
    assert {name: c["raw"] for name, c in by_name.items()} == {
        "qualification": 1.0,
        "engagement": 1.0,
        "recency": 1.0,
        "intent": 1.0,
        "budget_fit": 1.0,
        "stage": 0.5,
    }
    assert snapshot.score == 97 == lead.score  # 92.5 × 1.05
    assert breakdown["score"] == 97
    assert by_name["engagement"]["details"] == {
        "inbound_messages": 4,
        "answered_calls": 2,
        "notes": 2,
        "points": 10,
    }
    db.expire_all()
    stored = db.get(ScoreSnapshot, snapshot.id)
    assert stored is not None
    assert stored.breakdown == breakdown  # what was read back from the JSONB column


def test_engagement_is_one_query_over_the_window_and_the_right_kinds(
    db: Session, tenant: Tenant
) -> None:
    now = utcnow()
    lead = make_lead(db, tenant.id)
    other = make_lead(db, tenant.id)

    def add(kind: ActivityKind, ago: timedelta, **kw: Any) -> None:
        add_activity(db, lead=lead, kind=kind, actor=AGENT, occurred_at=now - ago, **kw)

    hour, day = timedelta(hours=1), timedelta(days=1)
    add(ActivityKind.message, hour, direction=Direction.inbound)
    add(ActivityKind.message, hour, direction=Direction.outbound)  # ours: not engagement
    add(ActivityKind.message, 31 * day, direction=Direction.inbound)  # outside the window
    add(ActivityKind.call, hour, direction=Direction.inbound, data={"status": "completed"})
    add(ActivityKind.call, hour, direction=Direction.outbound, data={"status": "no_answer"})
    add(ActivityKind.call, hour, direction=Direction.outbound, data={"answered": True})
    add(ActivityKind.call, hour, direction=Direction.outbound, data={"answered": "maybe"})
    add(ActivityKind.call, hour, direction=Direction.outbound)
    add(ActivityKind.note, 29 * day)
    add(ActivityKind.note, -hour)  # in the future: not yet
    add(ActivityKind.stage_change, hour)
    db.flush()
    with count_statements(db) as statements:
        counts = service.engagement_counts(
            db, lead_ids=[lead.id, other.id], window_days=30, now=now
        )
    assert len(statements) == 1
    assert counts == {lead.id: EngagementCounts(inbound_messages=1, answered_calls=2, notes=1)}
    narrow = service.engagement_counts(db, lead_ids=[lead.id], window_days=7, now=now)
    assert narrow[lead.id].notes == 0


def test_recency_uses_the_timeline_dates(db: Session, tenant: Tenant) -> None:
    now = utcnow()
    lead = make_lead(db, tenant.id, last_activity_at=now - timedelta(days=60))
    add_activity(
        db,
        lead=lead,
        kind=ActivityKind.call,
        actor=AGENT,
        data={"status": "completed"},
        occurred_at=now - timedelta(days=14),
    )
    snapshot = service.recompute(db, lead=lead, trigger="test", now=now)
    recency = snapshot.breakdown["components"][2]
    assert recency["name"] == "recency"
    assert recency["raw"] == pytest.approx(0.5)
    assert recency["explanation"] == "last contact 14.0 days ago (half-life 14 days)"


# --- weights ------------------------------------------------------------------------


def test_effective_weights_merge_over_defaults(db: Session, tenant: Tenant) -> None:
    broker = db.get(Broker, tenant.id)
    assert broker is not None
    assert service.get_weights(broker) is DEFAULT_WEIGHTS
    broker.scoring_weights = {"components": {"intent": 30}}
    weights = service.get_weights(broker)
    assert weights.components.intent == 30
    assert weights.components.qualification == 25
    assert weights.recency_half_life_days == 14
    broker.scoring_weights = {"components": {"intent": -1}}  # written by hand, not by the API
    assert service.get_weights(broker) is DEFAULT_WEIGHTS


def test_set_weights_stores_only_overrides_and_audits_a_dotted_diff(
    db: Session, tenant: Tenant
) -> None:
    broker = db.get(Broker, tenant.id)
    assert broker is not None
    weights = ScoringWeights(
        components=ComponentWeights(intent=30), stage_multipliers={Stage.visited: 1.5}
    )
    assert service.set_weights(db, broker=broker, weights=weights, actor=Actor.cli()) is True
    db.commit()
    assert broker.scoring_weights == {
        "components": {"intent": 30.0},
        "stage_multipliers": {"visited": 1.5},
    }
    row = db.scalars(
        select(AuditLog).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "scoring.weights.update"
        )
    ).one()
    assert row.diff == {
        "components.intent": [15.0, 30.0],
        "stage_multipliers.visited": [1.15, 1.5],
    }
    assert row.actor_type.value == "cli"
    again = service.set_weights(db, broker=broker, weights=weights, actor=Actor.cli())
    assert again is False
    db.commit()
    total = db.scalar(
        select(func.count()).where(
            AuditLog.broker_id == tenant.id, AuditLog.action == "scoring.weights.update"
        )
    )
    assert total == 1


def test_broker_weights_change_the_stored_score(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    broker = db.get(Broker, tenant.id)
    assert broker is not None
    intent_only = ScoringWeights(
        components=ComponentWeights(
            qualification=0, engagement=0, recency=0, intent=1, budget_fit=0, stage=0
        )
    )
    service.set_weights(db, broker=broker, weights=intent_only, actor=Actor.cli())
    now = utcnow()
    mine = make_lead(db, tenant.id, intent=0.8, last_activity_at=now)
    theirs = make_lead(db, other_tenant.id, intent=0.8, last_activity_at=now)
    assert service.recompute(db, lead=mine, trigger="t", now=now).score == 80
    # defaults: recency 15 + intent 12 + stage 1.5 = 28.5 → 29
    assert service.recompute(db, lead=theirs, trigger="t", now=now).score == 29


# --- bulk ---------------------------------------------------------------------------


def test_rescore_broker_pages_through_live_open_leads(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    open_leads = [make_lead(db, tenant.id, intent=0.5 + i / 10) for i in range(5)]
    won = make_lead(db, tenant.id, stage=Stage.won)
    deleted = make_lead(db, tenant.id, deleted_at=utcnow())
    foreign = make_lead(db, other_tenant.id)
    broker = db.get(Broker, tenant.id)
    assert broker is not None
    intent_only = ScoringWeights(
        components=ComponentWeights(
            qualification=0, engagement=0, recency=0, intent=1, budget_fit=0, stage=0
        )
    )
    service.set_weights(db, broker=broker, weights=intent_only, actor=Actor.cli())
    db.commit()
    ids = [lead.id for lead in open_leads]
    skipped = [won.id, deleted.id, foreign.id]

    assert service.rescore_broker(db, broker_id=tenant.id, batch_size=2) == 5

    rows = db.scalars(select(ScoreSnapshot).where(ScoreSnapshot.lead_id.in_(ids + skipped))).all()
    assert sorted(r.lead_id for r in rows) == ids
    assert {r.trigger for r in rows} == {"weights"}
    scores = {lead.id: lead.score for lead in db.scalars(select(Lead).where(Lead.id.in_(ids)))}
    assert scores == dict(zip(ids, [50, 60, 70, 80, 90], strict=True))
    batches = db.scalars(
        select(AuditLog)
        .where(AuditLog.broker_id == tenant.id, AuditLog.action == "lead.score.rescore")
        .order_by(AuditLog.id)
    ).all()
    assert [b.diff["leads"] for b in batches if b.diff] == [2, 2, 1]
    assert all(b.actor_id == "scoring.weights" for b in batches)


def test_rescore_broker_rejects_an_empty_batch(db: Session, tenant: Tenant) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        service.rescore_broker(db, broker_id=tenant.id, batch_size=0)


def test_rescore_stale_scores_leads_whose_latest_snapshot_is_old(
    db: Session, tenant: Tenant
) -> None:
    now = utcnow()
    fresh = make_lead(db, tenant.id, last_activity_at=now)
    never_scored = make_lead(db, tenant.id, last_activity_at=now)
    lost = make_lead(db, tenant.id, stage=Stage.lost)
    service.recompute(db, lead=fresh, trigger="lead.create", now=now)
    db.commit()
    ids = [fresh.id, never_scored.id, lost.id]

    service.rescore_stale(db, now=now + timedelta(hours=1))
    first = db.scalars(select(ScoreSnapshot).where(ScoreSnapshot.lead_id.in_(ids))).all()
    assert sorted((s.lead_id, s.trigger) for s in first) == [
        (fresh.id, "lead.create"),
        (never_scored.id, "stale"),
    ]

    two_weeks = now + timedelta(days=14)
    service.rescore_stale(db, now=two_weeks)
    latest = service.latest_snapshot(db, broker_id=tenant.id, lead_id=fresh.id)
    assert latest is not None
    assert latest.trigger == "stale"
    assert latest.computed_at == two_weeks
    assert latest.score == 17  # recency halved: 7.5 + intent 7.5 + stage 1.5 = 16.5
    assert db.scalar(select(func.count()).where(ScoreSnapshot.lead_id == lost.id)) == 0
