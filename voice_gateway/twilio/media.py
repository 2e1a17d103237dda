"""`/twilio/media`: the Media Streams WebSocket, from the signed upgrade to the last frame.

This is the edge around a `CallSession`: it checks the upgrade's signature (403 before
anything is accepted), waits for `connected` and `start`, checks the per-call token and
the call it names, claims the admission slot the voice webhook reserved, and hands the
parsed messages to the session. Every bad input ends here in one place, `_close_for`:
Twilio's protocol errors that Twilio itself would ignore are logged and skipped, the
rest close the socket with the code the protocol module assigns, with the reason logged
under the call's id; other calls on the process never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from crm.calls import service as call_service
from crm.calls.models import CallStatus
from crm.db import session_scope
from crm.leads.models import Direction
from crm.timeutil import utcnow
from voice_gateway.config import get_settings
from voice_gateway.events import EndReason
from voice_gateway.runtime import VoiceRuntime, get_runtime
from voice_gateway.session import SessionEnded
from voice_gateway.twilio import protocol as tw
from voice_gateway.twilio.signature import SignatureError, verify_connection
from voice_gateway.twilio.tokens import TokenError

log = logging.getLogger(__name__)

router = APIRouter()

#: The end reason of a call whose stream came when the process was full.
OVER_CAPACITY = "over_capacity"
_FINAL = {
    CallStatus.completed,
    CallStatus.busy,
    CallStatus.no_answer,
    CallStatus.failed,
    CallStatus.canceled,
}


@dataclass(frozen=True)
class CallInfo:
    call_id: int
    broker_id: int
    lead_id: int | None
    twilio_call_sid: str | None
    language: str
    business_name: str
    #: The number an outbound call was placed from; None for an inbound call.
    outbound_from: str | None = None


class StreamRefused(Exception):
    def __init__(self, kind: tw.ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.error = tw.ProtocolError(kind, reason)


@router.websocket("/twilio/media")
async def media_stream(ws: WebSocket) -> None:
    settings = get_settings()
    try:
        verify_connection(ws, settings, websocket=True)
    except SignatureError as exc:
        log.warning("media stream refused before upgrade: %s", exc)
        await ws.close(code=tw.CloseCode.POLICY_VIOLATION)
        return
    await ws.accept()
    runtime = get_runtime()
    state = tw.StreamState()
    # Twilio sends `connected` and `start` at once; a stream without them is no call.
    start_timeout_s = settings.media_timeout_ms / 1000
    try:
        start = await asyncio.wait_for(_await_start(ws, state), start_timeout_s)
        info = await _admit(start, runtime)
    except TimeoutError:
        log.warning("media stream closed: no start within %g s", start_timeout_s)
        await _close(ws, tw.CloseCode.POLICY_VIOLATION, "no start")
        return
    except tw.ProtocolError as exc:
        await _close_for(ws, exc, call="-")
        return
    except StreamRefused as exc:
        await _close_for(ws, exc.error, call=state.call_sid or "-")
        if state.call_sid:
            # This stream will not come back: free the slot the webhook held for it.
            runtime.admission.cancel(state.call_sid)
        return
    except WebSocketDisconnect:
        log.info("media stream closed by Twilio before start")
        return
    slot = runtime.admission.try_acquire(start.call_sid)
    if slot is None:
        log.warning("call %s: refused, the process is at its call limit", info.call_id)
        runtime.metrics.admission_refused()
        await _end_unserved(info, OVER_CAPACITY)
        await _close(ws, tw.CloseCode.POLICY_VIOLATION, "over capacity")
        return
    runtime.metrics.call_started("inbound" if info.outbound_from is None else "outbound")
    reason = EndReason.internal_error
    try:
        try:
            session = runtime.new_session(
                call_id=info.call_id,
                call_sid=start.call_sid,
                stream_sid=start.stream_sid,
                broker_id=info.broker_id,
                lead_id=info.lead_id,
                language=info.language,
                business_name=info.business_name,
                send=_sender(ws),
                outbound_from=info.outbound_from,
            )
        except Exception:
            # A bug or a bad setting: this call ends now, in the CRM too, not the process.
            log.exception("call %s: the call session could not be set up", info.call_id)
            await _end_unserved(info, reason.value)
            await _close(ws, tw.CloseCode.INTERNAL_ERROR, reason.value)
            return
        reason = await session.run(_messages(ws, state, call=str(info.call_id)))
    finally:
        runtime.admission.release(slot)
        runtime.metrics.call_ended(reason.value)
    await _close(ws, tw.CloseCode.NORMAL_CLOSURE, reason.value)


async def _await_start(ws: WebSocket, state: tw.StreamState) -> tw.Start:
    """Read `connected` then `start` (ignoring what Twilio itself would ignore)."""
    while True:
        message = await _receive(ws)
        try:
            parsed = tw.parse_inbound(message)
            state.receive(parsed)
        except tw.ProtocolError as exc:
            if exc.ignore:
                log.info("media stream: ignored before start: %s", exc.reason)
                continue
            raise
        if isinstance(parsed, tw.Start):
            return parsed


async def _admit(start: tw.Start, runtime: VoiceRuntime) -> CallInfo:
    """The call `start` names, proven by its token and still live, or `StreamRefused`."""
    params = start.custom_parameters
    call_param = params.get("call_id")
    try:
        claim = runtime.tokens.verify(params.get("token"), call_id=call_param)
    except TokenError as exc:
        raise StreamRefused(tw.ErrorKind.bad_token, f"call token refused: {exc}") from exc
    info = await asyncio.to_thread(_load_call, claim.call_id)
    if info is None:
        raise StreamRefused(tw.ErrorKind.unknown_call, f"unknown or ended call {claim.call_id}")
    if info.twilio_call_sid and info.twilio_call_sid != start.call_sid:
        raise StreamRefused(
            tw.ErrorKind.unknown_call,
            f"call {claim.call_id} belongs to another CallSid than {start.call_sid[:40]!r}",
        )
    return info


def _load_call(call_id: int) -> CallInfo | None:
    from crm.brokers import service as broker_service
    from crm.calls.models import Call
    from crm.leads import service as lead_service

    with session_scope() as db:
        call = db.get(Call, call_id)
        if call is None or call.ended_at is not None or call.status in _FINAL:
            return None
        broker = broker_service.get_or_raise(db, broker_id=call.broker_id)
        lead = (
            lead_service.get(db, broker_id=call.broker_id, lead_id=call.lead_id)
            if call.lead_id is not None
            else None
        )
        language = (
            call.language.value
            if call.language is not None
            else lead.language.value
            if lead is not None
            else broker.locale
        )
        call_service.update_status(db, call=call, status=CallStatus.in_progress, at=utcnow())
        return CallInfo(
            call_id=call.id,
            broker_id=call.broker_id,
            lead_id=call.lead_id,
            twilio_call_sid=call.twilio_call_sid,
            language=language,
            business_name=broker.legal_name,
            outbound_from=call.from_number if call.direction is Direction.outbound else None,
        )


async def _end_unserved(info: CallInfo, reason: str) -> None:
    """End a call whose stream we refused after `start` named it, so it is not left
    in progress forever; closing the socket ends it on Twilio's side."""
    try:
        await asyncio.to_thread(_end_call, info, reason)
    except Exception:
        log.exception("call %s: could not record its end (%s)", info.call_id, reason)


