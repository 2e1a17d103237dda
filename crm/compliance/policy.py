"""May we contact this lead on this channel now, and if not, when next? Rules as data.

The campaign engine and the outbound dialer ask this one question right before each
contact and get a `Verdict` from `evaluate`, a pure function of the facts
(`crm.compliance.service` gathers them from the database). Each jurisdiction is one
frozen `Policy` row in `POLICIES`, written to read like the law it encodes, never an `if`
in a sender. Where the law gives no rule we know of, a row takes the stricter reading and
says so in `notes`; where a rule needs data the project does not hold (national
do-not-call registries, the lead's address), `notes` says that too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import cache
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import phonenumbers
from phonenumbers import geocoder

from crm import phones
from crm.compliance.windows import (
    Week,
    describe,
    every_day,
    hours,
    next_opening,
    next_week_start,
    week,
    week_start,
)
from crm.enums import Channel

ATTEMPT_WINDOW = timedelta(hours=24)


class Disclosure(StrEnum):
    """What the caller must say at the start of a call, in this order."""

    business_legal_name = "business_legal_name"
    business_phone_number = "business_phone_number"
    commercial_purpose = "commercial_purpose"
    recording_announcement = "recording_announcement"
    opt_out_offer = "opt_out_offer"


class RefusalCode(StrEnum):
    do_not_call = "do_not_call"
    no_consent = "no_consent"
    holiday = "holiday"
    closed_day = "closed_day"
    outside_hours = "outside_hours"
    attempt_cap = "attempt_cap"
    contacted_this_week = "contacted_this_week"


#: `lead.do_not_call` means "do not contact by phone". A text is a call under the TCPA,
#: so SMS is blocked too; WhatsApp, Telegram and email rely on their own consent.
DNC_CHANNELS = frozenset({Channel.call, Channel.sms})
CALL_ONLY = frozenset({Channel.call})
ALL_CHANNELS = frozenset(Channel)
#: The laws below speak of calls; a written message still says who sends it and how to
#: stop them (the conservative reading, whatever the policy).
MESSAGE_DISCLOSURES = (Disclosure.business_legal_name, Disclosure.opt_out_offer)


@dataclass(frozen=True, slots=True)
class HolidayCalendar:
    """Public holidays of a country (ISO 3166-1) or one of its subdivisions."""

    country: str
    subdivision: str | None = None

    def holiday(self, day: date) -> str | None:
        """The holiday's name, or None on an ordinary day."""
        name = _holidays(self.country, self.subdivision).get(day)
        return str(name) if name is not None else None

    def __str__(self) -> str:
        return f"{self.country}-{self.subdivision}" if self.subdivision else self.country


@cache
def _holidays(country: str, subdivision: str | None) -> holidays.HolidayBase:
    return holidays.country_holidays(country, subdiv=subdivision)


@dataclass(frozen=True, slots=True)
class Policy:
    """One jurisdiction's rules for contacting a person who is there."""

    name: str
    #: The rules' source, for whoever reads a verdict.
    basis: str
    #: Local hours of the called party, Monday first; a closed weekend is an empty day.
    hours: Week
    #: Closed on these public holidays; None: holidays are ordinary days.
    holidays: HolidayCalendar | None = None
    #: Channels the hours and holidays bind (most laws only speak of calls).
    hours_apply_to: frozenset[Channel] = CALL_ONLY
    #: Calls on the same subject per rolling 24 h; every call of ours is on one subject.
    max_calls_per_24h: int | None = None
    #: After a successful contact, none again on that channel until the next local week.
    one_contact_per_week: bool = False
    #: AI/artificial-voice calls need express prior consent on record.
    automated_needs_consent: bool = True
    #: Every party must consent to a recording: announce it on every call.
    announce_recording: bool = False
    disclosures: tuple[Disclosure, ...] = ()
    #: Said on top of `disclosures` when the voice is artificial.
    automated_disclosures: tuple[Disclosure, ...] = ()
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.hours) != 7:
            raise ValueError(f"policy {self.name}: hours need 7 days, got {len(self.hours)}")

    def call_disclosures(self, *, automated: bool) -> tuple[Disclosure, ...]:
        wanted = set(self.disclosures)
        if automated:
            wanted |= set(self.automated_disclosures)
        if self.announce_recording:
            wanted.add(Disclosure.recording_announcement)
        return tuple(d for d in Disclosure if d in wanted)


