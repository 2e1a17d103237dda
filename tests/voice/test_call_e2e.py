"""Whole calls through the real gateway on PostgreSQL, phoned by the call simulator.

Each test starts the real ASGI app on loopback (`tests/voice/gateway_server.py`) with
the fake providers chosen through the environment, dials it as Twilio would (signed
webhook, signed upgrade, real-time media, marks echoed as audio plays) and then reads
what the CRM stored: the call, its turns on the call clock with their latency
breakdown, the recording, the lead's timeline. The caller's words reach the fake STT
through its script, so the stored caller turns are exactly what the script says.

Times asserted are orderings and bounds derived from the configuration, never speed:
the barge-in bound is the configured minimum speech plus a margin for the frames in
flight, which only a server that waited for something else (a transcript, the end of
the sentence) would miss.
"""

from __future__ import annotations

import asyncio
import itertools
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from crm.calls.metrics import MARKS
from crm.calls.models import Call, CallStatus, CallTurn, TurnRole
from crm.db import session_scope
from crm.leads.models import ActivityKind, Lead, LeadActivity
from tests.voice.gateway_server import (
    Gateway,
    Line,
    TwilioStream,
    ended_call,
    make_line,
    running_gateway,
    turns_of,
)
from voice_gateway.events import EndReason
from voice_gateway.providers.base import ProviderError
from voice_gateway.providers.stt_fake import FakeSpeechToText
from voice_gateway.providers.telephony_fake import Operation
from voice_gateway.providers.tts_fake import FakeTts
from voice_gateway.simulator import CallResult, EndedBy, parse_script, run_call

pytestmark = pytest.mark.postgres

BARGE_IN_MIN_MS = 120
#: Frames in flight both ways, the VAD's debounce and a loaded CI machine's scheduling.
BARGE_IN_MARGIN_MS = 250

FIRST_QUESTION = "¿Qué tipo de inmueble busca y en qué zona?"
SECOND_QUESTION = "¿Cuál es su presupuesto aproximado?"


@pytest.fixture
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """The gateway, with the test's own settings when it parametrizes this fixture."""
    env: dict[str, str] = {"BARGE_IN_MIN_MS": str(BARGE_IN_MIN_MS)}
    env.update(getattr(request, "param", {}))
    with running_gateway(tmp_path, **env) as running:
        yield running


def settings(**env: str) -> pytest.MarkDecorator:
    """Run the test's gateway with these environment variables."""
    shown = ",".join(f"{name}={value}" for name, value in env.items())
    return pytest.mark.parametrize("gateway", [env], indirect=True, ids=[shown])


def hears(gateway: Gateway, *texts: str) -> None:
    """The fake STT transcribes the caller's utterances as `texts`, in order."""
    gateway.runtime.stt = FakeSpeechToText(script=texts)


async def call(gateway: Gateway, line: Line, script: str, **options: object) -> CallResult:
    echo: list[str] = []
    result = await run_call(
        gateway.base_url,
        parse_script(script),
        options=gateway.options(
            to_number=line.number, from_number=line.caller, echo=echo.append, **options
        ),
    )
    print("\n".join(echo))  # the conversation, shown when a test fails
    return result


def lead_of(call: Call) -> Lead:
    with session_scope() as db:
        lead = db.get(Lead, call.lead_id)
        assert lead is not None
        db.expunge(lead)
        return lead


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


# -- a whole call ----------------------------------------------------------------------


