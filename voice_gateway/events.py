"""The call's small vocabulary: why a call ended, and what a finished turn records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EndReason(StrEnum):
    caller_hung_up = "caller_hung_up"  # Twilio sent `stop`
    disconnected = "disconnected"  # the socket closed without `stop`
    agent_hung_up = "agent_hung_up"  # goodbye played, then a REST hang-up
    transferred = "transferred"
    opted_out = "opted_out"  # do-not-call honoured, then hang-up
    no_response = "no_response"  # reprompts went unanswered
    max_duration = "max_duration"
    answering_machine = "answering_machine"  # AMD: a machine (or fax) answered; hung up
    voicemail_left = "voicemail_left"  # AMD: a message left after the beep, then hang-up
    inbound_timeout = "inbound_timeout"  # the socket went silent
    stt_error = "stt_error"
    tts_error = "tts_error"
    protocol_error = "protocol_error"
    internal_error = "internal_error"

    @property
    def caller_gone(self) -> bool:
        """True when the call is already over on Twilio's side: no REST hang-up needed."""
        return self in {EndReason.caller_hung_up, EndReason.transferred}


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """A finished turn as the CRM stores it (times on the call clock, ms)."""

    role: str  # "caller" | "agent"
    text: str
    start_ms: int
    end_ms: int
    interrupted: bool = False
    latency: dict[str, int] | None = None