# --- the policies ---------------------------------------------------------------------

#: For countries whose calling hours the reference does not give: narrower than the US
#: and Spanish windows and inside Canada's (weekends 10–18); never Sundays or holidays.
CONSERVATIVE_HOURS = week(weekdays=hours(9, 20), saturday=hours(10, 18))
#: Say who calls, why, and how to stop: what the strictest laws ask at the start.
CONSERVATIVE_DISCLOSURES = (
    Disclosure.business_legal_name,
    Disclosure.commercial_purpose,
    Disclosure.opt_out_offer,
)
CONSERVATIVE_NOTE = (
    "Where the law is silent: the conservative hours, no calls on public holidays, "
    "consent before automated calls, and a recording announcement."
)

US = Policy(
    name="US",
    basis="47 CFR 64.1200(c)(1) calling hours; 64.1200(b) and FCC 24-17 artificial voices",
    hours=every_day(hours(8, 21)),
    disclosures=(Disclosure.business_legal_name, Disclosure.business_phone_number),
    automated_disclosures=(Disclosure.opt_out_offer,),
    notes=(
        "Federal law has no holiday rule. The National DNC Registry (a copy at most 31 days "
        "old) is not held here: only the internal do-not-call list is enforced."
    ),
)

#: States where every party to a call must consent to its recording.
ALL_PARTY_CONSENT_STATES = ("CA", "CT", "FL", "IL", "MD", "MA", "MI", "MT", "NV", "NH", "PA", "WA")


def _all_party_consent_state(state: str) -> Policy:
    return replace(
        US,
        name=f"US-{state}",
        basis=f"{US.basis}; all-party consent to recording in {state}",
        announce_recording=True,
    )


US_FL = replace(
    _all_party_consent_state("FL"),
    basis=f"{US.basis}; Fla. Stat. 501.059(8) (FTSA); all-party consent to recording",
    hours=every_day(hours(8, 20)),
    max_calls_per_24h=3,
)

ES = Policy(
    name="ES",
    basis="Ley 11/2022 art. 66.1.b; TRLGDCU art. 96.2",
    hours=week(weekdays=hours(9, 21)),
    holidays=HolidayCalendar("ES"),
    announce_recording=True,
    disclosures=CONSERVATIVE_DISCLOSURES,
    notes=(
        "Working days only. National holidays: regional and local ones need the lead's "
        "address, which is not recorded. The Robinson list is not held here. Recording "
        "is announced because the GDPR asks to inform at collection."
    ),
)

CO = Policy(
    name="CO",
    basis="Ley 2300 de 2023",
    hours=week(weekdays=hours(7, 19), saturday=hours(8, 15)),
    holidays=HolidayCalendar("CO"),
    hours_apply_to=ALL_CHANNELS,
    one_contact_per_week=True,
    announce_recording=True,
    disclosures=CONSERVATIVE_DISCLOSURES,
    notes=(
        "The law covers every channel, so hours and the weekly limit bind messages too. "
        + CONSERVATIVE_NOTE
    ),
)

MX = Policy(
    name="MX",
    basis="LFPC (REPEP); hours: conservative default",
    hours=CONSERVATIVE_HOURS,
    holidays=HolidayCalendar("MX"),
    announce_recording=True,
    disclosures=CONSERVATIVE_DISCLOSURES,
    notes=(
        "REPEP registrations (binding 30 days after registering) are not held here. "
        + CONSERVATIVE_NOTE
    ),
)

CL = Policy(
    name="CL",
    basis="SERNAC No Molestar; hours: conservative default",
    hours=CONSERVATIVE_HOURS,
    holidays=HolidayCalendar("CL"),
    announce_recording=True,
    disclosures=CONSERVATIVE_DISCLOSURES,
    notes=(
        "No Molestar requests (binding within 24 business hours) are not held here. "
        "Unsolicited sales calls must come from an 809-prefixed number (since 2025-08-13): "
        "the dialer's choice of caller ID. " + CONSERVATIVE_NOTE
    ),
)

DEFAULT = Policy(
    name="default",
    basis="conservative default for countries without a policy",
    hours=CONSERVATIVE_HOURS,
    announce_recording=True,
    disclosures=CONSERVATIVE_DISCLOSURES,
    notes=CONSERVATIVE_NOTE + " Holidays are the number's country's, where known.",
)

