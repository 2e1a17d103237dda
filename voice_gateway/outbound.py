"""Placing an outbound call: the gateway phones a lead (the seam the campaign dialer uses).

Twilio's `calls.create` gets, inline, the same `<Connect><Stream>` TwiML the voice
webhook answers an inbound call with (call id + per-call token), so from the moment the
lead picks up the call is handled exactly like an inbound one: the same media socket,
session, teardown and status callbacks.

What a failure leaves behind decides the order:
1. Everything that can refuse runs before any row is written: the lead is the broker's
   and live (else 404, before anything else is said), not on do-not-call, allowed by the
   compliance gate, not already on a call; the broker has a number to call from; the
   public address is configured; this process has a free admission slot. A refusal
   leaves no `Call`.
2. The `Call` is committed before the REST request: a crash while Twilio dials must not
   leave a real call with no row.
3. A telephony failure ends that `Call` (failed, with the reason), frees its slot and is
   audited; the broker gets a 502 saying why.
4. Twilio's CallSid is stored once Twilio names it, and the admission reservation, taken
   before the sid existed, is moved to it so the media stream can claim it.

An Idempotency-Key (per broker, stored on the call) makes a retried request return the
first call, whatever became of it, without dialling again.

The pure parts (which number, which URLs, the REST request) are plain functions;
`place_call` is the one flow with I/O: database work in a worker thread, the REST
request on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.audit import service as audit
from crm.brokers import service as broker_service
from crm.calls import service as call_service
from crm.calls.models import Call, CallStatus
from crm.compliance import service as compliance_service
from crm.compliance.policy import Verdict
from crm.enums import Channel
from crm.errors import Conflict, InvalidInput, NotFound, Problem, field_error
from crm.leads.models import Direction, Lead
from crm.timeutil import utcnow
from voice_gateway.admission import Admission
from voice_gateway.config import AmdMode, GatewaySettings
from voice_gateway.providers.base import ProviderError, Telephony
from voice_gateway.providers.telephony_twilio import MachineDetection, OutboundCall, TelephonyError
from voice_gateway.twilio import twiml
from voice_gateway.twilio.amd_webhook import AMD_PATH
from voice_gateway.twilio.tokens import CallTokens
from voice_gateway.twilio.webhooks import MEDIA_PATH, STATUS_PATH, STREAM_STATUS_PATH

log = logging.getLogger(__name__)

#: Every call status callback Twilio offers, so the Call follows the call closely.
STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
RING_TIMEOUT_S: Final = 30
#: Twilio's own cap on a call, a backstop behind the session's MAX_CALL_SECONDS.
TIME_LIMIT_MARGIN_S: Final = 60
MAX_TIME_LIMIT_S: Final = 4 * 3600
IDEMPOTENCY_KEY_MAX: Final = 100
#: The admission key of a call Twilio has not named yet.
_PENDING_PREFIX: Final = "outbound:"


# -- refusals --------------------------------------------------------------------------


class NotCallable(Conflict):
    """The lead may not be called now: do-not-call, or the compliance gate said no."""

    kind = "not-callable"


class OverCapacity(Problem):
    """This process is at MAX_CONCURRENT_CALLS; `retry_after_s` goes in Retry-After."""

    status, title, kind = 503, "Service unavailable", "over-capacity"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class NotConfigured(Problem):
    """The gateway cannot place calls as configured (no public address)."""

    status, title, kind = 503, "Service unavailable", "outbound-not-configured"


class DialFailed(Problem):
    """Twilio did not take the call; the Call is ended with the reason."""

    status, title, kind = 502, "Bad gateway", "dial-failed"


# -- pure parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Callbacks:
    """Where Twilio reaches us for one outbound call."""

    media_url: str
    stream_status_url: str
    status_url: str
    amd_url: str


def callbacks_of(settings: GatewaySettings) -> Callbacks:
    """The public URLs from PUBLIC_HOST. An inbound call derives them from the request
    Twilio sent; an outbound call has no request to derive them from, so they must be
    configured."""
    http, ws = settings.public_http_base, settings.public_ws_base
    if http is None or ws is None:
        raise NotConfigured(
            "outbound calls need PUBLIC_HOST: without it the gateway has no "
            "public_http_base (Twilio's status and AMD callbacks) and no public_ws_base "
            "(the media stream) to give Twilio",
            missing=["PUBLIC_HOST"],
        )
    return Callbacks(
        media_url=ws + MEDIA_PATH,
        stream_status_url=http + STREAM_STATUS_PATH,
        status_url=http + STATUS_PATH,
        amd_url=http + AMD_PATH,
    )


def choose_from_number(owned: Sequence[str], requested: str | None) -> str:
    """The number to call from: `requested` if the broker owns it, else its first one."""
    if not owned:
        raise InvalidInput(
            "the broker has no phone number to call from; add one first "
            "(POST /api/v1/broker/phone-numbers)",
            errors=[field_error("from_number", "the broker owns no phone number")],
        )
    if requested is None:
        return owned[0]
    if requested not in owned:
        raise InvalidInput(
            f"{requested} is not one of the broker's numbers",
            errors=[field_error("from_number", f"one of: {', '.join(owned)}")],
        )
    return requested


def machine_detection_for(mode: AmdMode) -> MachineDetection | None:
    """Hanging up needs only "is it a machine" (fast); a voicemail waits for the beep."""
    if mode is AmdMode.hangup:
        return MachineDetection.enable
    if mode is AmdMode.voicemail:
        return MachineDetection.detect_message_end
    return None


def build_request(
    *,
    to: str,
    from_: str,
    call_id: int,
    token: str,
    callbacks: Callbacks,
    amd_mode: AmdMode,
    max_call_seconds: int,
) -> OutboundCall:
    """The `calls.create` request: the inbound TwiML inline, every status callback, and
    answering-machine detection in the background (AsyncAmd) so the agent starts at once."""
    document = twiml.connect_stream(
        ws_url=callbacks.media_url,
        call_id=call_id,
        token=token,
        status_callback=callbacks.stream_status_url,
    )
    detection = machine_detection_for(amd_mode)
    return OutboundCall(
        to=to,
        from_=from_,
        twiml=document,
        status_callback=callbacks.status_url,
        status_callback_events=STATUS_EVENTS,
        machine_detection=detection,
        amd_status_callback=callbacks.amd_url if detection is not None else None,
        ring_timeout_s=RING_TIMEOUT_S,
        time_limit_s=min(max_call_seconds + TIME_LIMIT_MARGIN_S, MAX_TIME_LIMIT_S),
    )


def longest_call(settings: GatewaySettings) -> timedelta:
    """No call lives longer than ringing plus Twilio's time limit: an older call whose
    end never reached us (a lost callback, a crash) is not live, whatever its row says."""
    return timedelta(seconds=RING_TIMEOUT_S + settings.max_call_seconds + TIME_LIMIT_MARGIN_S)


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable() or key != key.strip():
        raise InvalidInput(
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable characters",
            errors=[field_error("Idempotency-Key", f"1..{IDEMPOTENCY_KEY_MAX} characters")],
        )
    return key


def refusal_reasons(verdict: Verdict) -> list[dict[str, str]]:
    """The compliance verdict's reasons as the problem body lists them."""
    return [{"code": str(r.code), "message": r.message} for r in verdict.reasons]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# -- the flow --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialing:
    """The process-wide pieces a call is placed with. `dialer` is resolved only once
    every check has passed, so a refusal never builds the providers."""

    settings: GatewaySettings
    admission: Admission
    tokens: CallTokens
    dialer: Callable[[], Telephony]