async def test_a_whole_call_is_stored_turn_by_turn(gateway: Gateway) -> None:
    line = make_line()
    said = ("Busco un piso.", "Unos trescientos mil.")
    hears(gateway, *said)
    result = await call(
        gateway,
        line,
        f"wait 200\nsay {said[0]}\nwait 200\nsay {said[1]}\nwait 200\nhang-up",
    )
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.caller
    assert len(result.response_ms) == 2
    assert result.turns_unanswered == 0

    stored = await ended_call(result.call_sid)
    assert stored.status is CallStatus.completed
    assert stored.end_reason == EndReason.caller_hung_up.value
    assert stored.ended_at is not None

    turns = turns_of(stored.id)
    assert [t.role for t in turns] == [TurnRole.agent, TurnRole.caller] * 2 + [TurnRole.agent]
    assert [t.seq for t in turns] == [1, 2, 3, 4, 5]
    greeting, first, reply1, second, reply2 = turns
    assert line.legal_name in greeting.text
    assert (first.text, second.text) == said
    assert (reply1.text, reply2.text) == (FIRST_QUESTION, SECOND_QUESTION)
    assert not any(t.interrupted for t in turns)
    # One clock: every turn starts after the one before it ended, within the call.
    call_ms = result.frames_sent * 20
    for before, after in itertools.pairwise(turns):
        assert 0 <= before.start_ms <= before.end_ms <= after.start_ms <= after.end_ms
    assert turns[-1].end_ms <= call_ms + 500

    # The latency breakdown: every moment, in the order it happens, starting where the
    # caller stopped speaking.
    assert greeting.latency is None
    for caller_turn, reply in ((first, reply1), (second, reply2)):
        latency = reply.latency
        assert latency is not None
        assert set(latency) == set(MARKS)
        moments = [latency[m] for m in MARKS]
        assert moments == sorted(moments), latency
        assert latency["speech_end"] == caller_turn.end_ms
        assert latency["first_audio_sent"] == reply.start_ms

    # The recording: stereo, caller left and agent right, as long as the call, aligned.
    assert stored.recording_path is not None
    path = Path(stored.recording_path)
    assert path.is_relative_to(gateway.recordings)
    with wave.open(str(path)) as recording:
        assert recording.getnchannels() == 2
        assert recording.getframerate() == 8000
        assert recording.getsampwidth() == 2
        frames = recording.getnframes()
        audio = np.frombuffer(recording.readframes(frames), dtype="<i2").reshape(-1, 2)
    length_ms = frames / 8
    assert call_ms - 40 <= length_ms <= call_ms + 1000

    def span(turn: CallTurn, channel: int) -> np.ndarray:
        return audio[turn.start_ms * 8 : turn.end_ms * 8, channel]

    for turn in (greeting, reply1, reply2):
        assert rms(span(turn, 1)) > 1000, f"no agent audio where {turn.text!r} was said"
        assert rms(span(turn, 0)) < 100, "the caller's track holds the agent"
    for turn in (first, second):
        assert rms(span(turn, 0)) > 300, f"no caller audio where {turn.text!r} was said"
        assert rms(span(turn, 1)) < 100, "the agent's track holds audio over the caller"

    # The lead's timeline has the call.
    with session_scope() as db:
        activity = db.scalars(
            select(LeadActivity).where(
                LeadActivity.lead_id == stored.lead_id, LeadActivity.kind == ActivityKind.call
            )
        ).one()
        assert activity.data is not None
        assert activity.data["call_id"] == stored.id
        assert activity.data["end_reason"] == EndReason.caller_hung_up.value
        assert activity.data["answered"] is True


# -- barge-in --------------------------------------------------------------------------


@settings(FAKE_TTS_MS_PER_CHAR="15")
async def test_barge_in_clears_at_once_and_stores_what_was_heard(gateway: Gateway) -> None:
    line = make_line()
    said = ("Busco un piso.", "Perdone, ¿tiene garaje?")
    hears(gateway, *said)
    result = await call(
        gateway, line, f"wait 200\nsay {said[0]}\nbarge-in 150 {said[1]}\nwait 200\nhang-up"
    )
    assert result.ok, result.errors
    assert result.clears == 1
    assert len(result.barge_in_ms) == 1
    assert result.barge_in_ms[0] <= BARGE_IN_MIN_MS + BARGE_IN_MARGIN_MS
    assert result.barge_ins_unanswered == 0
    assert result.agent_dropped_ms > 0  # audio Twilio had buffered never played

    stored = await ended_call(result.call_sid)
    turns = turns_of(stored.id)
    roles = [t.role for t in turns]
    assert roles == [
        TurnRole.agent,
        TurnRole.caller,
        TurnRole.agent,
        TurnRole.caller,
        TurnRole.agent,
    ]
    _, first, cut, second, reply = turns
    assert cut.interrupted
    assert cut.text
    assert cut.text != FIRST_QUESTION
    assert FIRST_QUESTION.startswith(cut.text), cut.text
    # Cut where the caller barged in: it ends after the caller started, well before
    # the sentence would have.
    assert first.end_ms < cut.start_ms < second.start_ms < cut.end_ms
    assert second.text == said[1]
    assert not reply.interrupted
    assert reply.text == SECOND_QUESTION
    assert reply.latency is not None
    assert reply.latency["speech_end"] == second.end_ms


@settings(FAKE_TTS_MS_PER_CHAR="15")
async def test_a_backchannel_resumes_the_reply_instead_of_starting_a_new_one(
    gateway: Gateway,
) -> None:
    line = make_line()
    hears(gateway, "Busco un piso.", "sí")
    result = await call(
        gateway, line, "wait 200\nsay Busco un piso.\nbackchannel 150 sí\nwait 200\nhang-up"
    )
    assert result.ok, result.errors
    assert result.turns_unanswered == 0

    stored = await ended_call(result.call_sid)
    turns = turns_of(stored.id)
    # No caller turn for the "sí", no reply to it: the one reply, said to the end.
    assert [t.role for t in turns] == [TurnRole.agent, TurnRole.caller, TurnRole.agent]
    reply = turns[-1]
    assert reply.text == FIRST_QUESTION
    assert not reply.interrupted


