"""Calls, their turns, summaries and latency, for review."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import AwareDatetime

from crm.calls import metrics, service, transcript
from crm.calls.models import Call, CallStatus, CallTurn
from crm.calls.schemas import (
    CallDetail,
    CallOut,
    CallStatsOut,
    LatencyOut,
    TranscriptFormat,
    TranscriptLine,
    TranscriptOut,
    TurnOut,
)
from crm.config import get_settings
from crm.deps import CurrentBroker, DbSession, Paging
from crm.errors import InvalidInput, field_error
from crm.leads.models import Direction
from crm.listing import Page, page

router = APIRouter(prefix="/calls", tags=["calls"])


def get_current_call(call_id: int, broker: CurrentBroker, db: DbSession) -> Call:
    return service.get_or_raise(db, broker_id=broker.id, call_id=call_id)


CurrentCall = Annotated[Call, Depends(get_current_call)]


def get_recordings_dir() -> Path:
    """The only directory recordings are served from (a dependency, so tests point it)."""
    settings = get_settings()
    return settings.recordings_dir or settings.data_dir / "recordings"


RecordingsDir = Annotated[Path, Depends(get_recordings_dir)]


def call_out(call: Call) -> CallOut:
    return CallOut.model_validate(
        {
            **{name: getattr(call, name) for name in CallOut.model_fields if hasattr(call, name)},
            "duration_seconds": service.duration_seconds(call),
            "has_summary": service.has_summary(call),
            "has_recording": bool(call.recording_path),
        }
    )


def turn_out(turn: CallTurn) -> TurnOut:
    latency = None
    if turn.latency:
        latency = LatencyOut.model_validate(
            {
                **{m: turn.latency.get(m) for m in metrics.MARKS},
                **metrics.stage_breakdown(turn.latency),
            }
        )
    return TurnOut(
        seq=turn.seq,
        role=turn.role,
        text=turn.text,
        start_ms=turn.start_ms,
        end_ms=turn.end_ms,
        duration_ms=turn.end_ms - turn.start_ms,
        interrupted=turn.interrupted,
        latency=latency,
        response_latency_ms=metrics.response_latency(turn.latency),
    )


def call_detail(call: Call, turns: Sequence[CallTurn]) -> CallDetail:
    stats = metrics.call_stats(
        metrics.TurnFacts(role=t.role.value, interrupted=t.interrupted, latency=t.latency)
        for t in turns
    )
    return CallDetail.model_validate(
        {
            **call_out(call).model_dump(),
            "summary": call.summary,
            "extracted": call.extracted,
            "turns": [turn_out(t) for t in turns],
            "stats": CallStatsOut.model_validate(stats, from_attributes=True),
        }
    )


@router.get("", response_model=Page[CallOut])
def list_calls(
    broker: CurrentBroker,
    db: DbSession,
    paging: Paging,
    lead_id: int | None = None,
    status: Annotated[list[CallStatus] | None, Query(description="Any of these")] = None,
    direction: Direction | None = None,
    since: Annotated[AwareDatetime | None, Query(description="started_at >= since")] = None,
    until: Annotated[AwareDatetime | None, Query(description="started_at < until")] = None,
    has_summary: bool | None = None,
) -> Page[CallOut]:
    if since is not None and until is not None and until <= since:
        raise InvalidInput(
            "until must be after since", errors=[field_error("until", "must be after since")]
        )
    stmt = service.query(
        broker_id=broker.id,
        lead_id=lead_id,
        statuses=status or (),
        direction=direction,
        since=since,
        until=until,
        has_summary=has_summary,
    )
    rows, total = page(
        db,
        stmt,
        paging,
        sortable={"started_at": Call.started_at, "created_at": Call.created_at},
        default_sort="started_at",
        id_column=Call.id,
    )
    return Page[CallOut](
        items=[call_out(c) for c in rows], total=total, limit=paging.limit, offset=paging.offset
    )


@router.get("/{call_id}", response_model=CallDetail)
def get_call(call: CurrentCall, db: DbSession) -> CallDetail:
    return call_detail(call, service.list_turns(db, call=call))


@router.get(
    "/{call_id}/transcript",
    response_model=None,
    responses={
        200: {
            "content": {
                "text/plain": {"example": "Agent: Hola, ¿hablo con Ana?\nCaller: Sí.\n"},
                "application/json": {"schema": TranscriptOut.model_json_schema()},
            },
            "description": "The transcript as text (default) or, with format=json, as lines.",
        }
    },
)
def get_transcript(
    call: CurrentCall, db: DbSession, format: TranscriptFormat = TranscriptFormat.text
) -> Response:
    turns = service.list_turns(db, call=call)
    if format is TranscriptFormat.json:
        body = TranscriptOut(
            call_id=call.id,
            lines=[
                TranscriptLine(
                    seq=t.seq,
                    speaker=transcript.speaker(t.role.value),
                    role=t.role,
                    text=t.text,
                    start_ms=t.start_ms,
                    end_ms=t.end_ms,
                    interrupted=t.interrupted,
                )
                for t in turns
            ],
        )
        return JSONResponse(body.model_dump(mode="json"))
    text = transcript.as_text(
        transcript.Line(role=t.role.value, text=t.text, interrupted=t.interrupted) for t in turns
    )
    return PlainTextResponse(text)


@router.get(
    "/{call_id}/recording",
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}, "description": "The call recording."}},
)
def get_recording(call: CurrentCall, recordings_dir: RecordingsDir) -> FileResponse:
    path = service.recording_file(call, root=recordings_dir)
    return FileResponse(path, media_type="audio/wav", filename=f"call-{call.id}.wav")
