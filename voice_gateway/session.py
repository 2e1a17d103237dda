"""One `CallSession` per media WebSocket: it owns the call's tasks and its one teardown.

Data lane: caller audio → VAD + turn policy (voice_gateway.turns) → STT; the caller's
finished turn → agent → sentences → TTS → paced audio out with a mark after each
sentence. Control lane: a barge-in, DTMF, `stop` or a timer is handled the moment the
message or tick that causes it is processed, ahead of any queued data — a barge-in
sends `clear` at once, stops speech synthesis, drops queued audio and remembers what the
caller heard.

A reply is two tasks: *generate* (agent → sentences, kept in the reply) and *voice*
(sentences → TTS → audio). A barge-in cancels only the voice: the agent keeps writing
into the held reply, so if the turn policy decides the caller only said "ajá"
(`ResumeAgent`), the reply resumes from the first word they did not hear; if the caller
really took the floor (`AgentInterrupted`), the generation is cancelled too and the
agent turn is stored as interrupted, truncated to what was heard.

Every way a call ends (stop, disconnect, goodbye, transfer, error, timeout) raises
`SessionEnded` inside the call's TaskGroup, which cancels all of its tasks together;
`run` then tears down once: close STT, store what is pending, hang up where needed,
close the recording, finish the call in the CRM; each step runs even if one before it
failed. A provider failure costs the call a phrase, never the process: a slow agent a
fallback, a failed transfer an apology, a broken recognizer a goodbye; a CRM write that
fails is retried once and logged, never allowed to end the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.base import Action, ActionKind, Agent, AgentOutput, Conversation, TextDelta, Turn
from voice_gateway.amd import AmdAction, decide, parse_answered_by, spoken_number
from voice_gateway.audio import mulaw
from voice_gateway.audio.vad import Vad
from voice_gateway.call_control import CallControl, ControlKind
from voice_gateway.config import AmdMode
from voice_gateway.events import EndReason, TurnRecord
from voice_gateway.playback import Heard, Playback, Segment, truncate_to_heard
from voice_gateway.providers.base import (
    FRAME_MS,
    AudioFrame,
    ProviderError,
    SpeechToText,
    SttStream,
    Telephony,
    TextToSpeech,
)
from voice_gateway.sentences import SentenceSplitter
from voice_gateway.turns import (
    AgentInterrupted,
    BargeIn,
    EndOfTurn,
    MaxCallLength,
    Reprompt,
    ResumeAgent,
    SpeechStarted,
    TurnConfig,
    TurnError,
    TurnEvent,
    TurnPolicy,
    TurnState,
)
from voice_gateway.twilio import protocol as tw

log = logging.getLogger(__name__)

FRAME_BYTES = 8 * FRAME_MS  # μ-law bytes in one 20 ms frame
#: Pause before a failed turn is stored again (a database failover, a lock timeout).
STORE_RETRY_S = 0.25

#: What the session itself says (the agent says everything else).
PHRASES = {
    "es": {
        "reprompt": "¿Sigue ahí?",
        "no_response": "Parece que no le escucho. Le llamaremos en otro momento. Adiós.",
        "max_duration": "Tenemos que terminar la llamada. Un asesor le contactará. Adiós.",
        "fallback": "Disculpe, tuve un problema. ¿Me lo puede repetir?",
        "opt_out": "Entendido, no le volveremos a llamar. Adiós.",
        "transfer": "Le paso con un asesor. Un momento, por favor.",
        "technical_goodbye": "Disculpe, tenemos un problema técnico. Le llamaremos "
        "más tarde. Adiós.",
        "transfer_failed": "Lo siento, ahora no puedo pasarle con un asesor. Le llamará en "
        "cuanto pueda. ¿Puedo ayudarle en algo más?",
        "voicemail": "Hola, le llamamos de {business} por su consulta sobre una propiedad. "
        "Por favor, devuélvanos la llamada al {number}. Gracias.",
    },
    "en": {
        "reprompt": "Are you still there?",
        "no_response": "I can't hear you. We'll call you another time. Goodbye.",
        "max_duration": "We need to end the call now. An agent will contact you. Goodbye.",
        "fallback": "Sorry, I had a problem. Could you say that again?",
        "opt_out": "Understood, we won't call you again. Goodbye.",
        "transfer": "I'll put you through to an agent. One moment, please.",
        "technical_goodbye": "Sorry, we are having a technical problem. We will call you "
        "back later. Goodbye.",
        "transfer_failed": "Sorry, I can't put you through to an agent right now. One will "
        "call you back soon. Can I help you with anything else?",
        "voicemail": "Hello, this is {business} calling about your enquiry on a property. "
        "Please call us back at {number}. Thank you.",
    },
}


class SessionEnded(Exception):
    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class CallStore(Protocol):
    """Where the session writes what happened (the CRM, through a thread)."""

    async def save_turn(self, turn: TurnRecord) -> None: ...

    async def mark_do_not_call(self, reason: str) -> None: ...

    async def finish(self, reason: EndReason) -> None: ...


class Recorder(Protocol):
    def add_caller(self, pcm: bytes, timestamp_ms: int) -> None: ...

    def add_agent(self, pcm: bytes, sent_at_ms: int) -> None: ...

    def clear_agent(self, at_ms: int) -> None: ...

    def close(self, end_ms: int | None = None) -> object: ...


class Metrics(Protocol):
    def observe_turn(self, latency: dict[str, int]) -> None: ...

    def barge_in(self, latency_ms: float) -> None: ...

    def false_interruption(self) -> None: ...

    def error(self, kind: str) -> None: ...


@dataclass(frozen=True)
class CallContext:
    call_id: int
    call_sid: str
    stream_sid: str
    broker_id: int
    lead_id: int | None
    language: str
    transfer_number: str | None = None
    #: Who the voicemail says is calling, and the number it asks to call back.
    business_name: str = ""
    callback_number: str | None = None
    #: We dialled the lead (the greeting says why we call and how to stop the calls).
    outbound: bool = False


@dataclass(frozen=True)
class SessionConfig:
    turn: TurnConfig = field(default_factory=TurnConfig)
    #: Audio kept buffered at Twilio ahead of playback: enough to play smoothly, little
    #: enough that `clear` silences the agent almost at once.
    max_ahead_ms: int = 240
    #: Size of each outbound media message.
    chunk_ms: int = 80
    inbound_timeout_ms: int = 10_000
    max_reprompts: int = 2
    agent_first_token_timeout_ms: int = 8_000
    #: How long a reply's last mark may take to come back before we stop waiting.
    playback_timeout_ms: int = 30_000
    dtmf_opt_out: str | None = "9"
    dtmf_human: str | None = "0"
    tick_ms: int = 50
    amd_mode: AmdMode = AmdMode.voicemail


@dataclass
class _Reply:
    kind: str  # "agent" | "greeting" | "phrase"
    interruptible: bool
    latency: dict[str, int] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    end_reason: EndReason | None = None
    sentences: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    segments: list[Segment] = field(default_factory=list)
    #: What the caller heard of each segment cut by a barge-in (seq → words, ms).
    cut: dict[int, str] = field(default_factory=dict)
    cut_ms: dict[int, int] = field(default_factory=dict)
    #: Audio the TTS has produced for each segment (seq → ms): the length its words
    #: are spread over when working out how many of them were heard.
    synth_ms: dict[int, int] = field(default_factory=dict)
    #: The voice has said every sentence the agent wrote (playback may still go on).
    voiced_all: bool = False
    #: Words of a cut sentence still to say if the reply resumes.
    resume_from: str | None = None
    generating: asyncio.Task[None] | None = None
    voicing: asyncio.Task[None] | None = None
    held: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def heard_text(self) -> str:
        words = []
        for segment in self.segments:
            if segment.seq in self.cut:
                words.append(self.cut[segment.seq])
            elif segment.start_ms is not None:
                words.append(segment.text)
        return " ".join(w for w in words if w).strip()

    def audio_span(self) -> tuple[int, int] | None:
        """Call-clock start and end of what the caller heard of this reply."""
        spans = [
            (s.start_ms, s.start_ms + self.cut_ms.get(s.seq, s.sent_ms))
            for s in self.segments
            if s.start_ms is not None
        ]
        if not spans:
            return None
        return min(a for a, _ in spans), max(b for _, b in spans)

    def playback_done(self) -> bool:
        return self.voiced_all and all(
            s.complete and s.played for s in self.segments if s.seq not in self.cut
        )


class CallSession:
    def __init__(
        self,
        *,
        context: CallContext,
        send: Callable[[str], Awaitable[None]],
        agent: Agent,
        stt: SpeechToText,
        tts: TextToSpeech,
        telephony: Telephony,
        vad: Vad,
        store: CallStore,
        recorder: Recorder | None = None,
        metrics: Metrics | None = None,
        config: SessionConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        control: CallControl | None = None,
    ) -> None:
        self.context = context
        self.config = config or SessionConfig()
        self._send_text = send
        self._agent = agent
        self._stt_provider = stt
        self._tts = tts
        self._telephony = telephony
        self._vad = vad
        self._store = store
        self._recorder = recorder
        self._metrics = metrics
        self._clock = clock
        self._control = control
        self._machine_handled = False
        self._t0 = clock()
        language = "en" if context.language.startswith("en") else "es"
        self._language = language
        self._policy = TurnPolicy(self.config.turn, language=language)
        self._playback = Playback()
        self._conversation = Conversation(
            conversation_id=f"call-{context.call_id}",
            broker_id=context.broker_id,
            lead_id=context.lead_id,
            language=language,
            direction="outbound" if context.outbound else "inbound",
            opt_out_key=self.config.dtmf_opt_out,
        )
        self._stt: SttStream | None = None
        self._audio_out: asyncio.Queue[tuple[_Reply, Segment, bytes | None]] = asyncio.Queue()
        #: An item taken from `_audio_out` while joining audio, to be sent next.
        self._audio_next: tuple[_Reply, Segment, bytes | None] | None = None
        self._persist: asyncio.Queue[TurnRecord] = asyncio.Queue()
        self._persisting: asyncio.Future[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._reply: _Reply | None = None
        #: A caller turn that ended while an uninterruptible phrase played: stored and
        #: answered once the phrase is over (turns are stored in the order they began).
        self._pending_caller: TurnRecord | None = None
        self._pending_caller_text: str | None = None
        self._mark_seq = 0
        self._last_inbound_ms = 0
        self._last_frame_ms: int | None = None
        self._turn_onset_ms: int | None = None
        self._turn_latency: dict[str, int] = {}
        self._last_final_ms: int | None = None
        self._end_reason: EndReason | None = None
        #: Recognition failed: no more audio goes to it; the call is saying goodbye.
        self._stt_broken = False
        #: When the call ended on the call clock (the recording stops there).
        self._end_ms: int | None = None

    # -- the call clock ----------------------------------------------------------------

    def now_ms(self) -> int:
        return int((self._clock() - self._t0) * 1000)

    def _align_clock(self, audio_end_ms: int) -> None:
        """Keep one call clock: Twilio's media timestamps count from the stream's start,
        which is before this session existed, so our clock is moved back to match the
        earliest-arriving frame (never forward: time must not run backwards). A frame
        arrives once its audio has been captured, so it is matched by where it ends."""
        origin = self._clock() - audio_end_ms / 1000
        if origin < self._t0:
            self._t0 = origin

    @property
    def end_reason(self) -> EndReason | None:
        return self._end_reason

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, inbound: AsyncIterator[tw.InboundMessage]) -> EndReason:
        """Drive the call until it ends and return why; a call's failure never escapes."""
        reason = EndReason.internal_error
        try:
            stt_error = await self._open_stt()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._receive(inbound), name="receive")
                if self._stt is not None:
                    tg.create_task(self._stt_results(), name="stt-results")
                tg.create_task(self._sender(), name="sender")
                tg.create_task(self._persister(), name="persist")
                tg.create_task(self._ticker(), name="ticker")
                if self._control is not None:
                    tg.create_task(self._listen_control(), name="control")
                if stt_error is None:
                    self._start_reply(self._greeting_source(), kind="greeting", interruptible=False)
                else:
                    await self._stt_failed(stt_error)
        except* SessionEnded as group:
            reason = _first_reason(group)
        except* ProviderError as group:
            log.warning("call %s: provider failed: %s", self.context.call_id, group.exceptions[0])
            self._count_error("provider")
            reason = EndReason.stt_error
        except* Exception:
            log.exception("call %s: session failed", self.context.call_id)
            self._count_error("internal")
            reason = EndReason.internal_error
        self._end_reason = reason
        self._end_ms = self.now_ms()
        await self._teardown(reason)
        return reason

    async def _open_stt(self) -> ProviderError | None:
        """Open the recognizer; a failure is returned, not raised, so the caller still
        hears why the call ends (the stream is up and the voice still works)."""
        try:
            self._stt = await self._stt_provider.open_stream(language=self._language)
        except ProviderError as exc:
            return exc
        return None

    async def _teardown(self, reason: EndReason) -> None:
        """The one way out: every step runs even if an earlier one failed."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("close stt", self._close_stt),
            ("store the cut reply", self._store_cut_reply),
            ("store turns", self._drain_persist),
            ("hang up", lambda: self._hang_up_if_needed(reason)),
            # Before the call is finished: once the CRM says "ended", its WAV is whole.
            ("close the recording", self._close_recording),
            ("finish call", lambda: self._store.finish(reason)),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=10)
            except Exception:
                log.exception("call %s: teardown step %r failed", self.context.call_id, name)
        log.info("call %s ended: %s", self.context.call_id, reason.value)

    async def _close_recording(self) -> None:
        if self._recorder is not None:
            self._recorder.close(self._end_ms)

    async def _close_stt(self) -> None:
        if self._stt is not None:
            await self._stt.close()

    async def _hang_up_if_needed(self, reason: EndReason) -> None:
        """Hang up through REST unless the call is already over on Twilio's side."""
        if reason.caller_gone or reason is EndReason.disconnected:
            return
        await self._telephony.hang_up(self.context.call_sid)

    # -- inbound: the socket -------------------------------------------------------------

    async def _receive(self, inbound: AsyncIterator[tw.InboundMessage]) -> None:
        async for message in inbound:
            self._last_inbound_ms = self.now_ms()
            if isinstance(message, tw.Media):
                await self._on_media(message)
            elif isinstance(message, tw.Mark):
                self._on_mark(message.name)
            elif isinstance(message, tw.Dtmf):
                await self._on_dtmf(message.digit)
            elif isinstance(message, tw.Stop):
                raise SessionEnded(EndReason.caller_hung_up)
        raise SessionEnded(EndReason.disconnected)

    async def _on_media(self, message: tw.Media) -> None:
        payload = message.payload
        self._align_clock(message.timestamp_ms + len(payload) // 8)
        pcm = mulaw.decode(payload)
        if self._recorder is not None:
            self._recorder.add_caller(pcm, message.timestamp_ms)
        if not self._stt_broken:
            await self._to_stt(AudioFrame(payload, pcm, message.timestamp_ms))
        if len(payload) == FRAME_BYTES:
            await self._on_frame(pcm, message.timestamp_ms)
            return
        # Twilio sends 20 ms frames but does not promise it: the VAD and the policy see
        # a payload of another size as the whole 20 ms frames in it (a tail shorter than
        # a frame is left out; the next payload carries its own timestamp).
        step = FRAME_BYTES * 2
        for offset in range(0, len(pcm) - step + 1, step):
            await self._on_frame(pcm[offset : offset + step], message.timestamp_ms + offset // 16)

    async def _on_frame(self, pcm: bytes, at: int) -> None:
        if self._last_frame_ms is not None and at <= self._last_frame_ms:
            return  # a repeated or reordered frame: its audio adds nothing to turn-taking
        self._last_frame_ms = at
        events = self._policy.on_frame(self._vad.is_speech(pcm), at)
        if events:
            await self._handle(events)

    def _on_mark(self, name: str) -> None:
        segment = self._playback.mark_echoed(name)
        reply = self._reply
        if segment is not None and reply is not None and segment in reply.segments:
            self._maybe_finished(reply)

    async def _on_dtmf(self, digit: str) -> None:
        log.info("call %s: keypress %s", self.context.call_id, digit)
        if digit == self.config.dtmf_opt_out:
            await self._take_floor()
            await self._mark_do_not_call(f"keypress {digit}")
            self._start_reply(
                self._phrase_source("opt_out"),
                kind="phrase",
                interruptible=False,
                then=Action(ActionKind.hang_up),
                end_reason=EndReason.opted_out,
            )
        elif digit == self.config.dtmf_human and self.context.transfer_number:
            await self._take_floor()
            self._start_reply(
                self._phrase_source("transfer"),
                kind="phrase",
                interruptible=False,
                then=Action(ActionKind.transfer, self.context.transfer_number),
            )

    # -- control from outside the stream: answering-machine detection ---------------------

    async def _listen_control(self) -> None:
        """Hints about this call from whichever gateway process received them (the AMD
        webhook). A broken channel costs the hints, never the call."""
        assert self._control is not None
        try:
            async with contextlib.aclosing(self._control.subscribe(self.context.call_id)) as events:
                async for event in events:
                    if event.kind is ControlKind.answered_by:
                        await self._on_answered_by(event.value)
        except (asyncio.CancelledError, SessionEnded):
            raise
        except Exception as exc:
            log.warning("call %s: control channel failed: %s", self.context.call_id, exc)
            self._count_error("control")

    async def _on_answered_by(self, value: str) -> None:
        """A person (or an unsure verdict): carry on. A machine: hang up, or once its
        greeting is over leave the voicemail, said whole, then hang up (AMD_MODE)."""
        answered_by = parse_answered_by(value)
        if answered_by is None or self._machine_handled:
            return
        action = decide(answered_by, self.config.amd_mode)
        log.info("call %s: answered by %s: %s", self.context.call_id, value, action.value)
        if action is AmdAction.nothing:
            return
        self._machine_handled = True
        await self._take_floor()
        number = self.context.callback_number
        if action is AmdAction.hang_up or not number:
            raise SessionEnded(EndReason.answering_machine)
        text = self._phrase("voicemail").format(
            business=self.context.business_name, number=spoken_number(number)
        )
        self._start_reply(
            _text_source(text),
            kind="phrase",
            interruptible=False,
            then=Action(ActionKind.hang_up),
            end_reason=EndReason.voicemail_left,
        )

    # -- turn events -----------------------------------------------------------------------

    async def _handle(self, events: list[TurnEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._turn_onset_ms = event.onset_ms
            elif isinstance(event, BargeIn):
                await self._barge_in(event)
            elif isinstance(event, ResumeAgent):
                self._resume()
            elif isinstance(event, AgentInterrupted):
                self._drop_held_reply()
            elif isinstance(event, EndOfTurn):
                self._end_of_turn(event)
            elif isinstance(event, Reprompt):
                self._reprompt(event.count)
            elif isinstance(event, MaxCallLength):
                await self._take_floor()
                self._start_reply(
                    self._phrase_source("max_duration"),
                    kind="phrase",
                    interruptible=False,
                    then=Action(ActionKind.hang_up),
                    end_reason=EndReason.max_duration,
                )

    async def _barge_in(self, event: BargeIn) -> None:
        reply = self._reply
        if reply is None or not reply.interruptible or reply.held:
            return
        await self._cut(reply)
        if self._metrics is not None:
            self._metrics.barge_in(max(0, self.now_ms() - event.onset_ms))
        log.info("call %s: barge-in, clear sent", self.context.call_id)

    async def _cut(self, reply: _Reply) -> None:
        """Silence the reply now: `clear`, stop its voice, keep what was heard."""
        now = self.now_ms()
        reply.held = True
        if reply.voicing is not None:
            reply.voicing.cancel()
        self._drop_queued_audio()
        await self._send(tw.serialize(tw.Clear(stream_sid=self.context.stream_sid)))
        if self._recorder is not None:
            self._recorder.clear_agent(now)
        heard = self._playback.clear(reply.segments, now)
        reply.resume_from = None
        unheard_rest: list[str] = []
        for h in heard:
            self._note_cut(reply, h, unheard_rest)
        reply.resume_from = " ".join(unheard_rest) or None

    def _note_cut(self, reply: _Reply, heard: Heard, unheard_rest: list[str]) -> None:
        segment = heard.segment
        if segment.played:
            return
        # Spread the words over all of the sentence's audio, not only what was sent
        # before the cut (the sender keeps just a little ahead of playback).
        total = max(reply.synth_ms.get(segment.seq, 0), segment.sent_ms)
        said = truncate_to_heard(segment.text, heard.heard_ms, total)
        reply.cut[segment.seq] = said
        reply.cut_ms[segment.seq] = heard.heard_ms
        words = segment.text.split()
        rest = words[len(said.split()) :] if said else words
        if rest:
            unheard_rest.append(" ".join(rest))

    def _resume(self) -> None:
        """A backchannel or noise cut the agent off: say the rest, not a new reply."""
        reply = self._reply
        if self._metrics is not None:
            self._metrics.false_interruption()
        if reply is None or not reply.held:
            return
        reply.held = False
        reply.voiced_all = False
        reply.finished.clear()
        assert self._tg is not None
        reply.voicing = self._tg.create_task(self._voice(reply), name=f"voice-{reply.kind}")

    def _drop_held_reply(self) -> None:
        """The caller really took the floor: the held reply is over, as far as it was heard."""
        reply = self._reply
        if reply is None or not reply.held:
            return
        if reply.generating is not None:
            reply.generating.cancel()
        self._reply = None
        self._store_reply(reply, interrupted=True)

    def _end_of_turn(self, event: EndOfTurn) -> None:
        text = event.text.strip()
        record = TurnRecord("caller", text, event.onset_ms, event.speech_end_ms)
        self._turn_onset_ms = None
        # The latency clock, in the order the CRM reads it: the VAD's endpoint (the end
        # of speech plus the endpoint silence, or the moment this process acted on the
        # turn if that came first), then the STT final as it was in hand for the turn: a
        # final that arrived before the endpoint cost the caller nothing, so it counts
        # at the endpoint, and what it did cost shows as the gap after it.
        acted = max(event.speech_end_ms, min(event.at_ms, self.now_ms()))
        endpoint = min(event.speech_end_ms + self.config.turn.endpoint_silence_ms, acted)
        self._turn_latency = {"speech_end": event.speech_end_ms, "endpoint": endpoint}
        if self._last_final_ms is not None and self._last_final_ms >= event.onset_ms:
            self._turn_latency["stt_final"] = min(max(self._last_final_ms, endpoint), acted)
        if self._reply is not None:
            if self._reply.held:
                self._drop_held_reply()
            else:
                # An uninterruptible phrase (greeting, goodbye) is playing: it began first,
                # so it is stored first, and the caller is answered after it.
                self._pending_caller = record
                self._pending_caller_text = text
                return
        self._record_caller(record)
        self._reply_to(text)

    def _record_caller(self, record: TurnRecord) -> None:
        self._enqueue_turn(record)
        self._conversation.turns.append(Turn("caller", record.text))

    def _flush_pending_caller(self) -> None:
        """Store the caller turn said over the phrase that has just been stored."""
        if self._pending_caller is not None:
            record, self._pending_caller = self._pending_caller, None
            self._record_caller(record)

    def _reply_to(self, text: str) -> None:
        self._start_reply(
            self._agent.respond(self._conversation, text),
            kind="agent",
            interruptible=True,
            latency=dict(self._turn_latency),
        )

    def _reprompt(self, count: int) -> None:
        if self._reply is not None:
            return
        if count > self.config.max_reprompts:
            self._start_reply(
                self._phrase_source("no_response"),
                kind="phrase",
                interruptible=False,
                then=Action(ActionKind.hang_up),
                end_reason=EndReason.no_response,
            )
        else:
            self._start_reply(self._phrase_source("reprompt"), kind="phrase", interruptible=True)

    async def _take_floor(self) -> None:
        """Stop the agent so a control phrase (opt-out, transfer, time up) is said now."""
        reply = self._reply
        if reply is None:
            return
        if not reply.held:
            await self._cut(reply)
        if reply.generating is not None:
            reply.generating.cancel()
        self._reply = None
        self._store_reply(reply, interrupted=True)
        self._flush_pending_caller()
        self._pending_caller_text = None  # the control phrase answers instead

    # -- replies ---------------------------------------------------------------------------

    def _start_reply(
        self,
        source: AsyncIterator[AgentOutput],
        *,
        kind: str,
        interruptible: bool,
        latency: dict[str, int] | None = None,
        then: Action | None = None,
        end_reason: EndReason | None = None,
    ) -> None:
        assert self._tg is not None
        reply = _Reply(kind=kind, interruptible=interruptible, latency=latency or {})
        if then is not None:
            reply.actions.append(then)
        reply.end_reason = end_reason
        self._reply = reply
        reply.generating = self._tg.create_task(self._generate(reply, source), name="generate")
        reply.voicing = self._tg.create_task(self._voice(reply), name=f"voice-{kind}")

    async def _generate(self, reply: _Reply, source: AsyncIterator[AgentOutput]) -> None:
        splitter = SentenceSplitter()
        iterator = source.__aiter__()
        timeout: float | None = self.config.agent_first_token_timeout_ms / 1000
        try:
            while True:
                try:
                    item = await asyncio.wait_for(iterator.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    log.warning("call %s: the agent did not answer in time", self.context.call_id)
                    self._count_error("agent_timeout")
                    reply.sentences.put_nowait(self._phrase("fallback"))
                    break
                if isinstance(item, TextDelta):
                    if timeout is not None:
                        timeout = None
                        reply.latency.setdefault("llm_first_token", self.now_ms())
                    for sentence in splitter.push(item.text):
                        reply.sentences.put_nowait(sentence)
                else:
                    reply.actions.append(item)
            for sentence in splitter.flush():
                reply.sentences.put_nowait(sentence)
        except (asyncio.CancelledError, SessionEnded):
            raise
        except Exception:
            log.exception("call %s: the agent failed", self.context.call_id)
            self._count_error("agent")
            reply.sentences.put_nowait(self._phrase("fallback"))
        finally:
            reply.sentences.put_nowait(None)

    async def _voice(self, reply: _Reply) -> None:
        """Speak the reply's sentences as they come, wait for playback, then act."""
        try:
            if reply.resume_from:
                first, reply.resume_from = reply.resume_from, None
                await self._speak(reply, first)
            while (sentence := await reply.sentences.get()) is not None:
                await self._speak(reply, sentence)
            reply.sentences.put_nowait(None)  # keep the end visible to a resumed voice
            reply.voiced_all = True
            self._maybe_finished(reply)
            await asyncio.wait_for(
                reply.finished.wait(), timeout=self.config.playback_timeout_ms / 1000
            )
        except ProviderError as exc:
            log.warning("call %s: speech synthesis failed: %s", self.context.call_id, exc)
            self._count_error("tts")
            raise SessionEnded(EndReason.tts_error) from exc
        except TimeoutError:
            log.warning("call %s: a reply's playback was never confirmed", self.context.call_id)
        if self._reply is reply:
            self._reply = None
            self._agent_speaking(False)
        self._store_reply(reply, interrupted=False)
        self._flush_pending_caller()
        await self._run_actions(reply)
        if self._reply is None and self._pending_caller_text:
            text, self._pending_caller_text = self._pending_caller_text, None
            self._reply_to(text)

    def _maybe_finished(self, reply: _Reply) -> None:
        if reply.playback_done():
            reply.finished.set()

    async def _speak(self, reply: _Reply, sentence: str) -> None:
        self._mark_seq += 1
        segment = Segment(seq=self._mark_seq, text=sentence, mark=f"seg-{self._mark_seq}")
        reply.segments.append(segment)
        async for chunk in self._tts.synthesize(sentence, language=self._language):
            reply.latency.setdefault("tts_first_byte", self.now_ms())
            reply.synth_ms[segment.seq] = reply.synth_ms.get(segment.seq, 0) + len(chunk) // 8
            self._audio_out.put_nowait((reply, segment, chunk))
        self._audio_out.put_nowait((reply, segment, None))

    def _store_reply(self, reply: _Reply, *, interrupted: bool) -> None:
        text = reply.heard_text()
        span = reply.audio_span()
        if not text or span is None:
            return
        start, end = span
        latency = _latency_breakdown(reply.latency) if reply.kind == "agent" else None
        self._enqueue_turn(TurnRecord("agent", text, start, end, interrupted, latency))
        self._conversation.turns.append(Turn("agent", text, interrupted=interrupted))
        if latency and self._metrics is not None:
            self._metrics.observe_turn(latency)

    async def _run_actions(self, reply: _Reply) -> None:
        for action in reply.actions:
            if action.kind is ActionKind.do_not_call:
                await self._mark_do_not_call(action.argument or "asked during the call")
        for action in reply.actions:
            if action.kind is ActionKind.transfer and action.argument:
                try:
                    await self._telephony.transfer(self.context.call_sid, action.argument)
                except ProviderError as exc:
                    # The caller is still with us: tell them, and the call goes on.
                    log.warning("call %s: transfer failed: %s", self.context.call_id, exc)
                    self._count_error("transfer")
                    if self._reply is None:
                        self._start_reply(
                            self._phrase_source("transfer_failed"),
                            kind="phrase",
                            interruptible=True,
                        )
                    return
                raise SessionEnded(EndReason.transferred)
            if action.kind is ActionKind.hang_up:
                dnc = any(a.kind is ActionKind.do_not_call for a in reply.actions)
                default = EndReason.opted_out if dnc else EndReason.agent_hung_up
                raise SessionEnded(reply.end_reason or default)

    async def _mark_do_not_call(self, reason: str) -> None:
        """Record the opt-out; if the CRM fails, the call still ends as asked (and the
        failure is logged loudly: the lead must be put on the list by hand)."""
        try:
            await self._store.mark_do_not_call(reason)
        except Exception:
            log.exception(
                "call %s: could not record do-not-call (%s); do it by hand",
                self.context.call_id,
                reason,
            )
            self._count_error("store")

    async def _store_cut_reply(self) -> None:
        """At teardown, a reply the end of the call cut off is still a (cut) turn."""
        reply = self._reply
        self._reply = None
        if reply is not None and reply.segments:
            if not reply.held:
                for heard in self._playback.clear(reply.segments, self.now_ms()):
                    self._note_cut(reply, heard, [])
            self._store_reply(reply, interrupted=True)
        self._flush_pending_caller()

    # -- sources of speech -----------------------------------------------------------------

    async def _greeting_source(self) -> AsyncIterator[AgentOutput]:
        yield TextDelta(await self._agent.greeting(self._conversation))

    def _phrase(self, name: str) -> str:
        return PHRASES[self._language][name]

    def _phrase_source(self, name: str) -> AsyncIterator[AgentOutput]:
        return _text_source(self._phrase(name))

    # -- outbound: paced audio ---------------------------------------------------------------

    async def _sender(self) -> None:
        chunk_bytes = self.config.chunk_ms * 8
        while True:
            item, self._audio_next = self._audio_next, None
            reply, segment, audio = item or await self._audio_out.get()
            if reply.held or reply is not self._reply:
                continue  # cut after it was queued
            if audio is None:
                self._playback.mark_sent(segment)
                mark = tw.OutboundMark(stream_sid=self.context.stream_sid, name=segment.mark)
                await self._send(tw.serialize(mark))
                continue
            audio = self._join_queued(reply, segment, audio, chunk_bytes)
            for start in range(0, len(audio), chunk_bytes):
                piece = audio[start : start + chunk_bytes]
                await self._wait_for_room(len(piece) // 8)
                if reply.held or reply is not self._reply:
                    break
                now = self.now_ms()
                if not self._policy.agent_speaking:
                    if reply.interruptible:
                        if not await self._wait_for_floor(reply):
                            break
                        now = self.now_ms()
                    else:
                        # An uninterruptible phrase plays over a caller who is talking
                        # (their turn is answered after it); the policy hears of it
                        # when it can take it.
                        self._agent_speaking(True)
                reply.latency.setdefault("first_audio_sent", now)
                self._playback.audio_sent(segment, len(piece), now)
                if self._recorder is not None:
                    self._recorder.add_agent(mulaw.decode(piece), now)
                media = tw.OutboundMedia(stream_sid=self.context.stream_sid, payload=piece)
                await self._send(tw.serialize(media))

    async def _wait_for_floor(self, reply: _Reply) -> bool:
        """Start our audio only when the policy lets the agent speak (never over a caller
        whose turn is in progress); False if the reply was cut meanwhile."""
        while True:
            if reply.held or reply is not self._reply:
                return False
            if self._agent_speaking(True):
                return True
            await asyncio.sleep(FRAME_MS / 1000)

    def _agent_speaking(self, speaking: bool) -> bool:
        if self._policy.agent_speaking == speaking:
            return True
        if speaking and self._policy.state in (TurnState.caller_turn, TurnState.interrupted):
            return False
        try:
            events = self._policy.on_agent_speaking(speaking, self.now_ms())
        except TurnError as exc:
            log.debug("call %s: %s", self.context.call_id, exc)
            return False
        if events:
            assert self._tg is not None
            self._tg.create_task(self._handle(events), name="turn-events")
        return True

    async def _wait_for_room(self, piece_ms: int) -> None:
        while True:
            ahead = self._playback.buffered_ms(self.now_ms())
            room = self.config.max_ahead_ms - ahead
            if room >= piece_ms or ahead == 0:
                return
            await asyncio.sleep((piece_ms - room) / 1000)

    def _join_queued(self, reply: _Reply, segment: Segment, audio: bytes, size: int) -> bytes:
        """`audio` and the audio of the same segment already queued behind it, up to a
        whole message: a TTS may hand over 20 ms frames, and each message costs a socket
        write and a pacing wait. Nothing waits for audio that has not arrived."""
        parts = [audio]
        total = len(audio)
        while total < size and not self._audio_out.empty():
            item = self._audio_out.get_nowait()
            if item[0] is not reply or item[1] is not segment or item[2] is None:
                self._audio_next = item
                break
            parts.append(item[2])
            total += len(item[2])
        return audio if len(parts) == 1 else b"".join(parts)

    def _drop_queued_audio(self) -> None:
        self._audio_next = None
        while not self._audio_out.empty():
            self._audio_out.get_nowait()

    async def _send(self, text: str) -> None:
        await self._send_text(text)

    # -- STT ----------------------------------------------------------------------------------

    async def _to_stt(self, frame: AudioFrame) -> None:
        """Hand a frame to the recognizer right here: every stream's `send` only buffers
        (its own task talks to the vendor), so a queue and a task switch per 20 ms frame
        would cost more than the send itself."""
        assert self._stt is not None
        try:
            await self._stt.send(frame)
        except ProviderError as exc:
            await self._stt_failed(exc)

    async def _stt_results(self) -> None:
        assert self._stt is not None
        try:
            async for result in self._stt.results():
                now = self.now_ms()
                if result.is_final and result.text.strip():
                    self._last_final_ms = now
                await self._handle(self._policy.on_transcript(result.text, result.is_final, now))
        except ProviderError as exc:
            await self._stt_failed(exc)

    async def _stt_failed(self, exc: ProviderError) -> None:
        """Without recognition the agent cannot hear the caller: say so and hang up,
        rather than leave them talking to silence (or cut them off without a word)."""
        if self._stt_broken:
            return
        self._stt_broken = True
        log.warning("call %s: speech recognition failed: %s", self.context.call_id, exc)
        self._count_error("stt")
        await self._take_floor()
        self._start_reply(
            self._phrase_source("technical_goodbye"),
            kind="phrase",
            interruptible=False,
            then=Action(ActionKind.hang_up),
            end_reason=EndReason.stt_error,
        )

    # -- timers --------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_ms / 1000)
            now = self.now_ms()
            if now - self._last_inbound_ms > self.config.inbound_timeout_ms:
                log.warning(
                    "call %s: nothing from Twilio for %d ms",
                    self.context.call_id,
                    now - self._last_inbound_ms,
                )
                raise SessionEnded(EndReason.inbound_timeout)
            events = self._policy.on_tick(now)
            if events:
                await self._handle(events)

    # -- persistence ---------------------------------------------------------------------------

    def _enqueue_turn(self, turn: TurnRecord) -> None:
        self._persist.put_nowait(turn)

    async def _persister(self) -> None:
        """Turns are stored one by one as they end; a store in progress is never cut."""
        while True:
            turn = await self._persist.get()
            self._persisting = asyncio.ensure_future(self._save(turn))
            await asyncio.shield(self._persisting)
            self._persisting = None

    async def _save(self, turn: TurnRecord) -> None:
        """Store one turn, trying twice. A CRM hiccup must not end the call, so a turn
        that still cannot be stored is logged (with its text) and counted, not raised."""
        try:
            await self._store.save_turn(turn)
            return
        except Exception as exc:
            log.warning("call %s: storing a turn failed, retrying: %s", self.context.call_id, exc)
        await asyncio.sleep(STORE_RETRY_S)
        try:
            await self._store.save_turn(turn)
        except Exception:
            log.exception(
                "call %s: lost the %s turn %r", self.context.call_id, turn.role, turn.text[:200]
            )
            self._count_error("store")

    async def _drain_persist(self) -> None:
        if self._persisting is not None:
            await self._persisting
        while not self._persist.empty():
            await self._save(self._persist.get_nowait())

    def _count_error(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.error(kind)


async def _text_source(text: str) -> AsyncIterator[AgentOutput]:
    yield TextDelta(text)


def _latency_breakdown(marks: dict[str, int]) -> dict[str, int]:
    """The call-clock moments of an agent turn, as the CRM stores them."""
    keys = (
        "speech_end",
        "endpoint",
        "stt_final",
        "llm_first_token",
        "tts_first_byte",
        "first_audio_sent",
    )
    return {k: marks[k] for k in keys if k in marks}


def _first_reason(group: BaseExceptionGroup[SessionEnded]) -> EndReason:
    for exc in group.exceptions:
        if isinstance(exc, SessionEnded):
            return exc.reason
        if isinstance(exc, BaseExceptionGroup):
            return _first_reason(exc)
    return EndReason.internal_error