# -- DTMF ------------------------------------------------------------------------------


async def test_the_opt_out_key_puts_the_lead_on_do_not_call_and_hangs_up(
    gateway: Gateway,
) -> None:
    line = make_line()
    result = await call(gateway, line, "wait 200\ndtmf 9\npause 8000")
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.server
    assert result.dtmf_sent == ("9",)
    assert result.marks_cleared == 0  # the goodbye played to its end

    stored = await ended_call(result.call_sid)
    assert stored.end_reason == EndReason.opted_out.value
    lead = lead_of(stored)
    assert lead.do_not_call
    assert lead.dnc_reason is not None
    assert "9" in lead.dnc_reason
    goodbye = turns_of(stored.id)[-1]
    assert goodbye.role is TurnRole.agent
    assert goodbye.text == "Entendido, no le volveremos a llamar. Adiós."
    assert [h.call_sid for h in gateway.telephony.hang_ups] == [result.call_sid]


TRANSFER_TO = "+34910999888"


@settings(TRANSFER_NUMBER=TRANSFER_TO)
async def test_the_human_key_transfers_the_call(gateway: Gateway) -> None:
    line = make_line()
    result = await call(gateway, line, "wait 200\ndtmf 0\npause 8000")
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.server

    stored = await ended_call(result.call_sid)
    assert stored.end_reason == EndReason.transferred.value
    [transfer] = gateway.telephony.transfers
    assert (transfer.call_sid, transfer.to_number) == (result.call_sid, TRANSFER_TO)
    assert "<Dial" in transfer.twiml
    assert TRANSFER_TO in transfer.twiml
    assert gateway.telephony.hang_ups == []  # a hang-up now would cut off the human
    assert turns_of(stored.id)[-1].text == "Le paso con un asesor. Un momento, por favor."


@settings(TRANSFER_NUMBER=TRANSFER_TO)
async def test_a_failed_transfer_is_said_and_the_call_goes_on(gateway: Gateway) -> None:
    line = make_line()
    hears(gateway, "Hola.")
    gateway.telephony.fail_next(Operation.transfer, ProviderError("twilio", "HTTP 500"))
    result = await call(gateway, line, "wait 200\ndtmf 0\npause 1200\nsay Hola.\nwait 200\nhang-up")
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.caller

    stored = await ended_call(result.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value
    assert gateway.telephony.transfers == []
    turns = turns_of(stored.id)
    assert [t.text for t in turns[1:4]] == [
        "Le paso con un asesor. Un momento, por favor.",
        "Lo siento, ahora no puedo pasarle con un asesor. Le llamará en cuanto pueda. "
        "¿Puedo ayudarle en algo más?",
        "Hola.",
    ]
    assert [t.role for t in turns] == [TurnRole.agent] * 3 + [TurnRole.caller, TurnRole.agent]
    assert turns[-1].text.endswith("?")  # the agent answers the caller as usual


# -- the socket ends badly -------------------------------------------------------------


async def test_a_socket_dropped_mid_call_keeps_what_was_said(gateway: Gateway) -> None:
    line = make_line()
    hears(gateway, "Busco un piso.")
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)  # the greeting
    spoke_at = stream.now_ms()
    await stream.say(600)
    await stream.agent_reply(spoke_at)
    await stream.drop()

    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.disconnected.value
    turns = turns_of(stored.id)
    assert [t.role for t in turns] == [TurnRole.agent, TurnRole.caller, TurnRole.agent]
    assert turns[1].text == "Busco un piso."
    assert turns[2].text == FIRST_QUESTION
    assert gateway.telephony.hang_ups == []  # Twilio's side is gone; nothing to hang up


@settings(MEDIA_TIMEOUT_MS="1000")
async def test_a_socket_gone_silent_times_out_and_hangs_up(gateway: Gateway) -> None:
    line = make_line()
    stream = await TwilioStream.dial(gateway, line)
    await stream.agent_reply(0)
    stream.go_silent()
    closed = await stream.wait_closed()
    assert (closed.code, closed.reason) == (1000, EndReason.inbound_timeout.value)

    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.inbound_timeout.value
    assert [h.call_sid for h in gateway.telephony.hang_ups] == [stream.call_sid]
    assert turns_of(stored.id)[0].role is TurnRole.agent


