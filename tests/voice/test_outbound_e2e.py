"""Outbound calls through the real gateway on PostgreSQL, Twilio's REST API stood in for.

A broker POSTs `/api/v1/calls`; the gateway's real Twilio provider (the official SDK)
sends `calls.create` to the local stand-in (tests/voice/standins/twilio_rest.py), which
keeps every form field. The test then plays Twilio's part: it reads the TwiML the
gateway gave, answers with the call simulator (the stream opens with Twilio's CallSid),
and posts the signed status and AMD callbacks Twilio would. What is asserted is what
the CRM stored and what reached the stand-in.

Every refusal leaves no Call row and sends nothing to Twilio; a call Twilio refuses is
the one failure that leaves a Call, ended as failed with the reason.

The compliance gate runs for real: leads get a US number (federal rules: 8:00 to 21:00
local, every day, consent on record for automated calls) and an `Etc/GMT±N` time zone
picked so that it is midday (or, to be refused, the middle of the night) for them now.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.brokers import service as broker_service
from crm.calls import service as call_service
from crm.calls.models import Call, CallStatus, CallStatusEvent, TurnRole
from crm.db import session_scope
from crm.enums import Channel, Language
from crm.leads import service as lead_service
from crm.leads.models import Direction
from crm.leads.schemas import LeadCreate
from tests import services
from tests.voice.gateway_server import (
    AUTH_TOKEN,
    Gateway,
    ended_call,
    running_gateway,
    turns_of,
    wait_for,
)
from tests.voice.standins.twilio_rest import RecordedRequest, TwilioRestStandIn
from voice_gateway.amd import spoken_number
from voice_gateway.call_control import (
    ControlEvent,
    ControlKind,
    RedisCallControl,
    channel_of,
)
from voice_gateway.events import EndReason
from voice_gateway.outbound import longest_call
from voice_gateway.providers.stt_fake import FakeSpeechToText
from voice_gateway.session import PHRASES
from voice_gateway.simulator import CallResult, EndedBy, dial, parse_script, run_call

pytestmark = pytest.mark.postgres

ACCOUNT_SID = "AC" + "a" * 32


@dataclass
class Outbound:
    gateway: Gateway
    twilio: TwilioRestStandIn

    @property
    def address(self) -> dial.Address:
        return dial.Address.of(self.gateway.base_url, self.gateway.public_host)

    def creates(self, to: str | None = None) -> list[RecordedRequest]:
        """The `calls.create` requests that reached Twilio (to `to`, when given)."""
        return [
            r
            for r in self.twilio.requests
            if r.path.endswith("/Calls.json") and (to is None or r.field("To") == to)
        ]

    def hang_ups(self, sid: str) -> list[RecordedRequest]:
        return [
            r
            for r in self.twilio.requests
            if r.path.endswith(f"/Calls/{sid}.json") and r.field("Status") == "completed"
        ]


@contextmanager
def _outbound(tmp_path: Path, **env: str) -> Iterator[Outbound]:
    with TwilioRestStandIn(ACCOUNT_SID, AUTH_TOKEN) as twilio:
        settings = {
            "TELEPHONY_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_API_BASE_URL": twilio.base_url,
            **env,
        }
        with running_gateway(tmp_path, **settings) as gateway:
            yield Outbound(gateway, twilio)


@pytest.fixture
def outbound(tmp_path: Path) -> Iterator[Outbound]:
    """The gateway with Twilio stood in for, AMD_MODE=voicemail (the default)."""
    with _outbound(tmp_path) as running:
        yield running


# -- the CRM side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    broker_id: int
    legal_name: str
    numbers: tuple[str, ...]
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class LeadRef:
    id: int
    phone: str


def make_tenant(*, numbers: int = 1) -> Tenant:
    suffix = uuid.uuid4().hex[:8]
    owned = tuple(f"+3491{uuid.uuid4().int % 10**7:07d}" for _ in range(numbers))
    with session_scope() as db:
        actor = Actor.system("tests")
        broker = broker_service.create(
            db,
            name=f"Broker {suffix}",
            legal_name=f"Inmobiliaria {suffix}",
            locale="es",
            twilio_numbers=list(owned),
            actor=actor,
        )
        _, key = broker_service.create_api_key(db, broker=broker, actor=actor)
        db.flush()
        return Tenant(broker.id, broker.legal_name, owned, key)


def zone_at(local_hour: int) -> str:
    """A fixed-offset IANA zone where it is `local_hour`:xx right now."""
    offset = (local_hour - datetime.now(UTC).hour + 12) % 24 - 12  # -12..11
    return f"Etc/GMT{-offset:+d}"  # the Etc names count the other way round


def make_lead(
    tenant: Tenant, *, consent: bool = True, local_hour: int = 12, language: str = "es"
) -> LeadRef:
    phone = f"+1212555{uuid.uuid4().int % 10_000:04d}"
    with session_scope() as db:
        actor = Actor.system("tests")
        lead = lead_service.create(
            db,
            broker_id=tenant.broker_id,
            data=LeadCreate(
                phone=phone,
                full_name="Ana Test",
                language=Language(language),
                time_zone=zone_at(local_hour),
            ),
            actor=actor,
        )
        if consent:
            lead_service.add_consent(
                db,
                lead=lead,
                channel=Channel.call,
                source="web form",
                text_shown="I agree to be called by an automated assistant.",
                actor=actor,
            )
        db.flush()
        return LeadRef(lead.id, lead.phone)


def calls_of(lead: LeadRef) -> list[Call]:
    with session_scope() as db:
        calls = list(db.scalars(select(Call).where(Call.lead_id == lead.id).order_by(Call.id)))
        for call in calls:
            db.expunge(call)
        return calls


def audit_actions(call_id: int) -> list[str]:
    with session_scope() as db:
        return list(
            db.scalars(
                select(AuditLog.action)
                .where(AuditLog.object_type == "call", AuditLog.object_id == str(call_id))
                .order_by(AuditLog.id)
            )
        )


# -- talking to the gateway as a broker and as Twilio ----------------------------------


async def place(
    outbound: Outbound, tenant: Tenant, lead_id: int, *, key: str | None = None, **body: object
) -> httpx.Response:
    headers = dict(tenant.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    async with httpx.AsyncClient(base_url=outbound.gateway.base_url, timeout=30) as http:
        return await http.post("/api/v1/calls", json={"lead_id": lead_id, **body}, headers=headers)


async def twilio_posts(outbound: Outbound, path: str, fields: dict[str, str]) -> None:
    """A signed webhook, as Twilio posts it to the public address."""
    address = outbound.address
    headers = {
        **address.forwarded_headers(),
        **dial.sign(AUTH_TOKEN, address.public + path, fields),
    }
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(address.base + path, data=fields, headers=headers)
    assert response.status_code == 204, response.text


async def status(outbound: Outbound, sid: str, reported: str, sequence: int) -> None:
    await twilio_posts(
        outbound,
        "/twilio/status",
        {
            "AccountSid": ACCOUNT_SID,
            "CallSid": sid,
            "CallStatus": reported,
            "SequenceNumber": str(sequence),
            "Timestamp": format_datetime(datetime.now(UTC)),
            "Direction": "outbound-api",
        },
    )


async def amd(outbound: Outbound, sid: str, answered_by: str) -> None:
    await twilio_posts(
        outbound,
        "/twilio/amd",
        {
            "AccountSid": ACCOUNT_SID,
            "CallSid": sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": "4200",
        },
    )


async def answer(
    outbound: Outbound, tenant: Tenant, lead: LeadRef, sid: str, script: str
) -> CallResult:
    """Pick up as the lead: the stream of the TwiML Twilio was given, under its sid."""
    [create] = outbound.creates(lead.phone)
    twiml = create.field("Twiml")
    assert twiml is not None
    echo: list[str] = []
    result = await run_call(
        outbound.gateway.base_url,
        parse_script(script),
        options=outbound.gateway.options(
            to_number=lead.phone,
            from_number=tenant.numbers[0],
            call_sid=sid,
            answer=dial.read_twiml(twiml),
            echo=echo.append,
        ),
    )
    print("\n".join(echo))
    return result


def first_turn_stored(call_id: int) -> bool:
    return bool(turns_of(call_id))


# -- a whole outbound call -------------------------------------------------------------


async def test_a_placed_call_is_answered_talked_through_and_stored(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    outbound.gateway.runtime.stt = FakeSpeechToText(script=["Busco un piso."])

    response = await place(outbound, tenant, lead.id)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["direction"] == "outbound"
    assert body["status"] == "queued"
    assert (body["from_number"], body["to_number"]) == (tenant.numbers[0], lead.phone)
    assert body["language"] == "es"
    sid = body["twilio_call_sid"]
    assert sid.startswith("CA")

    # What Twilio was asked: the inbound TwiML inline, every status event, async AMD.
    [create] = outbound.creates(lead.phone)
    public = outbound.address.public
    assert create.username == ACCOUNT_SID
    assert create.field("From") == tenant.numbers[0]
    assert create.field("StatusCallback") == public + "/twilio/status"
    assert create.field("StatusCallbackMethod") == "POST"
    assert create.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert create.field("MachineDetection") == "DetectMessageEnd"
    assert create.field("AsyncAmd") == "true"
    assert create.field("AsyncAmdStatusCallback") == public + "/twilio/amd"
    twiml = create.field("Twiml")
    assert twiml is not None
    target = dial.read_twiml(twiml)
    assert target.parameters["call_id"] == str(body["id"])
    assert target.url.endswith("/twilio/media")

    await status(outbound, sid, "initiated", 0)
    await status(outbound, sid, "ringing", 1)
    call_task = asyncio.create_task(
        answer(
            outbound,
            tenant,
            lead,
            sid,
            "wait 200\nsay Busco un piso.\nwait 200\nhang-up",
        )
    )
    await status(outbound, sid, "in-progress", 2)
    await wait_for(lambda: first_turn_stored(body["id"]), what="the greeting")
    await amd(outbound, sid, "human")  # a person: the call goes on as it was
    result = await call_task
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.caller
    await status(outbound, sid, "completed", 3)

    stored = await ended_call(sid)
    assert stored.id == body["id"]
    assert stored.direction.value == "outbound"
    assert stored.status is CallStatus.completed
    assert stored.end_reason == EndReason.caller_hung_up.value
    assert stored.answered_by == "human"
    assert stored.answered_at is not None
    turns = turns_of(stored.id)
    assert [t.role for t in turns] == [TurnRole.agent, TurnRole.caller, TurnRole.agent]
    assert tenant.legal_name in turns[0].text
    assert turns[1].text == "Busco un piso."
    assert outbound.hang_ups(sid) == []  # the lead hung up; nothing to hang up
    with session_scope() as db:
        events = dict(
            db.execute(
                select(CallStatusEvent.status, CallStatusEvent.applied).where(
                    CallStatusEvent.call_sid == sid
                )
            ).all()
        )
    # Each callback kept once; `initiated` is the queued the call already was, and
    # `completed` came after the session had ended the call.
    assert set(events) == {"initiated", "ringing", "in-progress", "completed"}
    assert events["ringing"] is True
    assert events["initiated"] is False
    assert events["completed"] is False
    assert audit_actions(stored.id)[:2] == ["call.create", "call.dialed"]
    assert "call.answered_by" in audit_actions(stored.id)


# -- refusals: no Call row, nothing sent to Twilio ---------------------------------------


def nothing_dialled(outbound: Outbound, lead: LeadRef) -> None:
    assert calls_of(lead) == []
    assert outbound.creates(lead.phone) == []


def problem(response: httpx.Response, status_code: int) -> dict[str, object]:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    return body


async def test_a_deleted_lead_is_not_called(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    with session_scope() as db:
        row = lead_service.get_or_raise(db, broker_id=tenant.broker_id, lead_id=lead.id)
        lead_service.delete(db, lead=row, actor=Actor.system("tests"))
    body = problem(await place(outbound, tenant, lead.id), 404)
    assert "deleted" in str(body["detail"])
    nothing_dialled(outbound, lead)


async def test_another_brokers_lead_is_not_found(outbound: Outbound) -> None:
    owner, intruder = make_tenant(), make_tenant()
    lead = make_lead(owner)
    body = problem(await place(outbound, intruder, lead.id), 404)
    assert body["detail"] == f"lead {lead.id} not found"
    nothing_dialled(outbound, lead)


async def test_a_lead_on_do_not_call_is_not_called(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    with session_scope() as db:
        row = lead_service.get_or_raise(db, broker_id=tenant.broker_id, lead_id=lead.id)
        lead_service.mark_do_not_call(
            db, lead=row, reason="asked by email", actor=Actor.system("t")
        )
    body = problem(await place(outbound, tenant, lead.id), 409)
    assert body["reasons"] == [{"code": "do_not_call", "message": "asked by email"}]
    assert body["next_allowed_at"] is None
    nothing_dialled(outbound, lead)


async def test_no_consent_to_automated_calls_is_refused_by_the_gate(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant, consent=False)
    body = problem(await place(outbound, tenant, lead.id), 409)
    reasons = body["reasons"]
    assert isinstance(reasons, list)
    assert [r["code"] for r in reasons] == ["no_consent"]
    assert body["next_allowed_at"] is None  # waiting does not help
    assert body["policy"] == "US"
    nothing_dialled(outbound, lead)


async def test_outside_calling_hours_the_gate_says_when_it_may_call(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant, local_hour=3)
    body = problem(await place(outbound, tenant, lead.id), 409)
    reasons = body["reasons"]
    assert isinstance(reasons, list)
    assert [r["code"] for r in reasons] == ["outside_hours"]
    next_at = datetime.fromisoformat(str(body["next_allowed_at"]))
    assert 0 < (next_at - datetime.now(UTC)).total_seconds() <= 6 * 3600  # 08:00 local
    nothing_dialled(outbound, lead)


async def test_a_lead_already_on_a_call_is_refused_with_that_calls_id(
    outbound: Outbound,
) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    first = await place(outbound, tenant, lead.id)
    assert first.status_code == 202, first.text
    body = problem(await place(outbound, tenant, lead.id), 409)
    assert body["call_id"] == first.json()["id"]
    assert [c.id for c in calls_of(lead)] == [first.json()["id"]]
    assert len(outbound.creates(lead.phone)) == 1


async def test_a_call_too_old_to_be_live_does_not_block_the_lead(outbound: Outbound) -> None:
    """Its end never reached us (a lost callback, a crash): past ringing plus the longest
    call Twilio allows, it is not live whatever its row says."""
    tenant = make_tenant()
    lead = make_lead(tenant)
    too_old = longest_call(outbound.gateway.runtime.settings) + timedelta(minutes=1)
    with session_scope() as db:
        stale = call_service.create_call(
            db,
            broker_id=tenant.broker_id,
            lead_id=lead.id,
            direction=Direction.outbound,
            from_number=tenant.numbers[0],
            to_number=lead.phone,
            actor=Actor.system("tests"),
            started_at=datetime.now(UTC) - too_old,
        )
        db.flush()
        stale_id = stale.id
    response = await place(outbound, tenant, lead.id)
    assert response.status_code == 202, response.text
    assert [c.id for c in calls_of(lead)] == [stale_id, response.json()["id"]]


async def test_a_broker_without_a_number_cannot_call(outbound: Outbound) -> None:
    tenant = make_tenant(numbers=0)
    lead = make_lead(tenant)
    body = problem(await place(outbound, tenant, lead.id), 422)
    assert "no phone number" in str(body["detail"])
    nothing_dialled(outbound, lead)


async def test_from_number_must_be_one_of_the_brokers(outbound: Outbound) -> None:
    tenant = make_tenant(numbers=2)
    lead = make_lead(tenant)
    problem(await place(outbound, tenant, lead.id, from_number="+34910000000"), 422)
    problem(await place(outbound, tenant, lead.id, from_number="call me maybe"), 422)
    nothing_dialled(outbound, lead)
    response = await place(outbound, tenant, lead.id, from_number=tenant.numbers[1])
    assert response.status_code == 202, response.text
    assert outbound.creates(lead.phone)[0].field("From") == tenant.numbers[1]


async def test_over_the_call_limit_is_503_with_retry_after(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    admission = outbound.gateway.runtime.admission
    held: list[str] = []
    while (reservation := admission.reserve(f"held-{len(held)}")) is not None:
        held.append(reservation.call_key)
    try:
        response = await place(outbound, tenant, lead.id)
        body = problem(response, 503)
        assert response.headers["Retry-After"] == str(round(admission.hold_s))
        assert "limit" in str(body["detail"])
        nothing_dialled(outbound, lead)
    finally:
        for key in held:
            admission.cancel(key)


async def test_a_call_twilio_refuses_ends_failed_and_frees_its_slot(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    reserved = outbound.gateway.runtime.admission.stats().reserved
    outbound.twilio.fail_next(400, code=21215, message="Geo permission disabled")
    body = problem(await place(outbound, tenant, lead.id), 502)
    assert body["failure"] == "rejected"
    assert "21215" in str(body["detail"])
    [call] = calls_of(lead)
    assert call.id == body["call_id"]
    assert call.status is CallStatus.failed
    assert call.end_reason == "dial_failed_rejected"
    assert call.ended_at is not None
    assert call.twilio_call_sid is None
    assert "call.dial_failed" in audit_actions(call.id)
    assert outbound.gateway.runtime.admission.stats().reserved == reserved
    # Ended: the lead may be called again (the gate counts the attempt, no cap here).
    retry = await place(outbound, tenant, lead.id)
    assert retry.status_code == 202, retry.text


# -- idempotency -----------------------------------------------------------------------


async def test_a_repeated_idempotency_key_returns_the_same_call_without_dialling(
    outbound: Outbound,
) -> None:
    tenant, other = make_tenant(), make_tenant()
    lead, second_lead, others_lead = make_lead(tenant), make_lead(tenant), make_lead(other)
    key = f"campaign-1/step-1/{uuid.uuid4().hex}"
    first = await place(outbound, tenant, lead.id, key=key)
    again = await place(outbound, tenant, lead.id, key=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert len(outbound.creates(lead.phone)) == 1
    # The key belongs to that call: another lead with it is a conflict, nothing dialled.
    body = problem(await place(outbound, tenant, second_lead.id, key=key), 409)
    assert body["call_id"] == first.json()["id"]
    nothing_dialled(outbound, second_lead)
    # Keys are per broker: another broker's same key is its own call.
    theirs = await place(outbound, other, others_lead.id, key=key)
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["id"] != first.json()["id"]


# -- configuration -----------------------------------------------------------------------


async def test_without_a_public_host_outbound_calls_are_refused_naming_it(
    tmp_path: Path,
) -> None:
    with _outbound(tmp_path, PUBLIC_HOST="") as running:
        tenant = make_tenant()
        lead = make_lead(tenant)
        body = problem(await place(running, tenant, lead.id), 503)
        assert body["missing"] == ["PUBLIC_HOST"]
        assert "PUBLIC_HOST" in str(body["detail"])
        nothing_dialled(running, lead)


# -- answering machines ----------------------------------------------------------------


async def test_after_the_beep_a_voicemail_is_left_and_the_call_hung_up(
    outbound: Outbound,
) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    response = await place(outbound, tenant, lead.id)
    assert response.status_code == 202, response.text
    call_id, sid = response.json()["id"], response.json()["twilio_call_sid"]

    call_task = asyncio.create_task(answer(outbound, tenant, lead, sid, "pause 20000"))
    await wait_for(lambda: first_turn_stored(call_id), what="the greeting")
    await amd(outbound, sid, "machine_end_beep")
    result = await call_task
    assert result.ended_by is EndedBy.server
    assert result.marks_cleared == 0  # the message was played whole, never cut

    stored = await ended_call(sid)
    assert stored.answered_by == "machine_end_beep"
    assert stored.end_reason == EndReason.voicemail_left.value
    voicemail = turns_of(call_id)[-1]
    assert voicemail.role is TurnRole.agent
    assert not voicemail.interrupted
    assert voicemail.text == PHRASES["es"]["voicemail"].format(
        business=tenant.legal_name, number=spoken_number(tenant.numbers[0])
    )
    assert len(outbound.hang_ups(sid)) == 1  # through Twilio's REST API


@pytest.mark.redis
async def test_the_redis_channel_delivers_a_verdict_published_elsewhere(tmp_path: Path) -> None:
    """The AMD webhook may reach another gateway process: a publish from a separate
    Redis client (another process's channel) reaches the session holding the call."""
    redis_client = services.redis_client()
    with _outbound(tmp_path, REDIS_URL=services.REDIS_URL, AMD_MODE="hangup") as running:
        tenant = make_tenant()
        lead = make_lead(tenant)
        response = await place(running, tenant, lead.id)
        assert response.status_code == 202, response.text
        assert [c.field("MachineDetection") for c in running.creates(lead.phone)] == ["Enable"]
        call_id, sid = response.json()["id"], response.json()["twilio_call_sid"]

        call_task = asyncio.create_task(answer(running, tenant, lead, sid, "pause 20000"))
        channel = channel_of(call_id)
        await wait_for(
            lambda: redis_client.pubsub_numsub(channel)[0][1] == 1, what="the subscription"
        )
        elsewhere = RedisCallControl(services.REDIS_URL)
        try:
            event = ControlEvent(ControlKind.answered_by, "machine_start")
            await elsewhere.publish(call_id, event)
        finally:
            await elsewhere.aclose()
        result = await call_task
        assert result.ended_by is EndedBy.server

        stored = await ended_call(sid)
        assert stored.end_reason == EndReason.answering_machine.value
        assert len(running.hang_ups(sid)) == 1
        await wait_for(
            lambda: redis_client.pubsub_numsub(channel)[0][1] == 0, what="the unsubscription"
        )


async def test_amd_results_for_unknown_calls_or_values_are_ignored(outbound: Outbound) -> None:
    tenant = make_tenant()
    lead = make_lead(tenant)
    response = await place(outbound, tenant, lead.id)
    assert response.status_code == 202, response.text
    sid = response.json()["twilio_call_sid"]
    await amd(outbound, "CA" + "0" * 32, "machine_end_beep")  # 204, nothing to do
    await amd(outbound, sid, "a robot")  # a value Twilio does not send: kept off the call
    [call] = calls_of(lead)
    assert call.answered_by is None
    assert "call.answered_by" not in audit_actions(call.id)


async def test_a_broken_control_channel_costs_the_hints_not_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable (nothing listens on port 1): the call goes on and ends as usual."""
    with _outbound(tmp_path, REDIS_URL="redis://127.0.0.1:1/0") as running:
        tenant = make_tenant()
        lead = make_lead(tenant)
        response = await place(running, tenant, lead.id)
        assert response.status_code == 202, response.text
        sid = response.json()["twilio_call_sid"]
        result = await answer(running, tenant, lead, sid, "wait 200\npause 500\nhang-up")
        assert result.ok, result.errors
        assert result.ended_by is EndedBy.caller
        stored = await ended_call(sid)
        assert stored.end_reason == EndReason.caller_hung_up.value
    assert any("control channel failed" in r.getMessage() for r in caplog.records)