@dataclass(frozen=True, slots=True)
class CallRequest:
    lead_id: int
    from_number: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Placed:
    call: Call
    #: An earlier request with the same Idempotency-Key placed it; nothing was dialled.
    repeated: bool


@dataclass(frozen=True, slots=True)
class _Prepared:
    call_id: int
    request: OutboundCall
    admission_key: str


async def place_call(
    db: Session, *, broker_id: int, request: CallRequest, actor: Actor, dialing: Dialing
) -> Placed:
    """Phone the lead now, or raise the `Problem` that says why not (see the module)."""
    key = check_idempotency_key(request.idempotency_key)
    prepared = await asyncio.to_thread(
        _prepare,
        db,
        broker_id=broker_id,
        request=request,
        key=key,
        actor=actor,
        dialing=dialing,
    )
    if isinstance(prepared, Call):
        return Placed(prepared, repeated=True)
    try:
        sid = await dialing.dialer().place_call(prepared.request)
    except ProviderError as exc:
        await asyncio.to_thread(_dial_failed, db, prepared, exc, actor, dialing.admission)
        raise DialFailed(
            f"Twilio did not place the call: {exc}",
            call_id=prepared.call_id,
            failure=_failure(exc),
        ) from exc
    call = await asyncio.to_thread(_dialed, db, prepared, sid, actor, dialing.admission)
    return Placed(call, repeated=False)