# -- provider failures -----------------------------------------------------------------


async def test_tts_failing_ends_that_call_cleanly_and_no_other(gateway: Gateway) -> None:
    good, bad = make_line(), make_line(legal_name="Inmobiliaria Averiada")
    hears(gateway, "Busco un piso.")
    gateway.runtime.tts = FakeTts(ms_per_char=5, fail_on=lambda text: "Averiada" in text)
    script = "wait 200\nsay Busco un piso.\nwait 200\nhang-up"
    good_result, bad_result = await asyncio.gather(
        call(gateway, good, script), call(gateway, bad, script)
    )
    assert good_result.ok, good_result.errors
    assert good_result.ended_by is EndedBy.caller
    assert len(good_result.response_ms) == 1
    assert bad_result.ended_by is EndedBy.server
    assert bad_result.close_code == 1000

    good_call, bad_call = (
        await ended_call(good_result.call_sid),
        await ended_call(bad_result.call_sid),
    )
    assert bad_call.end_reason == EndReason.tts_error.value
    assert good_call.end_reason == EndReason.caller_hung_up.value
    assert len(turns_of(good_call.id)) == 3
    hung_up = [h.call_sid for h in gateway.telephony.hang_ups]
    assert hung_up == [bad_result.call_sid]


async def test_stt_failing_says_goodbye_and_ends_the_call(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    line = make_line()
    gateway.runtime.stt = FakeSpeechToText(script=["Hola."], fail_after=1)
    result = await call(gateway, line, "wait 200\nsay Hola.\nwait 200\nsay Hola.\npause 8000")
    assert result.ended_by is EndedBy.server
    assert result.close_code == 1000

    stored = await ended_call(result.call_sid)
    assert stored.end_reason == EndReason.stt_error.value
    turns = turns_of(stored.id)
    # The second utterance was never recognised: no caller turn for it, a goodbye instead.
    roles = [TurnRole.agent, TurnRole.caller, TurnRole.agent, TurnRole.agent]
    assert [t.role for t in turns] == roles
    assert turns[-1].text == (
        "Disculpe, tenemos un problema técnico. Le llamaremos más tarde. Adiós."
    )
    assert [h.call_sid for h in gateway.telephony.hang_ups] == [result.call_sid]
    assert any("speech recognition failed" in r.getMessage() for r in caplog.records)


@settings(FAKE_LLM_LATENCY_MS="1500", LLM_FIRST_TOKEN_TIMEOUT_S="0.2")
async def test_a_slow_agent_costs_a_fallback_phrase_and_the_call_goes_on(
    gateway: Gateway,
) -> None:
    line = make_line()
    hears(gateway, "Hola.", "Busco un piso.")
    result = await call(
        gateway, line, "wait 200\nsay Hola.\nwait 200\nsay Busco un piso.\nwait 200\nhang-up"
    )
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.caller
    assert len(result.response_ms) == 2

    stored = await ended_call(result.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value
    turns = turns_of(stored.id)
    assert [t.role for t in turns] == [TurnRole.agent, TurnRole.caller] * 2 + [TurnRole.agent]
    fallback = "Disculpe, tuve un problema. ¿Me lo puede repetir?"
    assert turns[2].text == fallback
    assert turns[2].latency is not None
    assert "llm_first_token" not in turns[2].latency
    assert turns[3].text == "Busco un piso."


# -- admission -------------------------------------------------------------------------


@settings(MAX_CONCURRENT_CALLS="1")
async def test_over_the_call_limit_the_webhook_answers_busy_and_opens_no_stream(
    gateway: Gateway,
) -> None:
    first, second = make_line(), make_line()
    hears(gateway, "Busco un piso.")
    stream = await TwilioStream.dial(gateway, first)
    await stream.agent_reply(0)

    refused = await call(gateway, second, "wait 200\nhang-up")
    [error] = refused.errors
    assert error.kind.value == "refused"
    assert refused.close_code is None
    assert refused.frames_sent == 0
    with session_scope() as db:
        row = db.scalars(select(Call).where(Call.twilio_call_sid == refused.call_sid)).one()
        assert row.end_reason == "over_capacity"

    # The call in progress never noticed.
    spoke_at = stream.now_ms()
    await stream.say(600)
    await stream.agent_reply(spoke_at)
    await stream.stop()
    stored = await ended_call(stream.call_sid)
    assert stored.end_reason == EndReason.caller_hung_up.value
    assert [t.role for t in turns_of(stored.id)] == [
        TurnRole.agent,
        TurnRole.caller,
        TurnRole.agent,
    ]