def _end_call(info: CallInfo, reason: str) -> None:
    from crm.actor import Actor
    from crm.calls.models import Call

    with session_scope() as db:
        call = db.get(Call, info.call_id)
        if call is not None:
            actor = Actor.agent(f"call-{info.call_id}")
            call_service.end_call(db, call=call, reason=reason, at=utcnow(), actor=actor)


async def _messages(
    ws: WebSocket, state: tw.StreamState, *, call: str
) -> AsyncIterator[tw.InboundMessage]:
    """Parsed messages after `start`, in order; a fatal protocol error closes the socket."""
    while True:
        try:
            message = await _receive(ws)
        except WebSocketDisconnect:
            return
        try:
            parsed = tw.parse_inbound(message)
            state.receive(parsed)
        except tw.ProtocolError as exc:
            if exc.ignore:
                log.info("call %s: ignored: %s", call, exc.reason)
                continue
            await _close_for(ws, exc, call=call)
            raise SessionEnded(EndReason.protocol_error) from exc
        yield parsed
        if isinstance(parsed, tw.Stop):
            return


async def _receive(ws: WebSocket) -> str | bytes:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is not None:
        return str(text)
    return bytes(message.get("bytes") or b"")


def _sender(ws: WebSocket) -> Callable[[str], Awaitable[None]]:
    async def send(text: str) -> None:
        if ws.client_state is not WebSocketState.CONNECTED:
            raise SessionEnded(EndReason.disconnected)
        try:
            await ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise SessionEnded(EndReason.disconnected) from exc

    return send


async def _close_for(ws: WebSocket, error: tw.ProtocolError, *, call: str) -> None:
    code = error.close_code or tw.CloseCode.POLICY_VIOLATION
    log.warning("call %s: closing media stream (%d): %s", call, code, error.reason)
    await _close(ws, code, error.kind.value)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await ws.close(code=code, reason=reason[:120])