POLICIES: Mapping[str, Policy] = MappingProxyType(
    {
        p.name: p
        for p in (
            US,
            *(_all_party_consent_state(s) for s in ALL_PARTY_CONSENT_STATES if s != "FL"),
            US_FL,
            ES,
            CO,
            MX,
            CL,
            DEFAULT,
        )
    }
)

#: NANP territories where US federal law applies; the numbering plan gives them a region.
US_TERRITORIES = frozenset({"PR", "VI", "GU", "AS", "MP"})


# --- choosing a policy ----------------------------------------------------------------


@cache
def _us_state_codes() -> Mapping[str, str]:
    """State names and codes → code; the geocoder says "Florida" or "San Francisco, CA"."""
    us = holidays.country_holidays("US")
    codes = {code: code for code in us.subdivisions}
    codes.update(us.subdivisions_aliases)
    codes.update({"Washington State": "WA", "Washington D.C.": "DC"})
    return MappingProxyType(codes)


def us_state(e164: str) -> str | None:
    """The state a US number's area code belongs to, or None (toll-free, non-geographic)."""
    place = geocoder.description_for_number(phonenumbers.parse(e164, None), "en")
    return _us_state_codes().get(place.rsplit(",", 1)[-1].strip())


@cache
def policy_for(region: str | None, subdivision: str | None = None) -> Policy:
    """The most specific policy: the subdivision's, the country's, else the default with
    the country's holidays (when the holidays package knows the country)."""
    if not region:
        return DEFAULT
    if region in US_TERRITORIES:
        region, subdivision = "US", None
    known = POLICIES.get(f"{region}-{subdivision}") or POLICIES.get(region)
    if known is not None:
        return known
    if region in holidays.list_supported_countries():
        return replace(DEFAULT, name=f"default-{region}", holidays=HolidayCalendar(region))
    return DEFAULT


def policy_for_number(e164: str) -> Policy:
    """The called party's policy, from the country of the number and a US area code."""
    try:
        region = phones.region_of(e164)
    except phonenumbers.NumberParseException as exc:
        raise phones.InvalidPhoneNumber(f"{e164!r} is not an E.164 phone number") from exc
    return policy_for(region, us_state(e164) if region == "US" else None)


# --- the facts and the verdict --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentFact:
    channel: Channel
    granted_at: datetime
    revoked_at: datetime | None = None

    def live_at(self, at: datetime) -> bool:
        return self.granted_at <= at and (self.revoked_at is None or self.revoked_at > at)


@dataclass(frozen=True, slots=True)
class ContactFacts:
    """What the gate needs to know about one lead and one channel; all times aware.

    `attempts` are our outbound attempts on the channel (any outcome) and `contacts` the
    successful ones, both at least as far back as the last 24 h and the current week.
    WhatsApp's 24-hour session rule (free-form only within 24 h of the lead's last
    message, else an approved template) is the campaign engine's, which knows what it
    sends; it would come in as one more fact here.
    """

    channel: Channel
    automated: bool
    phone: str
    time_zone: str
    do_not_call: bool = False
    consents: tuple[ConsentFact, ...] = ()
    attempts: tuple[datetime, ...] = ()
    contacts: tuple[datetime, ...] = ()

    def __post_init__(self) -> None:
        moments = [*self.attempts, *self.contacts]
        moments += [c.granted_at for c in self.consents]
        moments += [c.revoked_at for c in self.consents if c.revoked_at is not None]
        if any(m.tzinfo is None for m in moments):
            raise ValueError("contact facts need aware datetimes")


@dataclass(frozen=True, slots=True)
class Refusal:
    code: RefusalCode
    message: str


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reasons: tuple[Refusal, ...]
    #: `at` when allowed; else the first moment every time rule allows (UTC); None when
    #: waiting cannot help (do-not-call, no consent) or nothing opens within the horizon.
    next_allowed_at: datetime | None
    policy: str
    time_zone: str
    local_time: datetime
    disclosures: tuple[Disclosure, ...]


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name like Europe/Madrid"
        ) from None


