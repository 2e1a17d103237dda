"""The leads service called directly, as the agent, campaigns and the gateway will call it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.db import get_sessionmaker
from crm.enums import Channel
from crm.errors import Conflict, InvalidInput
from crm.leads import service
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity
from crm.leads.schemas import LeadCreate, LeadFilters, LeadUpdate
from crm.listing import PageRequest
from crm.pipeline import service as pipeline_service
from crm.pipeline.models import LeadStageHistory
from crm.pipeline.stages import Stage
from crm.scoring.models import ScoreSnapshot
from tests.conftest import Tenant

ACTOR = Actor.cli("tests")


def new_lead(db: Session, tenant: Tenant, phone: str = "+12125550001", **fields: Any) -> Lead:
    return service.create(
        db, broker_id=tenant.id, data=LeadCreate(phone=phone, **fields), actor=ACTOR
    )


def stage_of(lead: Lead) -> Stage:
    """The stage now (a function, so mypy does not carry one assertion's narrowing on)."""
    return lead.stage


def lead_audit(db: Session, lead_id: int) -> list[str]:
    return list(
        db.scalars(
            select(AuditLog.action)
            .where(AuditLog.object_type == "lead", AuditLog.object_id == str(lead_id))
            .order_by(AuditLog.id)
        )
    )


def live_count(db: Session, broker_id: int) -> int:
    return (
        db.scalar(
            select(func.count())
            .select_from(Lead)
            .where(Lead.broker_id == broker_id, Lead.deleted_at.is_(None))
        )
        or 0
    )


def test_create_opens_history_timeline_audit_and_is_scored_at_commit(
    db: Session, tenant: Tenant
) -> None:
    lead = new_lead(db, tenant, source="portal")
    db.commit()
    stay = pipeline_service.open_stay(db, lead_id=lead.id)
    assert stay is not None
    assert (stay.stage, stay.reason, stay.entered_at) == (Stage.new, "created", lead.created_at)
    kinds = db.scalars(select(LeadActivity.kind).where(LeadActivity.lead_id == lead.id)).all()
    assert kinds == [ActivityKind.created]
    assert lead_audit(db, lead.id) == ["lead.create"]
    create_row = db.scalars(
        select(AuditLog).where(AuditLog.object_id == str(lead.id), AuditLog.action == "lead.create")
    ).one()
    assert create_row.diff is not None
    assert create_row.diff["phone"] == "+12125550001"
    assert create_row.diff["stage"] == "new"
    snapshots = db.scalars(select(ScoreSnapshot).where(ScoreSnapshot.lead_id == lead.id)).all()
    assert len(snapshots) == 1
    assert snapshots[0].trigger == "lead.create"


def test_rolled_back_create_leaves_no_row_anywhere(db: Session, tenant: Tenant) -> None:
    lead = new_lead(db, tenant)
    lead_id = lead.id
    db.rollback()
    with get_sessionmaker()() as other:
        assert other.get(Lead, lead_id) is None
        assert lead_audit(other, lead_id) == []
        assert (
            other.scalars(select(LeadStageHistory).where(LeadStageHistory.lead_id == lead_id)).all()
            == []
        )


def test_find_by_phone_for_the_voice_gateway(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = new_lead(db, tenant, phone="+34 612 34 56 78")
    db.commit()
    for written in ("+34612345678", "+34 612-34-56-78", " +34 (612) 345 678 "):
        found = service.find_by_phone(db, broker_id=tenant.id, phone=written)
        assert found is not None
        assert found.id == lead.id
    assert service.find_by_phone(db, broker_id=other_tenant.id, phone="+34612345678") is None
    assert service.find_by_phone(db, broker_id=tenant.id, phone="anonymous") is None
    assert service.find_by_phone(db, broker_id=tenant.id, phone="") is None
    service.delete(db, lead=lead, actor=ACTOR)
    db.commit()
    assert service.find_by_phone(db, broker_id=tenant.id, phone="+34612345678") is None


def test_losing_the_race_to_the_unique_index_is_the_same_409(
    db: Session, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    with get_sessionmaker()() as other:
        winner = new_lead(other, tenant, phone="+12125550002")
        other.commit()
    # The pre-check ran before the winner committed: only the index can catch it now.
    monkeypatch.setattr(service, "_check_phone_free", lambda *_, **__: None)
    keeper = new_lead(db, tenant, phone="+12125550003")
    with pytest.raises(Conflict) as info:
        new_lead(db, tenant, phone="+12125550002")
    assert info.value.extra["existing_lead_id"] == winner.id
    assert info.value.errors[0]["field"] == "phone"
    assert not db.new  # the loser is gone from the session
    db.commit()  # the transaction survived, with what came before the failed insert
    assert live_count(db, tenant.id) == 2
    assert lead_audit(db, keeper.id) == ["lead.create"]
    assert (
        db.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(AuditLog.broker_id == tenant.id, AuditLog.action == "lead.create")
        )
        == 2
    )


def test_concurrent_creates_of_one_phone_make_one_lead(db: Session, tenant: Tenant) -> None:
    first = new_lead(db, tenant, phone="+12125550004")  # flushed, not committed: holds the key
    outcome: dict[str, Any] = {}

    def second() -> None:
        with get_sessionmaker()() as other:
            try:
                new_lead(other, tenant, phone="+12125550004")
                other.commit()
                outcome["created"] = True
            except Conflict as exc:
                outcome["conflict"] = exc.extra["existing_lead_id"]

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(timeout=0.5)  # blocked on the index entry the first insert holds
    db.commit()
    thread.join(timeout=10)
    assert outcome == {"conflict": first.id}
    assert live_count(db, tenant.id) == 1


def test_update_answers_changes_and_writes_nothing_when_equal(db: Session, tenant: Tenant) -> None:
    lead = new_lead(db, tenant, budget_max=300000, areas=["Centro"])
    same = service.apply_update(
        db, lead=lead, data=LeadUpdate(budget_max="300000.00", areas=["centro"]), actor=ACTOR
    )
    assert same == {"areas": [["Centro"], ["centro"]]}
    again = service.apply_update(db, lead=lead, data=LeadUpdate(areas=["centro"]), actor=ACTOR)
    assert again == {}
    assert lead_audit(db, lead.id) == ["lead.create", "lead.update"]
    with pytest.raises(InvalidInput):
        service.update(db, lead=lead, data=LeadUpdate(budget_min=400000), actor=ACTOR)
    assert lead.budget_min is None


def test_new_phone_moves_a_derived_zone_but_not_a_chosen_one(db: Session, tenant: Tenant) -> None:
    derived = new_lead(db, tenant, phone="+34612345678")
    assert derived.time_zone == "Europe/Madrid"
    service.update(db, lead=derived, data=LeadUpdate(phone="+52 55 1234 5678"), actor=ACTOR)
    assert (derived.phone, derived.time_zone) == ("+525512345678", "America/Mexico_City")

    chosen = new_lead(db, tenant, phone="+34699001122", time_zone="Atlantic/Canary")
    service.update(db, lead=chosen, data=LeadUpdate(phone="+52 55 8765 4321"), actor=ACTOR)
    assert chosen.time_zone == "Atlantic/Canary"


def test_inbound_message_is_a_successful_contact(db: Session, tenant: Tenant) -> None:
    lead = new_lead(db, tenant)
    outbound = service.log_message(
        db,
        lead=lead,
        channel=Channel.whatsapp,
        direction=Direction.outbound,
        body="Hola, ¿sigue buscando piso?",
        actor=Actor.task("campaign"),
    )
    assert stage_of(lead) is Stage.new
    assert lead.last_contacted_at == outbound.occurred_at
    inbound = service.log_message(
        db,
        lead=lead,
        channel=Channel.whatsapp,
        direction=Direction.inbound,
        body="Sí, en el centro",
        actor=Actor.agent("conv-1"),
    )
    assert stage_of(lead) is Stage.contacted
    assert lead.stage_entered_at == inbound.occurred_at
    assert lead_audit(db, lead.id) == [
        "lead.create",
        "lead.message.log",
        "lead.message.log",
        "lead.stage_change",
    ]
    message_row = db.scalars(
        select(AuditLog)
        .where(AuditLog.object_id == str(lead.id), AuditLog.action == "lead.message.log")
        .order_by(AuditLog.id)
    ).first()
    assert message_row is not None
    assert message_row.diff == {
        "activity_id": outbound.id,
        "channel": "whatsapp",
        "direction": "outbound",
    }
    # A later reply from a lead further along moves nothing backwards.
    pipeline_service.transition(db, lead=lead, target=Stage.qualified, actor=ACTOR)
    service.log_message(
        db, lead=lead, channel=Channel.sms, direction=Direction.inbound, body="ok", actor=ACTOR
    )
    assert stage_of(lead) is Stage.qualified


def test_mark_do_not_call_is_idempotent_and_catches_later_consents(
    db: Session, tenant: Tenant
) -> None:
    lead = new_lead(db, tenant)
    service.mark_do_not_call(db, lead=lead, reason="said stop", actor=Actor.agent("call-9"))
    first_at = lead.dnc_at
    service.mark_do_not_call(db, lead=lead, reason="again", actor=ACTOR)
    assert (lead.dnc_reason, lead.dnc_at) == ("said stop", first_at)
    assert lead_audit(db, lead.id) == ["lead.create", "lead.do_not_call.set"]

    late = service.add_consent(
        db, lead=lead, channel=Channel.call, source="form", text_shown="ok", actor=ACTOR
    )
    service.mark_do_not_call(db, lead=lead, reason="again", actor=ACTOR)
    assert late.revoked_at is not None
    assert (lead.dnc_reason, lead.dnc_at) == ("said stop", first_at)

    service.clear_do_not_call(db, lead=lead, reason="consent", actor=ACTOR)
    service.clear_do_not_call(db, lead=lead, reason="consent", actor=ACTOR)
    assert lead.do_not_call is False
    assert late.revoked_at is not None  # clearing does not bring consent back
    assert lead_audit(db, lead.id).count("lead.do_not_call.clear") == 1


def test_search_is_a_reusable_broker_scoped_statement(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine = new_lead(db, tenant, full_name="Lucía Pérez")
    new_lead(db, other_tenant, full_name="Lucía Pérez")
    gone = new_lead(db, tenant, phone="+12125550099", full_name="Lucía Gone")
    service.delete(db, lead=gone, actor=ACTOR)
    stmt = service.search(broker_id=tenant.id, filters=LeadFilters(q="lucía", stages=(Stage.new,)))
    assert db.scalars(stmt).all() == [mine]
    rows, total = service.list_leads(
        db,
        broker_id=tenant.id,
        filters=LeadFilters(),
        paging=PageRequest(limit=10),
    )
    assert (list(rows), total) == ([mine], 1)
