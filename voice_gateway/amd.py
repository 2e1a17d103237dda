"""What a live outbound call does with Twilio's answering-machine verdict (pure).

Twilio's AnsweredBy: `human`, `unknown`, `machine_start` (detection "Enable": a machine,
said as soon as known), `machine_end_beep` / `machine_end_silence` / `machine_end_other`
(detection "DetectMessageEnd": the greeting is over, a message can be left now), `fax`.
A person or an unsure verdict changes nothing: the agent is already talking. A machine
is hung up on, or left a message once its greeting ends, as AMD_MODE says; a fax line
is hung up on whatever the mode.
"""

from __future__ import annotations

from enum import StrEnum

import phonenumbers

from voice_gateway.config import AmdMode


class AnsweredBy(StrEnum):
    human = "human"
    unknown = "unknown"
    machine_start = "machine_start"
    machine_end_beep = "machine_end_beep"
    machine_end_silence = "machine_end_silence"
    machine_end_other = "machine_end_other"
    fax = "fax"

    @property
    def message_can_start(self) -> bool:
        """The machine's greeting has ended (beep, silence or otherwise)."""
        return self.value.startswith("machine_end_")


class AmdAction(StrEnum):
    nothing = "nothing"
    hang_up = "hang_up"
    leave_voicemail = "leave_voicemail"


def parse_answered_by(raw: str | None) -> AnsweredBy | None:
    """Twilio's value, or None for one we do not know (kept, not acted on)."""
    try:
        return AnsweredBy((raw or "").strip().lower())
    except ValueError:
        return None


def decide(answered_by: AnsweredBy, mode: AmdMode) -> AmdAction:
    if answered_by is AnsweredBy.fax:
        return AmdAction.hang_up
    if answered_by in (AnsweredBy.human, AnsweredBy.unknown) or mode is AmdMode.off:
        return AmdAction.nothing
    if mode is AmdMode.hangup:
        return AmdAction.hang_up
    # voicemail: wait for the end of the greeting; "machine_start" only says it is coming.
    return AmdAction.leave_voicemail if answered_by.message_can_start else AmdAction.nothing


def spoken_number(e164: str) -> str:
    """A callback number as a voice should read it: the national format, digits grouped
    ("+34911234567" → "911 23 45 67"); a number the library cannot parse as given."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL))
