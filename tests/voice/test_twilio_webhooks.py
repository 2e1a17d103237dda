"""The Twilio webhooks through the real app and the real PostgreSQL, signed the way Twilio
signs them: inbound calls (new and known callers, anonymous, do-not-call, unknown number,
retries, over capacity, behind a proxy) and status / stream-status callbacks."""

from __future__ import annotations

import asyncio
import logging
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from crm.actor import Actor
from crm.audit.models import AuditLog
from crm.calls.models import Call, CallStatus, CallStatusEvent
from crm.leads import service as lead_service
from crm.leads.models import Direction, Lead
from crm.leads.schemas import LeadCreate
from tests.conftest import Tenant
from voice_gateway import admission as admission_module
from voice_gateway import config as gateway_config
from voice_gateway.twilio import tokens as tokens_module

TOKEN = "webhook-test-auth-token-0123456789"
HOST = "voice.example.com"
SECRET = "call-token-secret-for-the-webhook-tests"


@pytest.fixture(autouse=True)
def gateway_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Signed webhooks at a public host; each test gets fresh settings and counters."""
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("PUBLIC_HOST", HOST)
    monkeypatch.setenv("TWILIO_VALIDATE_SIGNATURES", "true")
    monkeypatch.setenv("CALL_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("MAX_CONCURRENT_CALLS", "50")
    _clear_caches()
    yield monkeypatch
    _clear_caches()


def _clear_caches() -> None:
    gateway_config.get_settings.cache_clear()
    admission_module.get_admission.cache_clear()
    tokens_module.get_call_tokens.cache_clear()


def spanish_landline() -> str:
    return f"+3491{random.randint(1_000_000, 9_999_999)}"


def spanish_mobile() -> str:
    return f"+3461{random.randint(1_000_000, 9_999_999)}"


def call_sid() -> str:
    return "CA" + "".join(random.choices("0123456789abcdef", k=32))


@dataclass
class Line:
    """A broker with a Twilio number, as Twilio sees it."""

    tenant: Tenant
    number: str


@pytest.fixture
def line(make_tenant: Callable[..., Tenant]) -> Line:
    number = spanish_landline()
    return Line(make_tenant(twilio_numbers=[number]), number)


def signature(url: str, form: dict[str, str]) -> str:
    value: str = RequestValidator(TOKEN).compute_signature(url, form)
    return value


async def post(
    client: httpx.AsyncClient,
    path: str,
    form: dict[str, str],
    *,
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
    sign: bool = True,
) -> httpx.Response:
    sent = dict(headers or {})
    if sign:
        sent["X-Twilio-Signature"] = signature(signed_url or f"https://{HOST}{path}", form)
    return await client.post(path, data=form, headers=sent)


def voice_form(line: Line, caller: str, sid: str | None = None) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": sid or call_sid(),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": caller,
        "To": line.number,
        "FromCountry": "ES",
    }


def twiml_of(response: httpx.Response) -> ET.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    return ET.fromstring(response.text)  # noqa: S314 - our own server's output


@dataclass
class Streamed:
    url: str
    status_callback: str
    call_id: int
    token: str


def streamed(response: httpx.Response) -> Streamed:
    root = twiml_of(response)
    assert [child.tag for child in root] == ["Connect", "Hangup"]
    stream = root.find("Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return Streamed(
        url=stream.attrib["url"],
        status_callback=stream.attrib["statusCallback"],
        call_id=int(params["call_id"]),
        token=params["token"],
    )


def said(response: httpx.Response) -> list[tuple[str, str]]:
    root = twiml_of(response)
    assert root[-1].tag == "Hangup"
    assert "Connect" not in [child.tag for child in root]
    return [(say.attrib["language"], say.text or "") for say in root.findall("Say")]


def call_by_sid(db: Session, sid: str) -> Call | None:
    db.expire_all()
    return db.scalars(select(Call).where(Call.twilio_call_sid == sid)).first()


def leads_with(db: Session, broker_id: int, phone: str) -> list[Lead]:
    return list(
        db.scalars(select(Lead).where(Lead.broker_id == broker_id, Lead.phone == phone)).all()
    )


# -- POST /twilio/voice ------------------------------------------------------------------


async def test_a_new_caller_gets_a_stream_a_lead_and_a_call(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    caller = spanish_mobile()
    form = voice_form(line, caller)
    answer = streamed(await post(client, "/twilio/voice", form))

    assert answer.url == f"wss://{HOST}/twilio/media"
    assert answer.status_callback == f"https://{HOST}/twilio/stream-status"
    claim = tokens_module.get_call_tokens().verify(answer.token, call_id=answer.call_id)
    assert claim.call_id == answer.call_id

    call = call_by_sid(db, form["CallSid"])
    assert call is not None
    assert call.id == answer.call_id
    assert call.broker_id == line.tenant.id
    assert call.direction is Direction.inbound
    assert call.status is CallStatus.ringing
    assert (call.from_number, call.to_number) == (caller, line.number)
    [lead] = leads_with(db, line.tenant.id, caller)
    assert call.lead_id == lead.id
    assert lead.source == "inbound_call"
    assert call.language == lead.language
    assert admission_module.get_admission().stats().reserved == 1


async def test_a_known_caller_is_matched_to_the_lead(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    caller = spanish_mobile()
    lead = lead_service.create(
        db,
        broker_id=line.tenant.id,
        data=LeadCreate(phone=caller, full_name="Ana García", source="portal"),
        actor=Actor.system("tests"),
    )
    db.commit()
    form = voice_form(line, caller)
    answer = streamed(await post(client, "/twilio/voice", form))
    call = call_by_sid(db, form["CallSid"])
    assert call is not None
    assert call.id == answer.call_id
    assert call.lead_id == lead.id
    assert len(leads_with(db, line.tenant.id, caller)) == 1


async def test_the_same_number_at_another_broker_is_another_lead(
    client: httpx.AsyncClient, db: Session, line: Line, make_tenant: Callable[..., Tenant]
) -> None:
    other_number = spanish_landline()
    other = Line(make_tenant(twilio_numbers=[other_number]), other_number)
    caller = spanish_mobile()
    streamed(await post(client, "/twilio/voice", voice_form(line, caller)))
    streamed(await post(client, "/twilio/voice", voice_form(other, caller)))
    assert len(leads_with(db, line.tenant.id, caller)) == 1
    assert len(leads_with(db, other.tenant.id, caller)) == 1


@pytest.mark.parametrize("caller", ["anonymous", "unknown", "", "+1", "266696687"])
async def test_a_caller_with_no_number_gets_a_call_without_a_lead(
    client: httpx.AsyncClient, db: Session, line: Line, caller: str
) -> None:
    form = voice_form(line, caller)
    answer = streamed(await post(client, "/twilio/voice", form))
    call = call_by_sid(db, form["CallSid"])
    assert call is not None
    assert call.id == answer.call_id
    assert call.lead_id is None
    assert call.from_number == (caller or "unknown")
    leads = db.scalar(
        select(func.count()).select_from(Lead).where(Lead.broker_id == line.tenant.id)
    )
    assert leads == 0


async def test_a_do_not_call_lead_who_calls_us_is_answered(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    caller = spanish_mobile()
    lead = lead_service.create(
        db, broker_id=line.tenant.id, data=LeadCreate(phone=caller), actor=Actor.system("tests")
    )
    lead_service.mark_do_not_call(db, lead=lead, reason="asked", actor=Actor.system("tests"))
    db.commit()
    form = voice_form(line, caller)
    answer = streamed(await post(client, "/twilio/voice", form))
    call = call_by_sid(db, form["CallSid"])
    assert call is not None
    assert (call.id, call.lead_id) == (answer.call_id, lead.id)


async def test_a_number_no_broker_owns_is_not_in_service(
    client: httpx.AsyncClient, db: Session, caplog: pytest.LogCaptureFixture
) -> None:
    unowned = spanish_landline()
    form = {"CallSid": call_sid(), "From": spanish_mobile(), "To": unowned}
    with caplog.at_level(logging.WARNING, logger="voice_gateway.twilio.webhooks"):
        response = await post(client, "/twilio/voice", form)
    assert said(response) == [
        ("es-US", "El número al que ha llamado no está en servicio."),
        ("en-US", "The number you have called is not in service."),
    ]
    assert call_by_sid(db, form["CallSid"]) is None
    assert f"no broker owns the number '{unowned}'" in caplog.text


async def test_an_unsigned_webhook_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    response = await post(client, "/twilio/voice", form, sign=False)
    assert response.status_code == 403
    assert call_by_sid(db, form["CallSid"]) is None


async def test_a_badly_signed_webhook_is_refused(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    forged = form | {"From": spanish_mobile()}
    response = await client.post(
        "/twilio/voice",
        data=forged,
        headers={"X-Twilio-Signature": signature(f"https://{HOST}/twilio/voice", form)},
    )
    assert response.status_code == 403
    assert call_by_sid(db, form["CallSid"]) is None


async def test_a_signature_for_the_internal_url_is_refused(
    client: httpx.AsyncClient, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    response = await post(
        client, "/twilio/voice", form, signed_url="http://testserver/twilio/voice"
    )
    assert response.status_code == 403


async def test_behind_a_proxy_without_public_host(
    client: httpx.AsyncClient, gateway_env: pytest.MonkeyPatch, db: Session, line: Line
) -> None:
    gateway_env.delenv("PUBLIC_HOST")
    _clear_caches()
    form = voice_form(line, spanish_mobile())
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example.net"}
    # Signed over the internal URL: refused, because Twilio called the public one.
    refused = await post(client, "/twilio/voice", form, headers=proxy)
    assert refused.status_code == 403
    answer = streamed(
        await post(
            client,
            "/twilio/voice",
            form,
            headers=proxy,
            signed_url="https://edge.example.net/twilio/voice",
        )
    )
    assert answer.url == "wss://edge.example.net/twilio/media"
    assert answer.status_callback == "https://edge.example.net/twilio/stream-status"


async def test_twilio_retrying_a_call_gets_the_same_call_and_one_slot(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    first = streamed(await post(client, "/twilio/voice", form))
    second = streamed(await post(client, "/twilio/voice", form))
    assert first.call_id == second.call_id
    tokens_module.get_call_tokens().verify(second.token, call_id=first.call_id)
    calls = db.scalar(
        select(func.count()).select_from(Call).where(Call.twilio_call_sid == form["CallSid"])
    )
    assert calls == 1
    assert admission_module.get_admission().stats().reserved == 1


async def test_two_deliveries_racing_for_one_call_make_one_call_and_one_lead(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    caller = spanish_mobile()
    form = voice_form(line, caller)
    responses = await asyncio.gather(*(post(client, "/twilio/voice", form) for _ in range(3)))
    ids = {streamed(response).call_id for response in responses}
    assert len(ids) == 1
    assert len(leads_with(db, line.tenant.id, caller)) == 1


async def test_a_webhook_repeated_after_the_call_ended_hangs_up(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    streamed(await post(client, "/twilio/voice", form))
    status = {"CallSid": form["CallSid"], "CallStatus": "completed", "SequenceNumber": "0"}
    assert (await post(client, "/twilio/status", status)).status_code == 204
    root = twiml_of(await post(client, "/twilio/voice", form))
    assert [child.tag for child in root] == ["Hangup"]


async def test_over_capacity_the_caller_hears_it_and_no_stream_opens(
    client: httpx.AsyncClient,
    gateway_env: pytest.MonkeyPatch,
    db: Session,
    make_tenant: Callable[..., Tenant],
) -> None:
    gateway_env.setenv("MAX_CONCURRENT_CALLS", "1")
    _clear_caches()
    number = spanish_landline()
    english = Line(make_tenant(twilio_numbers=[number], locale="en"), number)
    first = voice_form(english, spanish_mobile())
    streamed(await post(client, "/twilio/voice", first))

    second = voice_form(english, spanish_mobile())
    response = await post(client, "/twilio/voice", second)
    [(language, text)] = said(response)
    assert language == "en-US"
    assert "All our lines are busy" in text
    refused_call = call_by_sid(db, second["CallSid"])
    assert refused_call is not None
    assert refused_call.end_reason == "over_capacity"
    assert refused_call.ended_at is not None
    stats = admission_module.get_admission().stats()
    assert (stats.reserved, stats.refused) == (1, 1)


async def test_a_slot_frees_when_a_reserved_call_ends_before_its_stream(
    client: httpx.AsyncClient, gateway_env: pytest.MonkeyPatch, line: Line
) -> None:
    gateway_env.setenv("MAX_CONCURRENT_CALLS", "1")
    _clear_caches()
    first = voice_form(line, spanish_mobile())
    streamed(await post(client, "/twilio/voice", first))
    hung_up = {"CallSid": first["CallSid"], "CallStatus": "canceled", "SequenceNumber": "0"}
    assert (await post(client, "/twilio/status", hung_up)).status_code == 204
    streamed(await post(client, "/twilio/voice", voice_form(line, spanish_mobile())))


async def test_spanish_broker_refuses_in_spanish(
    client: httpx.AsyncClient, gateway_env: pytest.MonkeyPatch, line: Line
) -> None:
    gateway_env.setenv("MAX_CONCURRENT_CALLS", "1")
    _clear_caches()
    admission_module.get_admission().try_acquire("CA-already-live")
    [(language, text)] = said(await post(client, "/twilio/voice", voice_form(line, "anonymous")))
    assert language == "es-US"
    assert "todas nuestras líneas están ocupadas" in text


async def test_a_voice_webhook_without_a_call_sid_is_422(
    client: httpx.AsyncClient, line: Line
) -> None:
    form = voice_form(line, spanish_mobile())
    del form["CallSid"]
    response = await post(client, "/twilio/voice", form)
    assert response.status_code == 422


# -- POST /twilio/status -----------------------------------------------------------------


async def answered_call(client: httpx.AsyncClient, db: Session, line: Line) -> Call:
    form = voice_form(line, spanish_mobile())
    streamed(await post(client, "/twilio/voice", form))
    call = call_by_sid(db, form["CallSid"])
    assert call is not None
    return call


def status_form(call: Call, status: str, sequence: int, **extra: str) -> dict[str, str]:
    assert call.twilio_call_sid is not None
    return {
        "CallSid": call.twilio_call_sid,
        "CallStatus": status,
        "SequenceNumber": str(sequence),
        "CallbackSource": "call-progress-events",
        **extra,
    }


def events_of(db: Session, call: Call) -> list[tuple[int, str, bool]]:
    db.expire_all()
    rows = db.scalars(
        select(CallStatusEvent)
        .where(CallStatusEvent.call_id == call.id)
        .order_by(CallStatusEvent.sequence_number)
    ).all()
    return [(row.sequence_number, row.status, row.applied) for row in rows]


async def test_status_callbacks_move_the_call_once_each(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    answered = status_form(call, "in-progress", 0, Timestamp="Wed, 14 May 2025 10:00:05 +0000")
    completed = status_form(
        call, "completed", 1, Timestamp="Wed, 14 May 2025 10:03:00 +0000", CallDuration="175"
    )
    for form in (answered, answered, completed, completed):
        response = await post(client, "/twilio/status", form)
        assert response.status_code == 204
        assert response.content == b""
    refreshed = call_by_sid(db, call.twilio_call_sid or "")
    assert refreshed is not None
    assert refreshed.status is CallStatus.completed
    assert refreshed.answered_at == datetime(2025, 5, 14, 10, 0, 5, tzinfo=UTC)
    assert refreshed.ended_at == datetime(2025, 5, 14, 10, 3, 0, tzinfo=UTC)
    assert events_of(db, call) == [(0, "in-progress", True), (1, "completed", True)]


async def test_status_callbacks_out_of_order(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    late = status_form(call, "in-progress", 0, Timestamp="Wed, 14 May 2025 10:00:05 +0000")
    done = status_form(call, "completed", 1, Timestamp="Wed, 14 May 2025 10:03:00 +0000")
    assert (await post(client, "/twilio/status", done)).status_code == 204
    assert (await post(client, "/twilio/status", late)).status_code == 204
    refreshed = call_by_sid(db, call.twilio_call_sid or "")
    assert refreshed is not None
    assert refreshed.status is CallStatus.completed
    assert refreshed.answered_at is None
    assert events_of(db, call) == [(0, "in-progress", False), (1, "completed", True)]


async def test_racing_duplicate_status_callbacks_are_kept_once(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    form = status_form(call, "in-progress", 0)
    responses = await asyncio.gather(*(post(client, "/twilio/status", form) for _ in range(4)))
    assert {response.status_code for response in responses} == {204}
    assert events_of(db, call) == [(0, "in-progress", True)]


async def test_a_status_for_an_unknown_call_is_204_and_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    form = {"CallSid": call_sid(), "CallStatus": "completed", "SequenceNumber": "0"}
    with caplog.at_level(logging.WARNING, logger="voice_gateway.twilio.webhooks"):
        response = await post(client, "/twilio/status", form)
    assert response.status_code == 204
    assert "for unknown call" in caplog.text


async def test_an_unknown_status_is_kept_but_not_applied(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    response = await post(client, "/twilio/status", status_form(call, "teleported", 3))
    assert response.status_code == 204
    assert events_of(db, call) == [(3, "teleported", False)]
    refreshed = call_by_sid(db, call.twilio_call_sid or "")
    assert refreshed is not None
    assert refreshed.status is CallStatus.ringing


async def test_a_status_without_a_sequence_number_still_only_moves_forward(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    form = status_form(call, "busy", 0, Timestamp="not a date")
    del form["SequenceNumber"]
    assert (await post(client, "/twilio/status", form)).status_code == 204
    again = status_form(call, "ringing", 0)
    del again["SequenceNumber"]
    assert (await post(client, "/twilio/status", again)).status_code == 204
    refreshed = call_by_sid(db, call.twilio_call_sid or "")
    assert refreshed is not None
    assert refreshed.status is CallStatus.busy
    assert refreshed.ended_at is not None
    assert events_of(db, call) == []


async def test_an_unsigned_status_callback_is_refused(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    form = status_form(call, "completed", 0)
    assert (await post(client, "/twilio/status", form, sign=False)).status_code == 403
    assert events_of(db, call) == []


# -- POST /twilio/stream-status ----------------------------------------------------------


def stream_form(call: Call, event: str, **extra: str) -> dict[str, str]:
    assert call.twilio_call_sid is not None
    return {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": call.twilio_call_sid,
        "StreamSid": "MZ" + "1" * 32,
        "StreamEvent": event,
        "Timestamp": "2025-05-14T10:00:01.123Z",
        **extra,
    }


def stream_errors(db: Session, call: Call) -> list[dict[str, object]]:
    db.expire_all()
    rows = db.scalars(
        select(AuditLog).where(
            AuditLog.object_type == "call",
            AuditLog.object_id == str(call.id),
            AuditLog.action == "call.stream_error",
        )
    ).all()
    return [dict(row.diff or {}) for row in rows]


async def test_stream_started_and_stopped_are_logged(
    client: httpx.AsyncClient, db: Session, line: Line, caplog: pytest.LogCaptureFixture
) -> None:
    call = await answered_call(client, db, line)
    with caplog.at_level(logging.INFO, logger="voice_gateway.twilio.webhooks"):
        for event in ("stream-started", "stream-stopped"):
            response = await post(client, "/twilio/stream-status", stream_form(call, event))
            assert response.status_code == 204
    assert "stream-started" in caplog.text
    assert "stream-stopped" in caplog.text
    assert stream_errors(db, call) == []


async def test_a_stream_error_is_kept_on_the_call_and_frees_the_slot(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    assert admission_module.get_admission().stats().reserved == 1
    form = stream_form(call, "stream-error", StreamError="31920: Stream - WebSocket handshake")
    assert (await post(client, "/twilio/stream-status", form)).status_code == 204
    assert stream_errors(db, call) == [
        {"stream_sid": "MZ" + "1" * 32, "error": "31920: Stream - WebSocket handshake"}
    ]
    assert admission_module.get_admission().stats().reserved == 0


async def test_a_stream_event_for_an_unknown_call_is_204(client: httpx.AsyncClient) -> None:
    form = {"CallSid": call_sid(), "StreamEvent": "stream-error", "StreamError": "x"}
    assert (await post(client, "/twilio/stream-status", form)).status_code == 204


async def test_an_unsigned_stream_status_is_refused(
    client: httpx.AsyncClient, db: Session, line: Line
) -> None:
    call = await answered_call(client, db, line)
    form = stream_form(call, "stream-error", StreamError="forged")
    assert (await post(client, "/twilio/stream-status", form, sign=False)).status_code == 403
    assert stream_errors(db, call) == []
