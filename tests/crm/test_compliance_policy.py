"""The compliance gate's pure core: every policy's hours, holidays, caps and permissions,
the next allowed moment across weekends, holidays and DST, and policy choice by number."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from crm.compliance.policy import (
    DEFAULT,
    POLICIES,
    ConsentFact,
    ContactFacts,
    Disclosure,
    Refusal,
    RefusalCode,
    evaluate,
    policy_for,
    policy_for_number,
    us_state,
)
from crm.compliance.windows import Window
from crm.enums import Channel
from crm.phones import InvalidPhoneNumber

NY = ("+12125550123", "America/New_York")
FL = ("+13055550123", "America/New_York")
CA = ("+14155550123", "America/Los_Angeles")
ES = ("+34612345678", "Europe/Madrid")
CO = ("+573001234567", "America/Bogota")
MX = ("+525512345678", "America/Mexico_City")
CL = ("+56221234567", "America/Santiago")
DE = ("+4930123456", "Europe/Berlin")


def local(where: tuple[str, str], stamp: str, *, fold: int = 0) -> datetime:
    """`stamp` (ISO, no offset) as wall time in the zone of `where`."""
    return datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo(where[1]), fold=fold)


def utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC)


def facts(
    where: tuple[str, str],
    channel: Channel = Channel.call,
    *,
    automated: bool = False,
    do_not_call: bool = False,
    consents: tuple[ConsentFact, ...] = (),
    attempts: tuple[datetime, ...] = (),
    contacts: tuple[datetime, ...] = (),
) -> ContactFacts:
    """A person calling by default: no consent needed, so only the time rules speak."""
    return ContactFacts(
        channel=channel,
        automated=automated,
        phone=where[0],
        time_zone=where[1],
        do_not_call=do_not_call,
        consents=consents,
        attempts=attempts,
        contacts=contacts,
    )


def codes(reasons: tuple[Refusal, ...]) -> list[RefusalCode]:
    return [r.code for r in reasons]


# --- hours and holidays, every policy ------------------------------------------------

HOURS_CASES = [
    # (where, local wall time, expected policy, refusal code or None)
    (NY, "2026-06-10T08:00:00", "US", None),
    (NY, "2026-06-10T07:59:59", "US", RefusalCode.outside_hours),
    (NY, "2026-06-10T20:59:59", "US", None),
    (NY, "2026-06-10T21:00:00", "US", RefusalCode.outside_hours),
    (NY, "2026-06-13T10:00:00", "US", None),  # Saturday: federal law allows it
    (NY, "2026-06-14T10:00:00", "US", None),  # Sunday too
    (NY, "2026-11-26T10:00:00", "US", None),  # Thanksgiving: no federal holiday rule
    (FL, "2026-06-10T08:00:00", "US-FL", None),
    (FL, "2026-06-10T19:59:59", "US-FL", None),
    (FL, "2026-06-10T20:00:00", "US-FL", RefusalCode.outside_hours),
    (CA, "2026-06-10T20:30:00", "US-CA", None),
    (CA, "2026-06-10T21:00:00", "US-CA", RefusalCode.outside_hours),
    (ES, "2026-06-10T09:00:00", "ES", None),
    (ES, "2026-06-10T08:59:59", "ES", RefusalCode.outside_hours),
    (ES, "2026-06-10T20:59:59", "ES", None),
    (ES, "2026-06-10T21:00:00", "ES", RefusalCode.outside_hours),
    (ES, "2026-06-13T10:00:00", "ES", RefusalCode.closed_day),  # Saturday
    (ES, "2026-06-14T10:00:00", "ES", RefusalCode.closed_day),  # Sunday
    (ES, "2026-12-08T10:00:00", "ES", RefusalCode.holiday),  # Inmaculada, a Tuesday
    (CO, "2026-06-10T07:00:00", "CO", None),
    (CO, "2026-06-10T06:59:59", "CO", RefusalCode.outside_hours),
    (CO, "2026-06-10T18:59:59", "CO", None),
    (CO, "2026-06-10T19:00:00", "CO", RefusalCode.outside_hours),
    (CO, "2026-06-13T08:00:00", "CO", None),  # Saturday 8–15
    (CO, "2026-06-13T07:59:59", "CO", RefusalCode.outside_hours),
    (CO, "2026-06-13T15:00:00", "CO", RefusalCode.outside_hours),
    (CO, "2026-06-14T10:00:00", "CO", RefusalCode.closed_day),
    (CO, "2026-12-08T10:00:00", "CO", RefusalCode.holiday),
    (MX, "2026-06-10T09:00:00", "MX", None),
    (MX, "2026-06-10T20:00:00", "MX", RefusalCode.outside_hours),
    (MX, "2026-06-13T09:30:00", "MX", RefusalCode.outside_hours),  # Saturday opens at 10
    (MX, "2026-06-13T10:00:00", "MX", None),
    (MX, "2026-06-14T12:00:00", "MX", RefusalCode.closed_day),
    (MX, "2026-09-16T12:00:00", "MX", RefusalCode.holiday),  # Independence Day
    (CL, "2026-06-10T19:59:59", "CL", None),
    (CL, "2026-06-14T12:00:00", "CL", RefusalCode.closed_day),
    (CL, "2026-09-18T12:00:00", "CL", RefusalCode.holiday),  # Fiestas Patrias
    (DE, "2026-06-10T09:00:00", "default-DE", None),
    (DE, "2026-06-13T18:00:00", "default-DE", RefusalCode.outside_hours),
    (DE, "2026-06-14T12:00:00", "default-DE", RefusalCode.closed_day),
    (DE, "2026-12-25T12:00:00", "default-DE", RefusalCode.holiday),
]


@pytest.mark.parametrize(("where", "stamp", "policy", "code"), HOURS_CASES)
def test_calling_hours_and_holidays(
    where: tuple[str, str], stamp: str, policy: str, code: RefusalCode | None
) -> None:
    at = local(where, stamp)
    verdict = evaluate(facts(where), at)
    assert verdict.policy == policy
    assert codes(verdict.reasons) == ([code] if code else [])
    assert verdict.allowed is (code is None)
    assert verdict.time_zone == where[1]
    assert verdict.local_time == at
    assert verdict.local_time.tzinfo == ZoneInfo(where[1])
    if code is None:
        assert verdict.next_allowed_at == at
    else:
        assert verdict.next_allowed_at is not None
        assert verdict.next_allowed_at > at


def test_refusal_messages_say_what_and_where() -> None:
    late = evaluate(facts(NY), local(NY, "2026-06-10T21:30:00"))
    assert late.reasons[0].message == (
        "outside calling hours: 21:30 in America/New_York, allowed 08:00–21:00"
    )
    holiday = evaluate(facts(ES), local(ES, "2026-12-08T10:00:00"))
    assert "Immaculate Conception" in holiday.reasons[0].message
    sunday = evaluate(facts(CO), local(CO, "2026-06-14T10:00:00"))
    assert sunday.reasons[0].message == "no contact on Sundays under CO"


# --- the next allowed moment ---------------------------------------------------------

NEXT_CASES = [
    # Evening → next morning, same zone.
    (NY, "2026-06-10T21:00:00", 0, "2026-06-11T12:00:00"),
    # US spring forward (Sun 2026-03-08): 08:00 EDT is 12:00 UTC, not 13:00.
    (NY, "2026-03-07T22:00:00", 0, "2026-03-08T12:00:00"),
    # US fall back (Sun 2026-11-01): 08:00 EST is 13:00 UTC; from inside the repeated hour too.
    (NY, "2026-10-31T21:30:00", 0, "2026-11-01T13:00:00"),
    (NY, "2026-11-01T01:30:00", 1, "2026-11-01T13:00:00"),
    # Spain: Friday night over a weekend that starts summer time (Sun 2026-03-29).
    (ES, "2026-03-27T21:30:00", 0, "2026-03-30T07:00:00"),
    # Spain: Friday night over a weekend that ends it (Sun 2026-10-25).
    (ES, "2026-10-23T21:00:00", 0, "2026-10-26T08:00:00"),
    # Spain: Thursday night, Good Friday, then the weekend → Monday 09:00 CEST.
    (ES, "2026-04-02T21:30:00", 0, "2026-04-06T07:00:00"),
    # Spain: Monday night, then the Inmaculada → Wednesday 09:00 CET.
    (ES, "2026-12-07T21:00:00", 0, "2026-12-09T08:00:00"),
    # Colombia: Saturday 15:00, Sunday, then Monday's Cartagena holiday → Tuesday 07:00.
    (CO, "2026-11-14T15:00:00", 0, "2026-11-17T12:00:00"),
    # Colombia: Saturday before 8 → 8 the same day.
    (CO, "2026-06-13T06:00:00", 0, "2026-06-13T13:00:00"),
    # Default (Germany): Saturday 18:00 → Monday 09:00 CEST (Sunday closed).
    (DE, "2026-06-13T18:00:00", 0, "2026-06-15T07:00:00"),
]


@pytest.mark.parametrize(("where", "stamp", "fold", "expected"), NEXT_CASES)
def test_next_allowed_at_crosses_days_weekends_holidays_and_dst(
    where: tuple[str, str], stamp: str, fold: int, expected: str
) -> None:
    verdict = evaluate(facts(where), local(where, stamp, fold=fold))
    assert not verdict.allowed
    assert verdict.next_allowed_at == utc(expected)
    assert evaluate(facts(where), verdict.next_allowed_at).allowed
    assert not evaluate(facts(where), verdict.next_allowed_at - timedelta(seconds=1)).allowed


# --- frequency: Florida's cap, Colombia's week ---------------------------------------


def test_florida_refuses_a_fourth_call_until_the_oldest_leaves_the_24_hours() -> None:
    at = local(FL, "2026-06-10T11:00:00")
    calls = (at - timedelta(hours=23), at - timedelta(hours=5), at - timedelta(minutes=30))
    verdict = evaluate(facts(FL, attempts=calls), at)
    assert codes(verdict.reasons) == [RefusalCode.attempt_cap]
    assert verdict.next_allowed_at == calls[0] + timedelta(hours=24)
    assert "3 calls in the last 24 h, at most 3 under US-FL" in verdict.reasons[0].message
    assert evaluate(facts(FL, attempts=calls), verdict.next_allowed_at).allowed


def test_florida_cap_lifting_after_hours_waits_for_the_morning() -> None:
    at = local(FL, "2026-06-10T19:00:00")
    calls = (at - timedelta(hours=22), at - timedelta(hours=2), at - timedelta(hours=1))
    verdict = evaluate(facts(FL, attempts=calls), at)
    assert codes(verdict.reasons) == [RefusalCode.attempt_cap]
    # The oldest leaves at 21:00, after Florida's 20:00 close: next is 08:00 the next day.
    assert verdict.next_allowed_at == local(FL, "2026-06-11T08:00:00")


@pytest.mark.parametrize(
    ("where", "ago_hours", "allowed"),
    [
        (FL, (24, 5, 1), True),  # the oldest is exactly 24 h old: out of the window
        (FL, (30, 5, 1), True),
        (FL, (5, 1), True),
        (NY, (5, 4, 3, 2, 1), True),  # no federal cap
    ],
)
def test_call_cap_edges(where: tuple[str, str], ago_hours: tuple[int, ...], allowed: bool) -> None:
    at = local(where, "2026-06-10T11:00:00")
    calls = tuple(at - timedelta(hours=h) for h in ago_hours)
    assert evaluate(facts(where, attempts=calls), at).allowed is allowed


def test_colombia_one_successful_contact_per_channel_per_week() -> None:
    # Week of Monday 2026-09-07 (no Colombian holiday in it or on the next Monday).
    monday = local(CO, "2026-09-07T10:00:00")
    wednesday = local(CO, "2026-09-09T10:00:00")
    verdict = evaluate(facts(CO, attempts=(monday,), contacts=(monday,)), wednesday)
    assert codes(verdict.reasons) == [RefusalCode.contacted_this_week]
    assert verdict.next_allowed_at == local(CO, "2026-09-14T07:00:00")
    # An attempt that reached nobody does not use up the week.
    assert evaluate(facts(CO, attempts=(monday,)), wednesday).allowed
    # Last week's contact does not count (Sunday 2026-09-06 is the previous week).
    sunday = local(CO, "2026-09-06T10:00:00")
    assert evaluate(facts(CO, contacts=(sunday,)), wednesday).allowed
    # The US has no such rule.
    us_monday = local(NY, "2026-06-08T10:00:00")
    assert evaluate(facts(NY, contacts=(us_monday,)), local(NY, "2026-06-10T10:00:00")).allowed


def test_colombia_binds_messages_too_with_their_consent() -> None:
    consent = (ConsentFact(Channel.whatsapp, utc("2026-01-01T00:00:00")),)
    sunday = local(CO, "2026-09-13T10:00:00")
    verdict = evaluate(facts(CO, Channel.whatsapp, consents=consent), sunday)
    assert codes(verdict.reasons) == [RefusalCode.closed_day]
    assert verdict.next_allowed_at == local(CO, "2026-09-14T07:00:00")
    sent = local(CO, "2026-09-14T09:00:00")
    week = evaluate(
        facts(CO, Channel.whatsapp, consents=consent, contacts=(sent,)),
        local(CO, "2026-09-15T09:00:00"),
    )
    assert codes(week.reasons) == [RefusalCode.contacted_this_week]
    # Spain's hours speak of calls only: a WhatsApp on a Sunday is not refused by them.
    es_sunday = local(ES, "2026-06-14T10:00:00")
    assert evaluate(facts(ES, Channel.whatsapp, consents=consent), es_sunday).allowed


# --- permissions: do-not-call and consent --------------------------------------------

GRANTED = utc("2026-01-01T00:00:00")
NOON_NY = local(NY, "2026-06-10T12:00:00")


def test_internal_do_not_call_blocks_calls_and_texts_at_once_for_good() -> None:
    for channel in (Channel.call, Channel.sms):
        consent = (ConsentFact(channel, GRANTED),)
        verdict = evaluate(facts(NY, channel, do_not_call=True, consents=consent), NOON_NY)
        assert codes(verdict.reasons) == [RefusalCode.do_not_call]
        assert verdict.next_allowed_at is None
    # Do-not-call is about the phone: a WhatsApp the lead consented to is still allowed.
    consent = (ConsentFact(Channel.whatsapp, GRANTED),)
    whatsapp = facts(NY, Channel.whatsapp, do_not_call=True, consents=consent)
    assert evaluate(whatsapp, NOON_NY).allowed


def test_waiting_cannot_cure_a_permanent_refusal_even_with_time_refusals() -> None:
    verdict = evaluate(facts(NY, do_not_call=True), local(NY, "2026-06-10T22:00:00"))
    assert codes(verdict.reasons) == [RefusalCode.do_not_call, RefusalCode.outside_hours]
    assert verdict.next_allowed_at is None


@pytest.mark.parametrize(
    ("consents", "allowed"),
    [
        ((), False),
        ((ConsentFact(Channel.call, GRANTED),), True),
        ((ConsentFact(Channel.call, GRANTED, revoked_at=utc("2026-05-01T00:00:00")),), False),
        ((ConsentFact(Channel.call, GRANTED, revoked_at=utc("2026-07-01T00:00:00")),), True),
        ((ConsentFact(Channel.call, utc("2026-06-11T00:00:00")),), False),  # granted later
        ((ConsentFact(Channel.whatsapp, GRANTED),), False),  # another channel's
        (
            (
                ConsentFact(Channel.call, GRANTED, revoked_at=utc("2026-02-01T00:00:00")),
                ConsentFact(Channel.call, utc("2026-03-01T00:00:00")),
            ),
            True,
        ),
    ],
)
def test_automated_calls_need_live_express_consent(
    consents: tuple[ConsentFact, ...], allowed: bool
) -> None:
    verdict = evaluate(facts(NY, automated=True, consents=consents), NOON_NY)
    assert verdict.allowed is allowed
    if not allowed:
        assert codes(verdict.reasons) == [RefusalCode.no_consent]
        assert verdict.next_allowed_at is None
        assert "express prior consent to automated calls" in verdict.reasons[0].message
    # A person calling needs no such consent.
    assert evaluate(facts(NY, consents=consents), NOON_NY).allowed


def test_messages_need_consent_on_their_own_channel() -> None:
    refused = evaluate(facts(ES, Channel.whatsapp), local(ES, "2026-06-10T12:00:00"))
    assert codes(refused.reasons) == [RefusalCode.no_consent]
    assert refused.reasons[0].message == (
        "no consent to be contacted by whatsapp on record (ES policy)"
    )
    call_consent = (ConsentFact(Channel.call, GRANTED),)
    email = evaluate(facts(ES, Channel.email, consents=call_consent), local(ES, "2026-06-10T12:00"))
    assert not email.allowed


# --- disclosures ---------------------------------------------------------------------


def test_disclosures_come_from_the_policy_in_speaking_order() -> None:
    def said(where: tuple[str, str], automated: bool = False) -> tuple[Disclosure, ...]:
        consent = (ConsentFact(Channel.call, GRANTED),)
        return evaluate(facts(where, automated=automated, consents=consent), NOON_NY).disclosures

    name, number = Disclosure.business_legal_name, Disclosure.business_phone_number
    purpose, recording = Disclosure.commercial_purpose, Disclosure.recording_announcement
    opt_out = Disclosure.opt_out_offer
    assert said(NY) == (name, number)
    assert said(NY, automated=True) == (name, number, opt_out)
    assert said(CA) == (name, number, recording)
    assert said(FL, automated=True) == (name, number, recording, opt_out)
    assert said(ES) == (name, purpose, recording, opt_out)
    consent = (ConsentFact(Channel.sms, GRANTED),)
    assert evaluate(facts(NY, Channel.sms, consents=consent), NOON_NY).disclosures == (
        name,
        opt_out,
    )


# --- choosing the policy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "state", "policy"),
    [
        ("+13055550123", "FL", "US-FL"),
        ("+17865551234", "FL", "US-FL"),
        ("+14155550123", "CA", "US-CA"),
        ("+12125550123", "NY", "US"),
        ("+16175551234", "MA", "US-MA"),
        ("+12065551234", "WA", "US-WA"),  # the geocoder says "Washington State"
        ("+12025550123", "DC", "US"),  # and "Washington D.C."
        ("+13125550123", "IL", "US-IL"),
        ("+17135550123", "TX", "US"),
        ("+18005550199", None, "US"),  # toll-free: no state
    ],
)
def test_us_area_code_picks_the_state(number: str, state: str | None, policy: str) -> None:
    assert us_state(number) == state
    assert policy_for_number(number).name == policy


def test_every_all_party_consent_state_announces_recording() -> None:
    for state in ("CA", "CT", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "PA", "WA"):
        assert POLICIES[f"US-{state}"].announce_recording
    assert not POLICIES["US"].announce_recording
    assert POLICIES["US-CA"].hours == POLICIES["US"].hours


@pytest.mark.parametrize(
    ("number", "policy"),
    [
        ("+34612345678", "ES"),
        ("+34912345678", "ES"),
        ("+573001234567", "CO"),
        ("+525512345678", "MX"),
        ("+56221234567", "CL"),
        ("+17875550123", "US"),  # Puerto Rico: US federal law
        ("+4930123456", "default-DE"),
        ("+442071234567", "default-GB"),
    ],
)
def test_country_picks_the_policy(number: str, policy: str) -> None:
    assert policy_for_number(number).name == policy


def test_unknown_country_gets_the_conservative_default() -> None:
    assert policy_for(None) is DEFAULT
    assert policy_for("001") is DEFAULT  # non-geographic numbers
    germany = policy_for("DE")
    assert germany == replace(DEFAULT, name="default-DE", holidays=germany.holidays)
    assert str(germany.holidays) == "DE"
    assert DEFAULT.hours[6] == ()  # never on Sundays


# --- bad input -----------------------------------------------------------------------


def test_bad_facts_are_refused_with_a_reason() -> None:
    naive = datetime.fromisoformat("2026-06-10T12:00:00")
    with pytest.raises(ValueError, match="aware"):
        evaluate(facts(NY), naive)
    with pytest.raises(ValueError, match="aware"):
        facts(NY, attempts=(naive,))
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        evaluate(facts(("+12125550123", "Mars/Olympus")), NOON_NY)
    with pytest.raises(InvalidPhoneNumber):
        evaluate(facts(("not a number", "UTC")), NOON_NY)
    with pytest.raises(ValueError, match="start before it ends"):
        Window(time(21), time(8))
