"""The CRM behind a call session: turns, do-not-call and the end of the call.

The session is asyncio and the CRM's services are synchronous SQLAlchemy, so each write
runs in a worker thread with its own short transaction: a turn is committed the moment
it ends, and a socket that drops later loses nothing already said.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy.orm import Session

from crm.actor import Actor
from crm.calls import service as call_service
from crm.calls.models import Call, TurnRole
from crm.db import session_scope
from crm.leads import service as lead_service
from crm.timeutil import utcnow
from voice_gateway.events import EndReason, TurnRecord

log = logging.getLogger(__name__)


class CrmCallStore:
    def __init__(self, *, call_id: int, broker_id: int, recording: Path | None = None) -> None:
        self.call_id = call_id
        self.broker_id = broker_id
        self.recording = recording
        self.actor = Actor.agent(f"call-{call_id}")

    def _call(self, db: Session) -> Call:
        return call_service.get_or_raise(db, broker_id=self.broker_id, call_id=self.call_id)

    async def save_turn(self, turn: TurnRecord) -> None:
        await asyncio.to_thread(self._save_turn, turn)

    def _save_turn(self, turn: TurnRecord) -> None:
        with session_scope() as db:
            call_service.append_turn(
                db,
                broker_id=self.broker_id,
                call_id=self.call_id,
                role=TurnRole(turn.role),
                text=turn.text,
                start_ms=turn.start_ms,
                end_ms=turn.end_ms,
                interrupted=turn.interrupted,
                latency=turn.latency,
            )

    async def mark_do_not_call(self, reason: str) -> None:
        await asyncio.to_thread(self._mark_do_not_call, reason)

    def _mark_do_not_call(self, reason: str) -> None:
        with session_scope() as db:
            call = self._call(db)
            if call.lead_id is None:
                log.warning("call %s: do-not-call asked, but the caller has no lead", call.id)
                return
            lead = lead_service.get(db, broker_id=self.broker_id, lead_id=call.lead_id)
            if lead is not None:
                lead_service.mark_do_not_call(db, lead=lead, reason=reason[:200], actor=self.actor)

    async def finish(self, reason: EndReason) -> None:
        await asyncio.to_thread(self._finish, reason)

    def _finish(self, reason: EndReason) -> None:
        with session_scope() as db:
            call = self._call(db)
            if self.recording is not None and self.recording.exists():
                call.recording_path = str(self.recording)
            call_service.end_call(db, call=call, reason=reason.value, at=utcnow(), actor=self.actor)
