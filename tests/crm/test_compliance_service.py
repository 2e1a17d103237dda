"""The compliance gate on the real database: facts from calls, messages, consents and the
lead's zone, and the endpoint that shows a broker the verdict."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.calls import service as call_service
from crm.calls.models import Call, CallStatus
from crm.compliance import service
from crm.compliance.policy import RefusalCode, Verdict
from crm.enums import Channel
from crm.leads import service as lead_service
from crm.leads.models import Direction, Lead
from crm.pipeline.service import enter_initial
from crm.timeutil import utcnow
from tests.conftest import Tenant

ACTOR = Actor.system("compliance-tests")
MIAMI = ZoneInfo("America/New_York")
BOGOTA = ZoneInfo("America/Bogota")
#: Wednesday 2026-06-10, 11:00 in Miami: inside every US window.
AT = datetime(2026, 6, 10, 11, 0, tzinfo=MIAMI)


def make_lead(db: Session, broker_id: int, phone: str, time_zone: str | None = None) -> Lead:
    lead = Lead(broker_id=broker_id, phone=phone, time_zone=time_zone, full_name="Ana")
    db.add(lead)
    db.flush()
    enter_initial(db, lead=lead, actor=ACTOR)
    return lead


def dial(
    db: Session,
    lead: Lead,
    started_at: datetime,
    *,
    answered: bool = False,
    status: CallStatus | None = None,
    direction: Direction = Direction.outbound,
) -> Call:
    call = call_service.create_call(
        db,
        broker_id=lead.broker_id,
        lead_id=lead.id,
        direction=direction,
        from_number="+13055550000",
        to_number=lead.phone,
        actor=ACTOR,
        started_at=started_at,
    )
    if answered:
        call_service.update_status(db, call=call, status=CallStatus.in_progress, at=started_at)
    if status is not None:
        call_service.update_status(db, call=call, status=status, at=started_at)
    return call


def codes(verdict: Verdict) -> list[RefusalCode]:
    return [r.code for r in verdict.reasons]


def test_florida_counts_outbound_dialled_calls_of_this_lead_only(
    db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, "+13055550123")
    oldest = AT - timedelta(hours=23)
    dial(db, lead, oldest, status=CallStatus.no_answer)
    dial(db, lead, AT - timedelta(hours=5), status=CallStatus.busy)
    dial(db, lead, AT - timedelta(minutes=30), answered=True)
    # None of these is one of our calls to this lead in the last 24 hours:
    dial(db, lead, AT - timedelta(hours=2), status=CallStatus.canceled)
    dial(db, lead, AT - timedelta(hours=3), direction=Direction.inbound)
    dial(db, lead, AT - timedelta(hours=25))
    dial(db, make_lead(db, tenant.id, "+13055550124"), AT - timedelta(hours=1))
    dial(db, make_lead(db, other_tenant.id, "+13055550123"), AT - timedelta(hours=1))

    verdict = service.check_contact(db, lead=lead, channel=Channel.call, automated=False, at=AT)
    assert verdict.policy == "US-FL"
    assert codes(verdict) == [RefusalCode.attempt_cap]
    assert verdict.next_allowed_at == oldest + timedelta(hours=24)

    facts = service.gather_facts(db, lead=lead, channel=Channel.call, automated=False, at=AT)
    assert len(facts.attempts) == 4  # the three, and the one 25 h ago (read for the week)
    assert len(facts.contacts) == 1


def test_consent_rows_decide_automated_calls_and_do_not_call_ends_them(
    db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, "+34612345678")
    now = utcnow()

    def ask() -> list[RefusalCode]:
        verdict = service.check_contact(db, lead=lead, channel=Channel.call, automated=True)
        if RefusalCode.no_consent in codes(verdict) or RefusalCode.do_not_call in codes(verdict):
            assert verdict.next_allowed_at is None
        return codes(verdict)

    assert RefusalCode.no_consent in ask()
    consent = lead_service.add_consent(
        db,
        lead=lead,
        channel=Channel.call,
        source="web form",
        text_shown="Acepto que me llamen",
        actor=ACTOR,
        granted_at=now - timedelta(days=1),
    )
    assert RefusalCode.no_consent not in ask()
    lead_service.revoke_consent(db, lead=lead, consent_id=consent.id, actor=ACTOR)
    assert RefusalCode.no_consent in ask()

    lead_service.mark_do_not_call(db, lead=lead, reason="asked on the phone", actor=ACTOR)
    assert ask()[0] is RefusalCode.do_not_call


def test_the_zone_is_the_leads_then_the_numbers_then_the_brokers(
    db: Session, make_tenant: Callable[..., Tenant]
) -> None:
    tenant = make_tenant(time_zone="America/Denver")
    chosen = make_lead(db, tenant.id, "+12125550123", time_zone="America/Chicago")
    by_number = make_lead(db, tenant.id, "+34612345678")
    toll_free = make_lead(db, tenant.id, "+18005550199")

    def zone(lead: Lead) -> str:
        verdict = service.check_contact(db, lead=lead, channel=Channel.call, automated=False, at=AT)
        assert verdict.local_time == AT.astimezone(ZoneInfo(verdict.time_zone))
        return verdict.time_zone

    assert zone(chosen) == "America/Chicago"
    assert zone(by_number) == "Europe/Madrid"
    assert zone(toll_free) == "America/Denver"


def test_colombia_week_counts_answered_calls_and_sent_messages(db: Session, tenant: Tenant) -> None:
    monday = datetime(2026, 9, 7, 10, 0, tzinfo=BOGOTA)
    wednesday = datetime(2026, 9, 9, 10, 0, tzinfo=BOGOTA)
    next_monday = datetime(2026, 9, 14, 7, 0, tzinfo=BOGOTA)

    unanswered = make_lead(db, tenant.id, "+573001234567")
    dial(db, unanswered, monday, status=CallStatus.no_answer)
    assert service.check_contact(
        db, lead=unanswered, channel=Channel.call, automated=False, at=wednesday
    ).allowed

    answered = make_lead(db, tenant.id, "+573001234568")
    dial(db, answered, monday, answered=True)
    verdict = service.check_contact(
        db, lead=answered, channel=Channel.call, automated=False, at=wednesday
    )
    assert codes(verdict) == [RefusalCode.contacted_this_week]
    assert verdict.next_allowed_at == next_monday

    lead_service.add_consent(
        db,
        lead=answered,
        channel=Channel.whatsapp,
        source="web form",
        text_shown="Acepto WhatsApp",
        actor=ACTOR,
        granted_at=monday - timedelta(days=30),
    )
    for channel, direction in (
        (Channel.whatsapp, Direction.inbound),  # the lead writing to us is not our contact
        (Channel.telegram, Direction.outbound),  # another channel
    ):
        lead_service.log_message(
            db,
            lead=answered,
            channel=channel,
            direction=direction,
            body="hola",
            actor=ACTOR,
            occurred_at=monday,
        )
    whatsapp = service.check_contact(
        db, lead=answered, channel=Channel.whatsapp, automated=True, at=wednesday
    )
    assert whatsapp.allowed
    lead_service.log_message(
        db,
        lead=answered,
        channel=Channel.whatsapp,
        direction=Direction.outbound,
        body="Hola Ana",
        actor=ACTOR,
        occurred_at=monday,
    )
    whatsapp = service.check_contact(
        db, lead=answered, channel=Channel.whatsapp, automated=True, at=wednesday
    )
    assert codes(whatsapp) == [RefusalCode.contacted_this_week]
    assert whatsapp.next_allowed_at == next_monday


# --- the endpoint --------------------------------------------------------------------


async def test_endpoint_returns_the_verdict(
    client: httpx.AsyncClient, db: Session, tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, "+13055550123")
    db.commit()
    late = datetime(2026, 6, 10, 20, 30, tzinfo=MIAMI)
    response = await client.get(
        f"/api/v1/leads/{lead.id}/compliance",
        params={"channel": "call", "automated": "true", "at": late.isoformat()},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["allowed"] is False
    assert body["policy"] == "US-FL"
    assert body["time_zone"] == "America/New_York"
    assert datetime.fromisoformat(body["local_time"]) == late
    assert body["local_time"].endswith("-04:00")
    assert [r["code"] for r in body["reasons"]] == ["no_consent", "outside_hours"]
    assert body["reasons"][1]["message"] == (
        "outside calling hours: 20:30 in America/New_York, allowed 08:00–20:00"
    )
    assert body["next_allowed_at"] is None
    assert body["disclosures"] == [
        "business_legal_name",
        "business_phone_number",
        "recording_announcement",
        "opt_out_offer",
    ]

    person = await client.get(
        f"/api/v1/leads/{lead.id}/compliance",
        params={"automated": "false", "at": late.isoformat()},
        headers=tenant.headers,
    )
    assert person.status_code == 200, person.text
    assert datetime.fromisoformat(person.json()["next_allowed_at"]) == datetime(
        2026, 6, 11, 8, 0, tzinfo=MIAMI
    )


async def test_endpoint_refuses_bad_input_and_other_brokers(
    client: httpx.AsyncClient, db: Session, tenant: Tenant, other_tenant: Tenant
) -> None:
    lead = make_lead(db, tenant.id, "+34612345678")
    db.commit()
    url = f"/api/v1/leads/{lead.id}/compliance"
    bad_channel = await client.get(url, params={"channel": "fax"}, headers=tenant.headers)
    assert bad_channel.status_code == 422
    naive = await client.get(url, params={"at": "2026-06-10T12:00:00"}, headers=tenant.headers)
    assert naive.status_code == 422
    assert (await client.get(url, headers=other_tenant.headers)).status_code == 404
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=tenant.headers)).status_code == 200
