"""The compliance gate's database side: one lead's facts, handed to `policy.evaluate`.

Reads only; the verdict changes nothing, so a sender may ask as often as it likes, and
must ask right before each contact (the facts move as calls are made).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm import phones
from crm.brokers import service as broker_service
from crm.calls import service as call_service
from crm.calls.models import CallStatus
from crm.compliance.policy import ConsentFact, ContactFacts, Verdict, evaluate
from crm.enums import Channel
from crm.leads import service as lead_service
from crm.leads.models import ActivityKind, Direction, Lead, LeadActivity
from crm.timeutil import ensure_utc, utcnow

#: How far back attempts and contacts are read: the rolling 24 h and the current local
#: week (at most seven days back, plus an hour of daylight saving) both fit.
LOOKBACK = timedelta(days=8)


def check_contact(
    db: Session, *, lead: Lead, channel: Channel, automated: bool, at: datetime | None = None
) -> Verdict:
    """May we contact `lead` on `channel` at `at` (default now), and if not, when next?"""
    when = ensure_utc(at) if at is not None else utcnow()
    facts = gather_facts(db, lead=lead, channel=channel, automated=automated, at=when)
    return evaluate(facts, when)


def gather_facts(
    db: Session, *, lead: Lead, channel: Channel, automated: bool, at: datetime
) -> ContactFacts:
    consents = tuple(
        ConsentFact(c.channel, c.granted_at, c.revoked_at)
        for c in lead_service.list_consents(db, lead=lead)
        if c.channel is channel
    )
    if channel is Channel.call:
        attempts, contacts = _recent_calls(db, lead=lead, since=at - LOOKBACK)
    else:
        attempts, contacts = _recent_messages(db, lead=lead, channel=channel, since=at - LOOKBACK)
    return ContactFacts(
        channel=channel,
        automated=automated,
        phone=lead.phone,
        time_zone=lead_time_zone(db, lead=lead),
        do_not_call=lead.do_not_call,
        consents=consents,
        attempts=attempts,
        contacts=contacts,
    )


def lead_time_zone(db: Session, *, lead: Lead) -> str:
    """The called party's zone: the lead's own, else the one its number pins, else the
    broker's (a US mobile may be in any US zone; see `phones.time_zone_for`)."""
    if lead.time_zone:
        return lead.time_zone
    return (
        phones.time_zone_for(lead.phone)
        or broker_service.get_or_raise(db, broker_id=lead.broker_id).time_zone
    )


def _recent_calls(
    db: Session, *, lead: Lead, since: datetime
) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    """Our outbound calls since `since`: every dialled one is an attempt (a canceled one
    never rang), and one that was answered is a successful contact."""
    calls = db.scalars(
        call_service.query(
            broker_id=lead.broker_id, lead_id=lead.id, direction=Direction.outbound, since=since
        )
    ).all()
    attempts = tuple(
        c.started_at
        for c in calls
        if c.started_at is not None and c.status is not CallStatus.canceled
    )
    contacts = tuple(c.answered_at for c in calls if c.answered_at is not None)
    return attempts, contacts


def _recent_messages(
    db: Session, *, lead: Lead, channel: Channel, since: datetime
) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    """Our outbound messages on `channel` since `since`: each one sent reached the lead,
    so each is both an attempt and a contact. (The lead domain has no query for this,
    so it is read here, scoped to the lead's broker.)"""
    sent = db.scalars(
        select(LeadActivity.occurred_at).where(
            LeadActivity.broker_id == lead.broker_id,
            LeadActivity.lead_id == lead.id,
            LeadActivity.kind == ActivityKind.message,
            LeadActivity.channel == channel,
            LeadActivity.direction == Direction.outbound,
            LeadActivity.occurred_at >= since,
        )
    ).all()
    return tuple(sent), tuple(sent)
