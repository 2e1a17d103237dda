"""Calls and their turns, written by the voice gateway and read by brokers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.db import Base, BigId, IdMixin, TimestampMixin
from crm.enums import Language, str_enum
from crm.leads.models import Direction


class CallStatus(StrEnum):
    queued = "queued"
    ringing = "ringing"
    in_progress = "in_progress"
    completed = "completed"
    busy = "busy"
    no_answer = "no_answer"
    failed = "failed"
    canceled = "canceled"


class TurnRole(StrEnum):
    caller = "caller"
    agent = "agent"
    system = "system"


class Call(IdMixin, TimestampMixin, Base):
    __tablename__ = "call"
    __table_args__ = (
        Index("ix_call_broker_started", "broker_id", "started_at"),
        Index("ix_call_broker_lead", "broker_id", "lead_id"),
        # A broker's retry of "call this lead" (same Idempotency-Key) finds the first call.
        UniqueConstraint("broker_id", "idempotency_key"),
    )

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    lead_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("lead.id", ondelete="SET NULL"))
    direction: Mapped[Direction] = mapped_column(str_enum(Direction))
    status: Mapped[CallStatus] = mapped_column(str_enum(CallStatus), default=CallStatus.queued)
    twilio_call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    from_number: Mapped[str] = mapped_column(String(20))
    to_number: Mapped[str] = mapped_column(String(20))
    language: Mapped[Language | None] = mapped_column(str_enum(Language, 8))
    started_at: Mapped[datetime | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str | None] = mapped_column(Text)
    extracted: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    recording_path: Mapped[str | None] = mapped_column(String(500))
    #: Twilio's answering-machine verdict on an outbound call (human, machine_end_beep...).
    answered_by: Mapped[str | None] = mapped_column(String(32))
    #: The Idempotency-Key the broker placed this outbound call with, if any.
    idempotency_key: Mapped[str | None] = mapped_column(String(100))

    turns: Mapped[list[CallTurn]] = relationship(
        back_populates="call", cascade="all, delete-orphan", order_by="CallTurn.seq"
    )


class CallTurn(IdMixin, Base):
    """One utterance of the caller or the agent, on the call's own clock (ms from start)."""

    __tablename__ = "call_turn"
    __table_args__ = (UniqueConstraint("call_id", "seq"),)

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    call_id: Mapped[int] = mapped_column(BigId, ForeignKey("call.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    role: Mapped[TurnRole] = mapped_column(str_enum(TurnRole, 16))
    text: Mapped[str] = mapped_column(Text)
    start_ms: Mapped[int] = mapped_column()
    end_ms: Mapped[int] = mapped_column()
    interrupted: Mapped[bool] = mapped_column(default=False)
    #: Milliseconds on the call clock: endpoint, stt_final, llm_first_token,
    #: tts_first_byte, first_audio_sent (agent turns); absent where not measured.
    latency: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    call: Mapped[Call] = relationship(back_populates="turns")


class CallStatusEvent(IdMixin, Base):
    """One Twilio status callback, kept once: Twilio may deliver one twice, in any order.

    The unique (call_sid, sequence_number) is the idempotency key; `applied` says
    whether the report moved the call (a late or repeated status does not).
    """

    __tablename__ = "call_status_event"
    __table_args__ = (UniqueConstraint("call_sid", "sequence_number"),)

    broker_id: Mapped[int] = mapped_column(BigId, ForeignKey("broker.id", ondelete="CASCADE"))
    call_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("call.id", ondelete="CASCADE"), index=True
    )
    call_sid: Mapped[str] = mapped_column(String(64))
    sequence_number: Mapped[int] = mapped_column()
    #: Twilio's CallStatus as sent ("in-progress", "no-answer", ...).
    status: Mapped[str] = mapped_column(String(32))
    applied: Mapped[bool] = mapped_column(default=False)
    #: Twilio's Timestamp of the event; `received_at` is when it reached us.
    occurred_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column()
