"""`POST /twilio/amd`: Twilio's answering-machine verdict on an outbound call we placed.

With AsyncAmd the call is connected (and the agent talking) while detection runs; the
verdict comes here later. It is stored on the Call first (the durable record), then
published on the call's control channel, because this request may reach a different
gateway process than the one holding the call's media stream
(`voice_gateway.call_control`). Like the other Twilio webhooks it is signature-checked
and answers 204 whatever it finds, an unknown CallSid included (logged): an error would
only make Twilio report or retry it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Response

from crm.actor import Actor
from crm.calls import service as call_service
from crm.db import session_scope
from voice_gateway.amd import AnsweredBy, parse_answered_by
from voice_gateway.call_control import CallControl, ControlEvent, ControlKind, get_call_control
from voice_gateway.twilio.signature import TwilioForm

log = logging.getLogger(__name__)

router = APIRouter(prefix="/twilio", tags=["twilio"])

#: Where Twilio posts the verdict (the outbound dialer names it in `calls.create`).
AMD_PATH: Final = "/twilio/amd"

ControlDep = Annotated[CallControl, Depends(get_call_control)]


def _store(call_sid: str, answered_by: AnsweredBy) -> int | None:
    """The call's id once its AnsweredBy is stored; None for a CallSid we do not know."""
    with session_scope() as db:
        call = call_service.get_by_sid(db, sid=call_sid)
        if call is None:
            return None
        call_service.record_answered_by(
            db, call=call, answered_by=answered_by.value, actor=Actor.system("twilio")
        )
        return call.id


@router.post(
    AMD_PATH.removeprefix("/twilio"),
    status_code=204,
    summary="Answering-machine detection result (AsyncAmd)",
)
async def amd_status(form: TwilioForm, control: ControlDep) -> Response:
    call_sid = form.get("CallSid", "").strip()
    raw = form.get("AnsweredBy", "").strip()
    answered_by = parse_answered_by(raw)
    if not call_sid or answered_by is None:
        log.warning("AMD result %r for call %r ignored", raw[:40], call_sid[:40])
        return Response(status_code=204)
    call_id = await asyncio.to_thread(_store, call_sid, answered_by)
    if call_id is None:
        log.warning("AMD result %s for unknown call %r; ignored", answered_by, call_sid[:40])
        return Response(status_code=204)
    log.info(
        "call %s: answered by %s (detection took %s ms)",
        call_id,
        answered_by,
        form.get("MachineDetectionDuration", "?")[:10],
    )
    try:
        await control.publish(call_id, ControlEvent(ControlKind.answered_by, answered_by.value))
    except Exception:
        # Stored all the same; the session just does not hear of it.
        log.exception("call %s: could not deliver the AMD result to its session", call_id)
    return Response(status_code=204)
