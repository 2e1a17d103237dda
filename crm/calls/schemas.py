from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crm.calls.models import CallStatus, TurnRole
from crm.enums import Language
from crm.leads.models import Direction


class CallOut(BaseModel):
    """A call as listed: who, when, how it ended, and whether there is more to read."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    lead_id: int | None
    direction: Direction
    status: CallStatus
    twilio_call_sid: str | None
    from_number: str
    to_number: str
    language: Language | None
    started_at: datetime | None
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    answered_by: str | None = Field(
        default=None, description="Answering-machine detection's verdict (outbound calls)."
    )
    duration_seconds: int | None = Field(
        description="From answer (or start, if never answered) to end; null while live."
    )
    has_summary: bool
    has_recording: bool
    created_at: datetime


class LatencyOut(BaseModel):
    """Marks in ms on the call clock, and the gaps between them."""

    endpoint: int | None = None
    stt_final: int | None = None
    llm_first_token: int | None = None
    tts_first_byte: int | None = None
    first_audio_sent: int | None = None
    stt_ms: int | None = None
    llm_ms: int | None = None
    tts_ms: int | None = None
    send_ms: int | None = None


class TurnOut(BaseModel):
    seq: int
    role: TurnRole
    text: str
    start_ms: int
    end_ms: int
    duration_ms: int
    interrupted: bool
    latency: LatencyOut | None
    response_latency_ms: int | None = Field(
        description="endpoint → first_audio_sent, when both were measured."
    )


class CallStatsOut(BaseModel):
    turns: int
    caller_turns: int
    agent_turns: int
    barge_ins: int = Field(description="Agent turns the caller interrupted.")
    measured_responses: int
    response_latency_p50_ms: int | None
    response_latency_p95_ms: int | None
    response_latency_max_ms: int | None


class CallDetail(CallOut):
    summary: str | None
    extracted: dict[str, Any] | None
    turns: list[TurnOut]
    stats: CallStatsOut


class TranscriptFormat(StrEnum):
    text = "text"
    json = "json"


class TranscriptLine(BaseModel):
    seq: int
    speaker: str
    role: TurnRole
    text: str
    start_ms: int
    end_ms: int
    interrupted: bool


class TranscriptOut(BaseModel):
    call_id: int
    lines: list[TranscriptLine]