def _prepare(
    db: Session,
    *,
    broker_id: int,
    request: CallRequest,
    key: str | None,
    actor: Actor,
    dialing: Dialing,
) -> _Prepared | Call:
    """Check, reserve a slot, write the Call and its request; commit. A repeated
    Idempotency-Key returns the call it placed instead."""
    if key is not None:
        earlier = _earlier(db, broker_id=broker_id, key=key, lead_id=request.lead_id)
        if earlier is not None:
            return earlier
    lead = _callable_lead(
        db,
        broker_id=broker_id,
        lead_id=request.lead_id,
        longest_call=longest_call(dialing.settings),
    )
    broker = broker_service.get_or_raise(db, broker_id=broker_id)
    from_number = choose_from_number([n.e164 for n in broker.phone_numbers], request.from_number)
    callbacks = callbacks_of(dialing.settings)
    admission_key = _PENDING_PREFIX + uuid.uuid4().hex
    if dialing.admission.reserve(admission_key) is None:
        db.rollback()  # the lead's row lock
        hold = dialing.admission.hold_s
        raise OverCapacity(
            f"this gateway is at its limit of {dialing.admission.limit} calls; try again shortly",
            retry_after_s=max(1, round(hold)),
        )
    try:
        call = call_service.create_call(
            db,
            broker_id=broker_id,
            lead_id=lead.id,
            direction=Direction.outbound,
            from_number=from_number,
            to_number=lead.phone,
            actor=actor,
            language=lead.language,
            idempotency_key=key,
        )
        outbound = build_request(
            to=lead.phone,
            from_=from_number,
            call_id=call.id,
            token=dialing.tokens.issue(call.id),
            callbacks=callbacks,
            amd_mode=dialing.settings.amd_mode,
            max_call_seconds=dialing.settings.max_call_seconds,
        )
        db.commit()
    except IntegrityError:
        db.rollback()
        dialing.admission.cancel(admission_key)
        # A twin request with the same Idempotency-Key committed first.
        earlier = _earlier(db, broker_id=broker_id, key=key, lead_id=lead.id) if key else None
        if earlier is None:
            raise
        return earlier
    except BaseException:
        db.rollback()
        dialing.admission.cancel(admission_key)
        raise
    log.info("call %s: placing an outbound call to lead %s from %s", call.id, lead.id, from_number)
    return _Prepared(call_id=call.id, request=outbound, admission_key=admission_key)


def _earlier(db: Session, *, broker_id: int, key: str, lead_id: int) -> Call | None:
    call = call_service.get_by_idempotency_key(db, broker_id=broker_id, key=key)
    if call is not None and call.lead_id != lead_id:
        raise Conflict(
            "this Idempotency-Key was used to call another lead",
            call_id=call.id,
            errors=[field_error("Idempotency-Key", "already used for another lead")],
        )
    return call


def _callable_lead(db: Session, *, broker_id: int, lead_id: int, longest_call: timedelta) -> Lead:
    """The live lead, locked until commit (so two requests cannot both find it free),
    that nothing forbids calling now."""
    lead = db.scalars(
        select(Lead).where(Lead.id == lead_id, Lead.broker_id == broker_id).with_for_update()
    ).first()
    if lead is None:
        raise NotFound(f"lead {lead_id} not found")
    if lead.deleted_at is not None:
        raise NotFound(f"lead {lead_id} was deleted; it cannot be called")
    if lead.do_not_call:
        raise NotCallable(
            f"lead {lead_id} is on the do-not-call list",
            reasons=[{"code": "do_not_call", "message": lead.dnc_reason or "do not call"}],
            next_allowed_at=None,
        )
    verdict = compliance_service.check_contact(
        db, lead=lead, channel=Channel.call, automated=True, at=utcnow()
    )
    if not verdict.allowed:
        reasons = refusal_reasons(verdict)
        raise NotCallable(
            f"lead {lead_id} may not be called now: " + "; ".join(r["message"] for r in reasons),
            reasons=reasons,
            next_allowed_at=_iso(verdict.next_allowed_at),
            policy=verdict.policy,
        )
    live = call_service.live_call_for_lead(
        db, broker_id=broker_id, lead_id=lead_id, started_after=utcnow() - longest_call
    )
    if live is not None:
        raise Conflict(
            f"lead {lead_id} is already on call {live.id}, which has not ended",
            call_id=live.id,
        )
    return lead


def _failure(exc: Exception) -> str:
    return exc.failure.value if isinstance(exc, TelephonyError) else "error"


def _dial_failed(
    db: Session, prepared: _Prepared, exc: Exception, actor: Actor, admission: Admission
) -> None:
    """Twilio did not take the call: it ends here, failed, and its slot is free."""
    admission.cancel(prepared.admission_key)
    failure = _failure(exc)
    log.warning("call %s: the outbound call was not placed: %s", prepared.call_id, exc)
    call = db.get(Call, prepared.call_id)
    if call is None:
        return
    now = utcnow()
    call_service.update_status(db, call=call, status=CallStatus.failed, at=now)
    call_service.end_call(db, call=call, reason=f"dial_failed_{failure}", at=now, actor=actor)
    audit.record(
        db,
        actor=actor,
        broker_id=call.broker_id,
        action="call.dial_failed",
        object_type="call",
        object_id=call.id,
        changes={"failure": failure, "detail": str(exc)[:500]},
    )
    db.commit()


def _dialed(db: Session, prepared: _Prepared, sid: str, actor: Actor, admission: Admission) -> Call:
    """Twilio took the call: keep its sid, and hold the slot under it for the stream."""
    if not admission.rekey(prepared.admission_key, sid):
        log.info("call %s: its admission hold expired before Twilio answered", prepared.call_id)
    call = db.get(Call, prepared.call_id)
    if call is None:  # deleted while Twilio dialled (the broker went away)
        raise NotFound(f"call {prepared.call_id} not found")
    try:
        call_service.attach_sid(db, call=call, sid=sid, actor=actor)
        db.commit()
    except Exception:
        log.exception(
            "call %s: Twilio placed it as %s but the sid could not be stored; its status "
            "callbacks will not find it",
            prepared.call_id,
            sid,
        )
        raise
    db.refresh(call)
    log.info("call %s: Twilio is dialling it as %s", call.id, sid)
    return call
