"""`CallSession` on its own: a scripted caller in memory, on a virtual clock.

No network, no database, no threads: the session's socket is `FakeTwilio` (a list of
what the session sent, and the inbound messages it generates on the stream's 20 ms
beat: the caller's speech and silence, DTMF, `stop`, and mark echoes when the agent's
audio has played, through the simulator's `PlaybackBuffer`), the store keeps turns in a
list, and the providers are the fakes. The event loop runs on virtual time: when
nothing is ready it jumps straight to the next timer, so a two-minute call with its
reprompts and timeouts takes milliseconds, and every timing below is exact and
repeatable rather than measured.
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from agent.scripted import ScriptedAgent
from voice_gateway.audio.vad import make_vad
from voice_gateway.events import EndReason, TurnRecord
from voice_gateway.playback import truncate_to_heard
from voice_gateway.providers.base import ProviderError
from voice_gateway.providers.stt_fake import FakeSpeechToText, FakeSttStream
from voice_gateway.providers.telephony_fake import FakeTelephony, Operation
from voice_gateway.providers.tts_fake import FakeTts, speech_frames
from voice_gateway.session import PHRASES, CallContext, CallSession, SessionConfig
from voice_gateway.simulator.playback import (
    MarkEchoed,
    PlaybackBuffer,
    PlaybackEvent,
    PlaybackStarted,
)
from voice_gateway.turns import TurnConfig
from voice_gateway.twilio import protocol as tw

T = TypeVar("T")

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "2" * 32
BUSINESS = "Casa Prueba"
MS_PER_CHAR = 20
SILENCE = b"\xff" * 160


# -- virtual time ----------------------------------------------------------------------


class _VirtualSelector:
    """The loop's selector, except that waiting `timeout` seconds takes no time: the
    clock jumps forward by it. Only sound with no real I/O pending, which is the case
    here: the session's peers are all in memory."""

    def __init__(self, real: selectors.BaseSelector, clock: list[float]) -> None:
        self._real = real
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout > 0:
            self._clock[0] += timeout
        return self._real.select(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def run_virtual(main: Callable[[], Awaitable[T]], *, limit_s: float = 900.0) -> T:
    """Run `main()` on a fresh event loop whose clock is virtual (starts at 1000 s)."""
    loop = asyncio.new_event_loop()
    clock = [1000.0]
    loop.time = lambda: clock[0]  # type: ignore[method-assign]
    loop._selector = _VirtualSelector(loop._selector, clock)  # type: ignore[attr-defined]

    async def bounded() -> T:
        return await asyncio.wait_for(main(), limit_s)

    try:
        return loop.run_until_complete(bounded())
    finally:
        loop.close()


def test_virtual_time_jumps_to_the_next_timer() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(600)
        return before, loop.time()

    before, after = run_virtual(main)
    assert after - before == pytest.approx(600)


# -- the caller and Twilio, in memory --------------------------------------------------


@dataclass
class Caller:
    """What the caller does, on the stream's clock (ms from its start)."""

    #: (start, duration) of each utterance; the fake STT's script says what it was.
    speech: list[tuple[int, int]] = field(default_factory=list)
    dtmf: list[tuple[int, str]] = field(default_factory=list)
    #: Hang up (`stop`) at this time.
    stop_at: int | None = None
    #: From this time on Twilio sends nothing at all (the socket stays open).
    silent_from: int | None = None
    #: The socket closes at this time without `stop`.
    drop_at: int | None = None
    #: (after, delay, duration): when agent audio starts after `after`, speak over it
    #: `delay` ms later for `duration` ms (once).
    barge_in: tuple[int, int, int] | None = None
    #: Stop anyway after this long (a test that forgot to end its call fails, not hangs).
    limit_ms: int = 600_000

    def speaking(self, at: int) -> bool:
        return any(start <= at < start + length for start, length in self.speech)


class FakeTwilio:
    """Twilio's half of the socket for one session (see the module docstring)."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        #: Everything the session sent, as text, and parsed with the stream time (ms).
        self.sent: list[str] = []
        self.outbound: list[tuple[int, tw.OutboundMessage]] = []
        self.playback = PlaybackBuffer()
        self._echoes: list[str] = []
        self._seq = 1
        #: When the caller's barge-in started (stream ms).
        self.barged_in_at: list[int] = []

    def now_ms(self) -> int:
        return round((self.loop.time() - self.t0) * 1000)

    async def send(self, text: str) -> None:
        self.sent.append(text)
        message = tw.parse_outbound(text)
        assert message.stream_sid == STREAM_SID
        now = self.now_ms()
        self.outbound.append((now, message))
        if type(message) is tw.OutboundMedia:
            self._note(self.playback.media(now, message.payload))
        elif type(message) is tw.OutboundMark:
            self._note(self.playback.mark(now, message.name))
        else:
            self._note(self.playback.clear(now))

    def _note(self, events: list[PlaybackEvent]) -> None:
        self._echoes.extend(e.name for e in events if type(e) is MarkEchoed)
        barge_in = self.caller.barge_in
        if barge_in is None or self.barged_in_at:
            return
        after, delay, duration = barge_in
        for event in events:
            if type(event) is PlaybackStarted and event.at_ms >= after:
                # On the next frame boundary, as a caller's audio arrives in frames.
                at = -(-round(event.at_ms + delay) // 20) * 20
                self.caller.speech.append((at, duration))
                self.barged_in_at.append(at)
                return

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def messages(self) -> AsyncIterator[tw.InboundMessage]:
        """The inbound stream after `start`, one 20 ms beat at a time."""
        caller = self.caller
        frames = speech_frames()
        at = 0
        while at <= caller.limit_ms:
            # The frame for [at, at + 20) leaves once its audio has been captured.
            await asyncio.sleep(max(0.0, self.t0 + (at + 20) / 1000 - self.loop.time()))
            self._note(self.playback.advance(self.now_ms()))
            if caller.drop_at is not None and at >= caller.drop_at:
                return
            if caller.stop_at is not None and at >= caller.stop_at:
                yield tw.Stop(self._next(), STREAM_SID, "AC" + "0" * 32, CALL_SID)
                return
            if caller.silent_from is not None and at >= caller.silent_from:
                at += 20
                continue
            for name in self._echoes:
                yield tw.Mark(self._next(), STREAM_SID, name)
            self._echoes.clear()
            for when, digit in caller.dtmf:
                if at <= when < at + 20:
                    yield tw.Dtmf(self._next(), STREAM_SID, digit)
            payload = frames[(at // 20) % len(frames)] if caller.speaking(at) else SILENCE
            yield tw.Media(self._next(), STREAM_SID, at // 20 + 1, at, payload)
            at += 20
        raise AssertionError("the call outlived the test's limit")

    def of(self, kind: type[Any]) -> list[tuple[int, Any]]:
        return [(at, m) for at, m in self.outbound if type(m) is kind]

    def audio_span(self) -> tuple[int, int]:
        media = self.of(tw.OutboundMedia)
        return media[0][0], media[-1][0]


@dataclass
class Saved:
    turn: TurnRecord
    at_ms: int


class MemoryStore:
    """The CRM as a list; `fail` makes chosen writes raise (once each)."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self.turns: list[Saved] = []
        self.do_not_call: list[str] = []
        self.finished: list[EndReason] = []
        self.failures: list[Callable[[TurnRecord], bool]] = []
        self.failed: list[TurnRecord] = []

    async def save_turn(self, turn: TurnRecord) -> None:
        await asyncio.sleep(0.005)  # a database round trip
        for index, fails in enumerate(self.failures):
            if fails(turn):
                del self.failures[index]
                self.failed.append(turn)
                raise OSError("the database went away")
        self.turns.append(Saved(turn, self._clock()))

    async def mark_do_not_call(self, reason: str) -> None:
        self.do_not_call.append(reason)

    async def finish(self, reason: EndReason) -> None:
        self.finished.append(reason)

    @property
    def records(self) -> list[TurnRecord]:
        return [s.turn for s in self.turns]


class MemoryRecorder:
    def __init__(self) -> None:
        self.caller_ms = 0
        self.agent_ms = 0
        self.clears: list[int] = []
        self.closed_at: list[int | None] = []
        self.fail_close = False

    def add_caller(self, pcm: bytes, timestamp_ms: int) -> None:
        self.caller_ms += len(pcm) // 16

    def add_agent(self, pcm: bytes, sent_at_ms: int) -> None:
        self.agent_ms += len(pcm) // 16

    def clear_agent(self, at_ms: int) -> None:
        self.clears.append(at_ms)

    def close(self, end_ms: int | None = None) -> object:
        self.closed_at.append(end_ms)
        if self.fail_close:
            raise OSError("disk full")
        return None


@dataclass
class Run:
    reason: EndReason
    twilio: FakeTwilio
    store: MemoryStore
    telephony: FakeTelephony
    tts: FakeTts
    recorder: MemoryRecorder
    session: CallSession
    stt_closed: bool

    @property
    def turns(self) -> list[TurnRecord]:
        return self.store.records


class _ClosingStt:
    """The fake STT, remembering whether the session closed its stream."""

    def __init__(self, inner: FakeSpeechToText, *, fail_close: bool, fail_open: bool) -> None:
        self.name = "fake"
        self._inner = inner
        self.fail_close = fail_close
        self.fail_open = fail_open
        self.closed = False

    async def open_stream(self, *, language: str) -> FakeSttStream:
        if self.fail_open:
            raise ProviderError("fake-stt", "could not open the stream")
        stream = await self._inner.open_stream(language=language)
        original = stream.close

        async def close() -> None:
            self.closed = True
            await original()
            if self.fail_close:
                raise ProviderError("fake-stt", "close failed")

        stream.close = close  # type: ignore[method-assign]
        return stream


def run_call(
    caller: Caller,
    *,
    heard: list[str] | None = None,
    turn: TurnConfig | None = None,
    prepare: Callable[[Run], None] | None = None,
    stt_fail_close: bool = False,
    stt_fail_open: bool = False,
    **config: Any,
) -> Run:
    """One whole call through a `CallSession`, in virtual time."""

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        twilio = FakeTwilio(caller)
        store = MemoryStore(twilio.now_ms)
        telephony = FakeTelephony(clock=loop.time)
        tts = FakeTts(ms_per_char=MS_PER_CHAR)
        recorder = MemoryRecorder()
        stt = _ClosingStt(
            FakeSpeechToText(script=heard or ["Hola."], clock=loop.time),
            fail_close=stt_fail_close,
            fail_open=stt_fail_open,
        )
        session = CallSession(
            context=CallContext(
                call_id=1,
                call_sid=CALL_SID,
                stream_sid=STREAM_SID,
                broker_id=1,
                lead_id=1,
                language="es",
                transfer_number="+34910999888",
            ),
            send=twilio.send,
            agent=ScriptedAgent(business_name=BUSINESS),
            stt=stt,
            tts=tts,
            telephony=telephony,
            vad=make_vad("webrtc"),
            store=store,
            recorder=recorder,
            config=SessionConfig(turn=turn or TurnConfig(endpoint_silence_ms=400), **config),
            clock=loop.time,
        )
        run = Run(EndReason.internal_error, twilio, store, telephony, tts, recorder, session, False)
        if prepare is not None:
            prepare(run)
        run.reason = await session.run(twilio.messages())
        run.stt_closed = stt.closed
        return run

    return run_virtual(main)


def greeting_text() -> str:
    return f"Hola, le llama el asistente automático de {BUSINESS}. ¿En qué le puedo ayudar?"


def greeting_ms() -> int:
    """How long the fake TTS speaks the greeting (its two sentences, whole frames)."""
    first, second = greeting_text().split(". ", 1)
    return sum(-(-len(s) * MS_PER_CHAR // 20) * 20 for s in (first + ".", second))


# -- turns are stored as they end, in order --------------------------------------------


def test_turns_are_stored_in_order_each_as_it_ends() -> None:
    start = greeting_ms() + 500
    caller = Caller(speech=[(start, 800), (start + 4000, 600)], stop_at=start + 8000)
    run = run_call(caller, heard=["Busco un piso.", "En el centro."])
    assert run.reason is EndReason.caller_hung_up
    assert run.store.finished == [EndReason.caller_hung_up]
    turns = run.turns
    assert [(t.role, t.text) for t in turns] == [
        ("agent", greeting_text()),
        ("caller", "Busco un piso."),
        ("agent", "¿Qué tipo de inmueble busca y en qué zona?"),
        ("caller", "En el centro."),
        ("agent", "¿Cuál es su presupuesto aproximado?"),
    ]
    for before, after in itertools.pairwise(turns):
        assert before.start_ms <= before.end_ms <= after.start_ms <= after.end_ms
    # The caller turns are where the caller spoke, on the media clock: from the first
    # speech frame to the last one the VAD heard (WebRTC's hangover adds a few frames).
    assert turns[1].start_ms == start
    assert start + 800 <= turns[1].end_ms <= start + 800 + 160
    # Each turn reached the store soon after it ended, long before the call did.
    assert caller.stop_at is not None
    for saved in run.store.turns:
        assert saved.turn.end_ms <= saved.at_ms < caller.stop_at
    # The latency breakdown is ordered, from the caller's end of speech to first audio.
    for caller_turn, reply in ((turns[1], turns[2]), (turns[3], turns[4])):
        assert reply.latency is not None
        moments = list(reply.latency.values())
        assert reply.latency["speech_end"] == caller_turn.end_ms
        assert sorted(moments) == [
            reply.latency[k]
            for k in (
                "speech_end",
                "endpoint",
                "stt_final",
                "llm_first_token",
                "tts_first_byte",
                "first_audio_sent",
            )
        ]
        assert reply.latency["endpoint"] == caller_turn.end_ms + 400
    assert run.telephony.hang_ups == []  # Twilio ended the call; nothing to hang up
    assert run.stt_closed


# -- one teardown path -----------------------------------------------------------------


def test_a_turn_whose_first_store_fails_is_stored_on_the_retry() -> None:
    start = greeting_ms() + 500
    caller = Caller(speech=[(start, 800)], stop_at=start + 4000)

    def prepare(run: Run) -> None:
        run.store.failures.append(lambda turn: turn.role == "caller")

    run = run_call(caller, heard=["Busco un piso."], prepare=prepare)
    assert run.reason is EndReason.caller_hung_up
    assert [t.text for t in run.store.failed] == ["Busco un piso."]
    assert [t.role for t in run.turns] == ["agent", "caller", "agent"]


def test_every_teardown_step_runs_even_when_others_fail(caplog: pytest.LogCaptureFixture) -> None:
    """Silence ends the call mid-reply (marks stop coming back, so the reply is cut):
    the cut reply's store fails once, the STT close, the hang-up and the recording all
    fail, and still each step is tried, the turn is stored on the retry and the call is
    finished in the CRM with its reason."""
    start = greeting_ms() + 500
    caller = Caller(speech=[(start, 800)], silent_from=start + 1300)

    def prepare(run: Run) -> None:
        run.store.failures.append(lambda turn: turn.interrupted)
        run.telephony.fail_next(Operation.hang_up, ProviderError("twilio", "HTTP 503"))
        run.recorder.fail_close = True

    run = run_call(
        caller,
        heard=["Busco un piso."],
        prepare=prepare,
        stt_fail_close=True,
        inbound_timeout_ms=2000,
    )
    assert run.reason is EndReason.inbound_timeout
    assert run.stt_closed
    assert [t.interrupted for t in run.store.failed] == [True]
    roles = [(t.role, t.interrupted) for t in run.turns]
    assert roles == [("agent", False), ("caller", False), ("agent", True)]
    assert run.telephony.hang_ups == []  # attempted, and it failed (injected)
    [closed_at] = run.recorder.closed_at  # attempted once, and it failed (injected)
    assert closed_at is not None
    assert closed_at >= run.turns[-1].end_ms
    assert run.store.finished == [EndReason.inbound_timeout]
    failed_steps = {
        record.args[1]
        for record in caplog.records
        if record.msg == "call %s: teardown step %r failed" and isinstance(record.args, tuple)
    }
    assert failed_steps == {"close stt", "hang up", "close the recording"}


def test_a_recognizer_that_cannot_open_costs_a_spoken_goodbye_not_silence() -> None:
    """The stream is up and the voice works: the caller hears why the call ends, then
    the call is hung up, with the reason kept; nothing waits on the missing recognizer."""
    caller = Caller(speech=[(500, 800)], stop_at=30_000)
    run = run_call(caller, stt_fail_open=True)
    assert run.reason is EndReason.stt_error
    assert [(t.role, t.text, t.interrupted) for t in run.turns] == [
        ("agent", PHRASES["es"]["technical_goodbye"], False)
    ]
    assert run.store.finished == [EndReason.stt_error]
    assert not run.stt_closed  # there was no stream to close
    # The goodbye was voiced whole, never cleared, and had played before the hang-up.
    assert run.twilio.of(tw.OutboundMedia)
    assert run.twilio.of(tw.Clear) == []
    [hang_up] = run.telephony.hang_ups
    assert hang_up.call_sid == CALL_SID
    assert (hang_up.at - run.twilio.t0) * 1000 >= run.turns[-1].end_ms


def test_a_dropped_socket_ends_the_call_without_a_hang_up() -> None:
    start = greeting_ms() + 500
    caller = Caller(speech=[(start, 800)], drop_at=start + 3000)
    run = run_call(caller, heard=["Busco un piso."])
    assert run.reason is EndReason.disconnected
    assert [t.role for t in run.turns] == ["agent", "caller", "agent"]
    assert run.telephony.hang_ups == []
    assert run.store.finished == [EndReason.disconnected]


# -- the greeting is not interrupted ---------------------------------------------------


def test_a_caller_talking_over_the_greeting_is_answered_after_it() -> None:
    caller = Caller(speech=[(300, 800)], stop_at=greeting_ms() + 4000)
    run = run_call(caller, heard=["Oiga, ¿quién es?"])
    assert run.twilio.of(tw.Clear) == []
    greeting, said, reply = run.turns
    assert (greeting.text, greeting.interrupted) == (greeting_text(), False)
    assert greeting.end_ms - greeting.start_ms == greeting_ms()
    assert said.text == "Oiga, ¿quién es?"
    assert said.start_ms < greeting.end_ms  # spoken over it...
    assert reply.start_ms >= greeting.end_ms  # ...and answered once it was over
    assert reply.role == "agent"
    assert not reply.interrupted


# -- barge-in, on an exact clock -------------------------------------------------------


def test_a_barge_in_clears_within_the_minimum_speech_and_stores_what_was_heard() -> None:
    start = greeting_ms() + 500
    turn = TurnConfig(endpoint_silence_ms=400, min_barge_in_ms=120)
    # 300 ms into the reply to the first turn, the caller talks over it for 900 ms.
    caller = Caller(speech=[(start, 800)], barge_in=(start, 300, 900), stop_at=start + 8000)
    run = run_call(caller, heard=["Busco un piso.", "Perdone, una pregunta."], turn=turn)
    [barge_at] = run.twilio.barged_in_at
    [(cleared_at, _)] = run.twilio.of(tw.Clear)
    # `clear` leaves once the caller has said the minimum (frames are 20 ms).
    assert barge_at + 120 <= cleared_at <= barge_at + 120 + 40
    _, _, cut, question, answer = run.turns
    full = "¿Qué tipo de inmueble busca y en qué zona?"
    assert cut.interrupted
    assert cut.text == truncate_to_heard(full, cleared_at - cut.start_ms, len(full) * MS_PER_CHAR)
    assert cut.text  # the caller heard its first words...
    assert cut.text != full  # ...and not the rest
    assert abs(cut.end_ms - cleared_at) <= 1  # the same moment, within float rounding
    assert question.text == "Perdone, una pregunta."
    assert abs(question.start_ms - barge_at) <= 20
    assert answer.text == "¿Cuál es su presupuesto aproximado?"
    [recording_cut] = run.recorder.clears  # the agent's track is cut there too
    assert abs(recording_cut - cleared_at) <= 1


# -- silence: reprompts, then goodbye --------------------------------------------------


def test_silence_gets_reprompts_then_a_goodbye_and_a_hang_up() -> None:
    turn = TurnConfig(endpoint_silence_ms=400, reprompt_after_ms=3000)
    run = run_call(Caller(), turn=turn, max_reprompts=2)
    assert run.reason is EndReason.no_response
    reprompt, goodbye = PHRASES["es"]["reprompt"], PHRASES["es"]["no_response"]
    texts = [t.text for t in run.turns]
    assert texts == [greeting_text(), reprompt, reprompt, goodbye]
    # Each reprompt comes after the configured silence since the agent last spoke.
    for before, after in itertools.pairwise(run.turns):
        assert after.start_ms - before.end_ms >= 3000
        assert after.start_ms - before.end_ms <= 3000 + 200
    # The goodbye played to its end before the REST hang-up.
    [hang_up] = run.telephony.hang_ups
    goodbye_end = run.turns[-1].end_ms
    assert (hang_up.at - run.twilio.t0) * 1000 >= goodbye_end
    assert run.store.finished == [EndReason.no_response]


def test_answering_a_reprompt_resets_the_count() -> None:
    turn = TurnConfig(endpoint_silence_ms=400, reprompt_after_ms=3000)
    first_reprompt = greeting_ms() + 3000
    caller = Caller(speech=[(first_reprompt + 1500, 600)], stop_at=first_reprompt + 9000)
    run = run_call(caller, heard=["Sí, sigo aquí."], turn=turn, max_reprompts=1)
    assert run.reason is EndReason.caller_hung_up
    texts = [t.text for t in run.turns]
    assert texts[:3] == [greeting_text(), PHRASES["es"]["reprompt"], "Sí, sigo aquí."]
    assert PHRASES["es"]["no_response"] not in texts


# -- the longest call ------------------------------------------------------------------


def test_the_maximum_call_length_says_goodbye_then_hangs_up() -> None:
    turn = TurnConfig(endpoint_silence_ms=400, max_call_ms=6000, reprompt_after_ms=60_000)
    start = greeting_ms() + 500
    # The caller is still talking when time runs out.
    caller = Caller(speech=[(start, 700), (5500, 3000)])
    run = run_call(caller, heard=["Busco un piso.", "Y otra cosa más."], turn=turn)
    assert run.reason is EndReason.max_duration
    goodbye = run.turns[-1]
    assert goodbye.text == PHRASES["es"]["max_duration"]
    assert goodbye.start_ms >= 6000
    assert not goodbye.interrupted
    [hang_up] = run.telephony.hang_ups
    assert (hang_up.at - run.twilio.t0) * 1000 >= goodbye.end_ms
    assert run.twilio.of(tw.Clear) == []  # the goodbye is not cut by the caller's speech
    assert run.store.finished == [EndReason.max_duration]


# -- DTMF ------------------------------------------------------------------------------


def test_the_opt_out_key_cuts_the_agent_says_goodbye_and_hangs_up() -> None:
    caller = Caller(dtmf=[(600, "9")])
    run = run_call(caller)
    assert run.reason is EndReason.opted_out
    assert run.store.do_not_call == ["keypress 9"]
    greeting, goodbye = run.turns
    assert greeting.interrupted  # the greeting was cut for it
    assert goodbye.text == PHRASES["es"]["opt_out"]
    assert len(run.twilio.of(tw.Clear)) == 1
    [hang_up] = run.telephony.hang_ups
    assert (hang_up.at - run.twilio.t0) * 1000 >= goodbye.end_ms
