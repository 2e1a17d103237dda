"""Twilio's HTTP webhooks: a call comes in, a call's status moves, a stream reports.

`POST /twilio/voice` finds the broker by the number called and the lead by the caller,
writes the `Call`, holds an admission slot and answers `<Connect><Stream>` with the
call id and a short-lived token, or, over capacity, a spoken "lines are busy" and a
hang-up before any stream opens. Twilio retries a webhook it got no answer to, so the
same CallSid finds the same `Call` and gets a fresh token. A caller on the do-not-call
list is still answered: they called us.

`POST /twilio/status` applies call status callbacks once each (CallSid +
SequenceNumber) in whatever order they come; `POST /twilio/stream-status` logs stream
events and keeps stream errors on the call. Both answer 204, also for a CallSid we do
not know (logged): an error status would only make Twilio report or retry it.

Every form is signature-checked first (`TwilioForm`). The routes are plain `def`: each
is one short transaction of sync SQLAlchemy calls, which FastAPI runs in its threadpool,
so the event loop that carries live audio never waits on the database, and there is no
`to_thread` hop per query. The admission counter they share with the sessions on the
loop is lock-protected for exactly this reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm import phones
from crm.actor import Actor
from crm.audit.models import ActorType
from crm.brokers import service as broker_service
from crm.brokers.models import Broker
from crm.calls import service as call_service
from crm.calls.models import Call, CallStatus
from crm.calls.status import is_final
from crm.config import get_settings as get_crm_settings
from crm.deps import DbSession
from crm.errors import Conflict, InvalidInput, field_error
from crm.leads import service as lead_service
from crm.leads.models import Direction, Lead
from crm.leads.schemas import LeadCreate
from crm.timeutil import ensure_utc, utcnow
from voice_gateway.admission import Admission, get_admission
from voice_gateway.config import GatewaySettings, get_settings
from voice_gateway.twilio import twiml
from voice_gateway.twilio.signature import SignatureError, TwilioForm, address_of, public_base
from voice_gateway.twilio.tokens import CallTokens, get_call_tokens

log = logging.getLogger(__name__)

router = APIRouter(prefix="/twilio", tags=["twilio"])

MEDIA_PATH: Final = "/twilio/media"
STATUS_PATH: Final = "/twilio/status"
STREAM_STATUS_PATH: Final = "/twilio/stream-status"
TWIML_TYPE: Final = "text/xml"
LEAD_SOURCE: Final = "inbound_call"
OVER_CAPACITY: Final = "over_capacity"
#: What a Call row stores for a caller ID that is no number ("anonymous", blank).
_UNKNOWN_CALLER: Final = "unknown"
_NUMBER_MAX: Final = call_service.NUMBER_MAX_LEN

#: Twilio's CallStatus values, as the Call's status. `initiated` is Twilio dialing an
#: outbound call, which is still `queued` for us.
TWILIO_STATUSES: Final = {
    "queued": CallStatus.queued,
    "initiated": CallStatus.queued,
    "ringing": CallStatus.ringing,
    "in-progress": CallStatus.in_progress,
    "answered": CallStatus.in_progress,
    "completed": CallStatus.completed,
    "busy": CallStatus.busy,
    "no-answer": CallStatus.no_answer,
    "failed": CallStatus.failed,
    "canceled": CallStatus.canceled,
}

Settings = Annotated[GatewaySettings, Depends(get_settings)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
TokensDep = Annotated[CallTokens, Depends(get_call_tokens)]


def _twiml(xml: str) -> Response:
    return Response(content=xml, media_type=TWIML_TYPE)


def _actor(request: Request) -> Actor:
    rid = getattr(request.state, "request_id", None)
    return Actor(ActorType.system, "twilio", request_id=rid if isinstance(rid, str) else None)


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise InvalidInput(f"Twilio sent no {name}", errors=[field_error(name, "required")])
    return value


def _e164(raw: str) -> str | None:
    """The number as E.164, or None for "anonymous", "unknown", blanks and garbage."""
    try:
        return phones.normalize(raw, get_crm_settings().default_region)
    except phones.InvalidPhoneNumber:
        return None


# -- POST /twilio/voice ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Addresses:
    media_url: str
    stream_status_url: str


def _addresses(request: Request, settings: GatewaySettings) -> _Addresses:
    address = address_of(request)
    try:
        ws = public_base(address, configured=settings.public_ws_base, websocket=True)
        http = public_base(address, configured=settings.public_http_base, websocket=False)
    except SignatureError as exc:
        raise InvalidInput(exc.reason) from None
    return _Addresses(media_url=ws + MEDIA_PATH, stream_status_url=http + STREAM_STATUS_PATH)


def _lead_for(db: Session, *, broker: Broker, caller: str | None, actor: Actor) -> Lead | None:
    """The caller's lead, created on a first call; None when the caller ID is no number."""
    if caller is None:
        return None
    lead = lead_service.find_by_phone(db, broker_id=broker.id, phone=caller)
    if lead is not None:
        return lead
    try:
        return lead_service.create(
            db,
            broker_id=broker.id,
            data=LeadCreate(phone=caller, source=LEAD_SOURCE),
            actor=actor,
        )
    except Conflict:
        # A second call from the same new number created the lead a moment ago.
        return lead_service.find_by_phone(db, broker_id=broker.id, phone=caller)