def _stamp(moment: datetime, zone: ZoneInfo) -> str:
    return f"{moment.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def _permission(facts: ContactFacts, policy: Policy, at: datetime) -> list[Refusal]:
    """Refusals that no amount of waiting cures."""
    refusals = []
    if facts.do_not_call and facts.channel in DNC_CHANNELS:
        refusals.append(
            Refusal(RefusalCode.do_not_call, "the lead is on the internal do-not-call list")
        )
    if facts.channel is Channel.call:
        needs_consent = facts.automated and policy.automated_needs_consent
        what = "express prior consent to automated calls"
    else:
        needs_consent, what = True, f"consent to be contacted by {facts.channel.value}"
    live = any(c.channel is facts.channel and c.live_at(at) for c in facts.consents)
    if needs_consent and not live:
        refusals.append(
            Refusal(RefusalCode.no_consent, f"no {what} on record ({policy.name} policy)")
        )
    return refusals


def _frequency(
    facts: ContactFacts, policy: Policy, zone: ZoneInfo, at: datetime
) -> list[tuple[Refusal, datetime]]:
    """Refusals from earlier contacts, each with the moment it lifts."""
    waits = []
    cap = policy.max_calls_per_24h
    if cap is not None and facts.channel is Channel.call:
        recent = sorted(a for a in facts.attempts if at - ATTEMPT_WINDOW < a <= at)
        if len(recent) >= cap:
            lifts = recent[-cap] + ATTEMPT_WINDOW
            message = (
                f"{len(recent)} calls in the last 24 h, at most {cap} under {policy.name}; "
                f"the oldest of them leaves the window at {_stamp(lifts, zone)}"
            )
            waits.append((Refusal(RefusalCode.attempt_cap, message), lifts))
    if policy.one_contact_per_week:
        monday = week_start(at, zone)
        if any(monday <= c <= at for c in facts.contacts):
            lifts = next_week_start(at, zone)
            message = (
                f"already contacted by {facts.channel.value} this week; "
                f"{policy.name} allows one successful contact per channel per week"
            )
            waits.append((Refusal(RefusalCode.contacted_this_week, message), lifts))
    return waits


def _hours(facts: ContactFacts, policy: Policy, zone: ZoneInfo, at: datetime) -> Refusal | None:
    if facts.channel not in policy.hours_apply_to:
        return None
    local = at.astimezone(zone)
    calendar = policy.holidays
    name = calendar.holiday(local.date()) if calendar else None
    if name is not None:
        return Refusal(
            RefusalCode.holiday, f"public holiday in {calendar}: {name} ({local:%Y-%m-%d})"
        )
    today = policy.hours[local.weekday()]
    if not today:
        return Refusal(RefusalCode.closed_day, f"no contact on {local:%A}s under {policy.name}")
    if next_opening(policy.hours, zone, at) != at:
        return Refusal(
            RefusalCode.outside_hours,
            f"outside calling hours: {local:%H:%M} in {zone.key}, allowed {describe(today)}",
        )
    return None


def _next_allowed(
    policy: Policy, channel: Channel, zone: ZoneInfo, after: datetime
) -> datetime | None:
    if channel not in policy.hours_apply_to:
        return after
    calendar = policy.holidays
    closed = (lambda day: calendar.holiday(day) is not None) if calendar else (lambda _day: False)
    return next_opening(policy.hours, zone, after, closed=closed)


def evaluate(facts: ContactFacts, at: datetime) -> Verdict:
    """Whether every rule of the called party's policy allows contact at `at`, and if not,
    why and when next."""
    if at.tzinfo is None:
        raise ValueError("evaluate needs an aware datetime")
    at = at.astimezone(UTC)
    policy = policy_for_number(facts.phone)
    zone = _zone(facts.time_zone)
    blocked = _permission(facts, policy, at)
    waits = _frequency(facts, policy, zone, at)
    outside = _hours(facts, policy, zone, at)
    reasons = (*blocked, *(refusal for refusal, _ in waits), *([outside] if outside else []))
    next_at = None
    if not blocked:
        after = max([at, *(lifts for _, lifts in waits)])
        next_at = _next_allowed(policy, facts.channel, zone, after)
    if facts.channel is Channel.call:
        disclosures = policy.call_disclosures(automated=facts.automated)
    else:
        disclosures = MESSAGE_DISCLOSURES
    return Verdict(
        allowed=not reasons,
        reasons=reasons,
        next_allowed_at=next_at,
        policy=policy.name,
        time_zone=zone.key,
        local_time=at.astimezone(zone),
        disclosures=disclosures,
    )