def _new_call(
    db: Session, *, broker: Broker, call_sid: str, from_raw: str, to: str, actor: Actor
) -> Call:
    caller = _e164(from_raw)
    if caller is None:
        log.info("call %s: caller ID %r is no number; no lead", call_sid, from_raw[:40])
    lead = _lead_for(db, broker=broker, caller=caller, actor=actor)
    if lead is not None and lead.do_not_call:
        log.info("call %s: lead %s is on do-not-call but called us; answering", call_sid, lead.id)
    from_number = caller or (from_raw.strip()[:_NUMBER_MAX] or _UNKNOWN_CALLER)
    try:
        with db.begin_nested():
            return call_service.create_call(
                db,
                broker_id=broker.id,
                lead_id=lead.id if lead else None,
                direction=Direction.inbound,
                from_number=from_number,
                to_number=to,
                twilio_call_sid=call_sid,
                actor=actor,
                language=lead.language if lead else twiml.language_of(broker.locale),
            )
    except (Conflict, IntegrityError):
        # Twilio's retry of this webhook won the race for the CallSid.
        existing = call_service.get_by_sid(db, sid=call_sid)
        if existing is None:
            raise
        return existing


@router.post("/voice", response_class=Response, summary="Incoming call (Twilio voice webhook)")
def incoming_call(
    form: TwilioForm,
    request: Request,
    db: DbSession,
    settings: Settings,
    admission: AdmissionDep,
    tokens: TokensDep,
) -> Response:
    call_sid = _required(form, "CallSid")
    to_raw = _required(form, "To")
    addresses = _addresses(request, settings)
    to = _e164(to_raw)
    broker = broker_service.get_by_phone_number(db, e164=to) if to else None
    if to is None or broker is None:
        log.warning("call %s: no broker owns the number %r; not in service", call_sid, to_raw[:40])
        return _twiml(twiml.not_in_service())

    actor = _actor(request)
    call = call_service.get_by_sid(db, sid=call_sid)
    if call is not None and (is_final(call.status) or call.end_reason is not None):
        log.info("call %s: webhook repeated after the call ended; hanging up", call_sid)
        return _twiml(twiml.hangup())
    reservation = admission.reserve(call_sid)
    try:
        if call is None:
            call = _new_call(
                db,
                broker=broker,
                call_sid=call_sid,
                from_raw=form.get("From", ""),
                to=to,
                actor=actor,
            )
        if reservation is None:
            call_service.end_call(db, call=call, reason=OVER_CAPACITY, at=utcnow(), actor=actor)
            db.commit()
            log.warning(
                "call %s (call id %s): over capacity (%s calls); refused with TwiML",
                call_sid,
                call.id,
                admission.limit,
            )
            return _twiml(twiml.refuse_busy(broker.locale))
        token = tokens.issue(call.id)
        db.commit()
    except BaseException:
        admission.cancel(call_sid)
        raise
    log.info("call %s (call id %s): answered, stream at %s", call_sid, call.id, addresses.media_url)
    return _twiml(
        twiml.connect_stream(
            ws_url=addresses.media_url,
            call_id=call.id,
            token=token,
            status_callback=addresses.stream_status_url,
        )
    )


# -- POST /twilio/status ---------------------------------------------------------------


def _sequence(raw: str | None) -> int | None:
    raw = (raw or "").strip()
    if raw and len(raw) <= 9 and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def _timestamp(raw: str | None) -> datetime:
    """Twilio's RFC 2822 Timestamp as aware UTC; when it is absent or unreadable, now."""
    if raw:
        try:
            parsed = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            log.info("unreadable Twilio Timestamp %r; using the time received", raw[:40])
        else:
            return ensure_utc(parsed) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return utcnow()


@router.post("/status", status_code=204, summary="Call status callback")
def call_status(form: TwilioForm, db: DbSession, admission: AdmissionDep) -> Response:
    call_sid = form.get("CallSid", "").strip()
    reported = form.get("CallStatus", "").strip().lower()
    sequence = _sequence(form.get("SequenceNumber"))
    call = call_service.get_by_sid(db, sid=call_sid) if call_sid else None
    if call is None:
        log.warning("status %r for unknown call %r; ignored", reported[:32], call_sid[:40])
        return Response(status_code=204)
    status = TWILIO_STATUSES.get(reported)
    if status is None:
        log.warning("call %s: unknown CallStatus %r; kept, not applied", call_sid, reported[:32])
    applied = call_service.record_status_callback(
        db,
        call=call,
        sequence_number=sequence,
        status=status,
        reported=reported or "?",
        at=_timestamp(form.get("Timestamp")),
    )
    db.commit()
    if status is not None and is_final(status):
        # A call that ended before its stream claimed the slot frees it now.
        admission.cancel(call_sid)
    log.info(
        "call %s: status %s (#%s) %s",
        call_sid,
        reported,
        sequence,
        "applied" if applied else "ignored (repeat or late)",
    )
    return Response(status_code=204)


# -- POST /twilio/stream-status --------------------------------------------------------


@router.post("/stream-status", status_code=204, summary="Media stream status callback")
def stream_status(
    form: TwilioForm, request: Request, db: DbSession, admission: AdmissionDep
) -> Response:
    call_sid = form.get("CallSid", "").strip()
    event = form.get("StreamEvent", "").strip()
    stream_sid = form.get("StreamSid", "").strip() or None
    error = form.get("StreamError", "").strip()
    if event == "stream-error":
        log.warning("call %s: stream %s failed: %s", call_sid, stream_sid, error[:200])
    else:
        log.info("call %s: stream %s %s", call_sid, stream_sid, event[:40] or "(no event)")
    if event in ("stream-error", "stream-stopped") and call_sid:
        admission.cancel(call_sid)
    if event != "stream-error":
        return Response(status_code=204)
    call = call_service.get_by_sid(db, sid=call_sid) if call_sid else None
    if call is None:
        log.warning("stream error for unknown call %r; not recorded", call_sid[:40])
        return Response(status_code=204)
    call_service.record_stream_error(
        db, call=call, stream_sid=stream_sid, error=error, actor=_actor(request)
    )
    db.commit()
    return Response(status_code=204)
