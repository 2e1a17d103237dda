"""One simulated call: Twilio's half of a phone call, driven by a caller script.

The call does what Twilio does when someone dials a broker's number: it POSTs the
signed voice webhook, opens the media WebSocket named by the TwiML (signed upgrade),
sends `connected` and `start` with the TwiML's `<Parameter>`s, then streams the caller
in real time: 20 ms μ-law frames, the script's utterances with silence between them,
as Twilio streams continuous audio. The agent's audio goes through the playback model
(`playback.py`): marks are echoed when the audio before them would have finished
playing, and `clear` drops what is unplayed and echoes every pending mark at once.

It measures what a caller feels, on the simulator's clock:
- response latency: the last frame of caller speech sent → the first agent `media`
  received after it (once any reply still playing from before has ended or been
  cleared, so the tail of an old answer is not mistaken for a quick new one);
- barge-in latency: the first frame of caller speech sent over the agent's audio →
  `clear` received.
- backchannels ("sí" over the agent's audio): talked through (no `clear`), or paused and
  resumed (a `clear` at the onset, then the agent's audio again within
  `backchannel_resume_window_ms` of the "sí" ending: the gap is measured), or derailed
  (cleared and not resumed in that window, or the caller spoke again first). A good agent
  does one of the first two; the window separates a resumed reply from a new answer to
  the "sí", which cannot come before the server's end-of-turn silence and its providers.

Time comes from the shared `Ticker`; between beats a call costs nothing but its reader
task waiting on the socket and its script task waiting on a future.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voice_gateway.audio import mulaw, wav
from voice_gateway.providers.base import FRAME_MS, SAMPLE_RATE, TextToSpeech
from voice_gateway.simulator import dial
from voice_gateway.simulator.audio_source import SILENCE_PAYLOAD, CallerAudio, UtteranceCache
from voice_gateway.simulator.playback import (
    Cleared,
    MarkEchoed,
    PlaybackBuffer,
    PlaybackEvent,
    PlaybackFinished,
)
from voice_gateway.simulator.script import (
    DTMF_SPACING_MS,
    BargeIn,
    Dtmf,
    HangUp,
    Pause,
    Say,
    Script,
    Step,
    TimedDtmf,
    WaitForAgent,
)
from voice_gateway.simulator.ticker import Ticker
from voice_gateway.twilio import protocol as tw

log = logging.getLogger(__name__)

#: The demo broker's Twilio number and a demo lead (voice_gateway/demo.py seeds both).
DEFAULT_TO: Final = "+34910000001"
DEFAULT_FROM: Final = "+34612345678"
#: Bytes waiting in a socket's send buffer before the call skips beats instead of
#: writing more: far below websockets' 32 KiB pause point, so `send` never waits.
_SEND_BACKLOG: Final = 16 * 1024
#: Largest message read from the server (the protocol module refuses >64 KiB itself,
#: as a protocol error we report, rather than a close by the socket library).
_MAX_MESSAGE: Final = 1 << 20


class ErrorKind(StrEnum):
    """What went wrong in a call, as counted in the load report."""

    http = "http"  # the voice webhook failed or answered something other than TwiML
    refused = "refused"  # TwiML that ends the call (over capacity, unknown number)
    connect = "connect"  # the WebSocket upgrade failed or was refused
    protocol = "protocol"  # a message Twilio would not accept
    close = "close"  # the server closed with an error code, or the socket dropped
    timeout = "timeout"  # the agent did not answer (or the server stopped reading)
    internal = "internal"  # a bug in the simulator


class EndedBy(StrEnum):
    caller = "caller"  # the script hung up
    server = "server"  # the server closed the stream normally (the agent hung up)
    error = "error"


@dataclass(frozen=True, slots=True)
class CallError:
    kind: ErrorKind
    detail: str
    #: On the stream's clock (ms since `start`), when the stream was open.
    at_ms: float | None = None

    def __str__(self) -> str:
        when = f" at {self.at_ms / 1000:.2f} s" if self.at_ms is not None else ""
        return f"{self.kind.value}{when}: {self.detail}"


class CallFailed(Exception):
    """Ends a call early with an error (raised inside the call, reported in its result)."""

    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _ServerEnded(Exception):
    """The server closed the stream: the script stops where it is."""


@dataclass(frozen=True)
class CallOptions:
    """How the simulator presents the call (numbers, credentials) and what it keeps."""

    from_number: str = DEFAULT_FROM
    #: Must be a broker's Twilio number, or the server answers "not in service".
    to_number: str = DEFAULT_TO
    #: PUBLIC_HOST of the server (what Twilio would have called); None: the base URL.
    public_host: str | None = None
    #: TWILIO_AUTH_TOKEN of the server; None sends no signatures.
    auth_token: str | None = None
    #: TWILIO_ACCOUNT_SID to present; None makes one up.
    account_sid: str | None = None
    #: The CallSid to present; None makes one up (an answered outbound call has Twilio's).
    call_sid: str | None = None
    #: Answer an outbound call instead of ringing the voice webhook: the stream of the
    #: TwiML the server gave Twilio's `calls.create` (`dial.read_twiml`).
    answer: dial.StreamTarget | None = None
    #: Longest wait for the server: the webhook, the socket, an agent reply.
    timeout_s: float = 15.0
    #: Write the agent's audio as played (truncated by `clear`) to this WAV file.
    save_audio: Path | None = None
    #: Receives the conversation line by line as it happens; None keeps quiet.
    echo: Callable[[str], None] | None = None
    #: Prefix of each echoed line (the call's number in a load run).
    label: str = ""
    #: Speaks text utterances; None uses the offline eSpeak voice.
    tts: TextToSpeech | None = None
    #: After a backchannel cleared the agent, its audio must return within this long of
    #: the backchannel's end to count as a resumed reply (see the module docstring).
    backchannel_resume_window_ms: float = 1000.0


@dataclass(frozen=True, slots=True)
class CallResult:
    """Everything measured on one call; times in ms."""

    call_sid: str
    stream_sid: str
    #: The TwiML's `<Parameter>`s (the server's call id, its token).
    parameters: Mapping[str, str]
    ended_by: EndedBy
    close_code: int | None
    duration_ms: float
    response_ms: tuple[float, ...]
    barge_in_ms: tuple[float, ...]
    #: Barge-ins the server never cleared before its audio ran out.
    barge_ins_unanswered: int
    #: Backchannels the agent talked through, paused for and resumed (both good), and
    #: ones that derailed it (stopped, not resumed).
    backchannels_ignored: int
    backchannels_resumed: int
    backchannels_derailed: int
    #: For each resumed backchannel: its end → the agent's audio again.
    backchannel_resume_ms: tuple[float, ...]
    #: Caller turns the agent did not answer before the caller spoke again or hung up.
    turns_unanswered: int
    caller_speech_ms: float
    agent_played_ms: float
    agent_dropped_ms: float
    #: The most agent audio that was ever queued ahead of the playhead.
    max_buffered_ms: float
    marks_echoed: int
    marks_cleared: int
    clears: int
    dtmf_sent: tuple[str, ...]
    frames_sent: int
    errors: tuple[CallError, ...]
    recording: Path | None
    #: When each response and barge-in sample was taken (the ticker's clock, ms), so a
    #: load run can keep the samples of a chosen stretch of time.
    response_at_ms: tuple[float, ...] = ()
    barge_in_at_ms: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(slots=True)
class _Wait:
    """What the script task waits for; the ticker checks it every beat."""

    done: Callable[[float], bool]
    future: asyncio.Future[None]
    what: str
    #: Fail when the agent has sent nothing for this long (None: wait forever).
    patience_ms: float | None
    since_ms: float


@dataclass(slots=True)
class _Interruption:
    onset_ms: float
    expect_clear: bool
    label: str


@dataclass(slots=True)
class _Pause:
    """A backchannel cleared the agent: it should resume soon after the "sí" ends."""

    label: str
    cleared_ms: float
    #: When the backchannel's audio ended (None while it is still being sent).
    speech_end_ms: float | None


@dataclass(slots=True)
class _Counters:
    response_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    response_at_ms: list[float] = field(default_factory=list)
    barge_in_at_ms: list[float] = field(default_factory=list)
    barge_ins_unanswered: int = 0
    backchannels_ignored: int = 0
    backchannels_resumed: int = 0
    backchannels_derailed: int = 0
    backchannel_resume_ms: list[float] = field(default_factory=list)
    turns_unanswered: int = 0
    caller_speech_ms: float = 0.0
    marks_echoed: int = 0
    marks_cleared: int = 0
    clears: int = 0
    dtmf_sent: list[str] = field(default_factory=list)


class SimulatedCall:
    """One call from ring to hang-up. Create, then `await run()` once."""

    def __init__(
        self,
        base_url: str,
        script: Script,
        options: CallOptions,
        *,
        ticker: Ticker,
        http: httpx.AsyncClient,
        audio: UtteranceCache,
    ) -> None:
        self._address = dial.Address.of(base_url, options.public_host)
        self._script = script
        self._options = options
        self._ticker = ticker
        self._http = http
        self._audio = audio
        self._call_sid = options.call_sid or dial.new_sid("CA")
        self._stream_sid = dial.new_sid("MZ")
        self._account_sid = options.account_sid or dial.new_sid("AC")
        self._parameters: Mapping[str, str] = {}
        self._ws: ClientConnection | None = None
        self._t0 = 0.0
        self._seq = 0
        self._chunk = 0
        self._playback = PlaybackBuffer(record=options.save_audio is not None)
        self._speech: CallerAudio | None = None
        self._speech_at = 0
        self._speech_expect_clear = True
        self._speech_barge_in = False
        self._last_onset: float | None = None
        self._last_agent_media: float | None = None
        self._quiet_since = 0.0
        self._last_clear: float | None = None
        self._reply_armed: float | None = None
        self._reply_blocked = False
        self._interruption: _Interruption | None = None
        self._pause: _Pause | None = None
        self._last_speech_end: float | None = None
        self._timed_dtmf: list[TimedDtmf] = sorted(script.timed_dtmf, key=lambda d: d.at_ms)
        self._wait: _Wait | None = None
        self._stalled_since: float | None = None
        self._hanging_up = False
        self._stopped = False
        self._ended_by = EndedBy.caller
        self._close_code: int | None = None
        self._errors: list[CallError] = []
        self._counters = _Counters()

    # -- the call, start to end -----------------------------------------------------------

    async def run(self) -> CallResult:
        started = self._ticker.now_ms()
        recording: Path | None = None
        try:
            target = self._options.answer or await dial.ring(
                self._http,
                self._address,
                dial.webhook_fields(
                    call_sid=self._call_sid,
                    account_sid=self._account_sid,
                    from_number=self._options.from_number,
                    to_number=self._options.to_number,
                ),
                auth_token=self._options.auth_token,
                timeout_s=self._options.timeout_s,
            )
            self._parameters = target.parameters
            await self._stream(target)
        except dial.DialError as exc:
            kind = ErrorKind.refused if exc.refused else ErrorKind.http
            self._error(kind, exc.reason, None)
        except CallFailed as exc:
            self._error(exc.kind, exc.reason, None)
        except Exception as exc:  # a simulator bug costs this call, not the whole run
            log.exception("simulated call %s failed", self._call_sid)
            self._error(ErrorKind.internal, f"{type(exc).__name__}: {exc}", None)
        finally:
            self._ticker.discard(self)
        if self._options.save_audio is not None and self._ws is not None:
            recording = self._options.save_audio
            await asyncio.to_thread(write_wav, recording, self._playback.recording())
        return self._result(self._ticker.now_ms() - started, recording)

    async def _stream(self, target: dial.StreamTarget) -> None:
        ws = await self._open(target)
        self._ws = ws
        reader: asyncio.Task[None] | None = None
        try:
            await ws.send(tw.serialize(tw.Connected()))
            now = self._ticker.now_ms()
            self._t0 = self._ticker.align(now)
            self._playback = PlaybackBuffer(
                origin_ms=self._t0, record=self._options.save_audio is not None
            )
            self._seq = 1
            await ws.send(
                tw.serialize(
                    tw.Start(
                        sequence_number=1,
                        stream_sid=self._stream_sid,
                        account_sid=self._account_sid,
                        call_sid=self._call_sid,
                        tracks=("inbound",),
                        custom_parameters=dict(target.parameters),
                    )
                )
            )
            self._note(now, f"call {self._call_sid} connected to {target.url}")
            reader = asyncio.create_task(self._read(ws))
            self._ticker.add(self, start_ms=self._t0)
            try:
                await self._run_script()
            except _ServerEnded:
                pass
            except CallFailed as exc:
                self._ended_by = EndedBy.error
                self._error(exc.kind, exc.reason, self._ticker.now_ms())
            finally:
                self._ticker.discard(self)
            await self._hang_up(ws)
            await reader
        except ConnectionClosed:
            if reader is None:  # closed before the stream started: nobody has said how
                self._on_closed(ws)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await ws.close()
        if self._reply_armed is not None:
            self._counters.turns_unanswered += 1

    async def _open(self, target: dial.StreamTarget) -> ClientConnection:
        url = self._address.socket_url(target.url)
        headers = {
            **self._address.forwarded_headers(),
            **dial.sign(self._options.auth_token, target.url, {}),
        }
        try:
            return await connect(
                url,
                additional_headers=headers,
                user_agent_header="Twilio.TmeWs/1.0",
                open_timeout=self._options.timeout_s,
                close_timeout=self._options.timeout_s,
                ping_interval=None,
                compression=None,
                max_size=_MAX_MESSAGE,
            )
        except InvalidStatus as exc:
            raise CallFailed(
                ErrorKind.connect,
                f"{url} refused the upgrade with HTTP {exc.response.status_code}",
            ) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise CallFailed(ErrorKind.connect, f"{url}: {exc or type(exc).__name__}") from None

    async def _hang_up(self, ws: ClientConnection) -> None:
        """`stop`, then close: what Twilio does when the caller hangs up."""
        if self._ws_closed(ws):
            return
        self._hanging_up = True
        now = self._ticker.now_ms()
        if self._ended_by is EndedBy.caller:
            self._note(now, "caller: hangs up")
        stop = tw.Stop(
            sequence_number=self._next_seq(),
            stream_sid=self._stream_sid,
            account_sid=self._account_sid,
            call_sid=self._call_sid,
        )
        with contextlib.suppress(ConnectionClosed):
            await ws.send(tw.serialize(stop))
        self._stopped = True
        await ws.close()

    # -- the script ------------------------------------------------------------------------

    async def _run_script(self) -> None:
        for step in self._script.steps:
            if isinstance(step, HangUp):
                return
            await self._step(step)

    async def _step(self, step: Step) -> None:
        patience = self._options.timeout_s * 1000
        if isinstance(step, Say):
            await self._speak(await self._audio.get(step.utterance))
        elif isinstance(step, WaitForAgent):
            await self._wait_for_agent(step.pause_ms, patience)
        elif isinstance(step, Pause):
            await self._sleep(step.ms)
        elif isinstance(step, BargeIn):
            audio = await self._audio.get(step.utterance)
            playback = self._playback
            await self._until(playback.playing, "agent audio to talk over", patience)
            start = playback.burst_started_ms
            at = (start if start is not None else self._ticker.now_ms()) + step.after_ms
            await self._until(lambda now: now >= at, "the barge-in moment", None)
            await self._speak(audio, expect_clear=step.expect_clear, barge_in=True)
        elif isinstance(step, Dtmf):
            for index, digit in enumerate(step.digits):
                if index:
                    await self._sleep(DTMF_SPACING_MS)
                await self._send_dtmf(digit, self._ticker.now_ms())

    async def _speak(
        self, audio: CallerAudio, *, expect_clear: bool = True, barge_in: bool = False
    ) -> None:
        self._speech = audio
        self._speech_at = 0
        self._speech_expect_clear = expect_clear
        self._speech_barge_in = barge_in
        await self._until(lambda now: self._speech is None, f"saying {audio.label!r}", None)

    async def _sleep(self, ms: float) -> None:
        until = self._ticker.now_ms() + ms
        await self._until(lambda now: now >= until, f"a pause of {ms:g} ms", None)

    async def _wait_for_agent(self, pause_ms: int, patience_ms: float) -> None:
        """Until the agent has spoken since the caller last did, and gone quiet."""
        since = self._last_onset
        playback = self._playback

        def done(now: float) -> bool:
            # Audio received since the caller spoke: a new reply, or one that was queued
            # behind the old one without a gap.
            spoke = self._last_agent_media
            if spoke is None or (since is not None and spoke < since):
                return False
            cleared = self._last_clear
            if since is not None and cleared is not None and cleared > since and spoke < cleared:
                return False  # only the reply the caller cut off has played; theirs is due
            return not playback.playing(now) and now - self._quiet_since >= pause_ms

        await self._until(done, "the agent's reply", patience_ms)

    async def _until(
        self, done: Callable[[float], bool], what: str, patience_ms: float | None
    ) -> None:
        if self._stopped:
            raise _ServerEnded
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wait = _Wait(done, future, what, patience_ms, self._ticker.now_ms())
        try:
            await future
        finally:
            self._wait = None

    def _check_wait(self, now: float) -> None:
        wait = self._wait
        if wait is None or wait.future.done():
            return
        if wait.done(now):
            wait.future.set_result(None)
            return
        if wait.patience_ms is None or self._playback.playing(now):
            return
        last_heard = max(wait.since_ms, self._last_agent_media or wait.since_ms)
        if now - last_heard > wait.patience_ms:
            wait.future.set_exception(
                CallFailed(
                    ErrorKind.timeout,
                    f"waited {wait.patience_ms / 1000:g} s for {wait.what} without agent audio",
                )
            )

    # -- the beat (called by the ticker every 20 ms) ------------------------------------------

    async def tick(self, now: float) -> None:
        ws = self._ws
        if ws is None or self._stopped:
            return
        try:
            due = self._playback.next_due_ms()
            if due is not None and due <= now:
                await self._handle(self._playback.advance(now))
            timed = self._timed_dtmf
            while timed and timed[0].at_ms <= now - self._t0:
                await self._send_dtmf(timed.pop(0).digit, now)
            self._check_wait(now)
            self._check_pause(now)
            await self._send_frames(ws, now)
        except ConnectionClosed:
            self._ticker.discard(self)  # the reader records how and wakes the script
        except Exception as exc:
            log.exception("simulated call %s failed", self._call_sid)
            self._ticker.discard(self)
            self._fail_wait(CallFailed(ErrorKind.internal, f"{type(exc).__name__}: {exc}"))

    async def _send_frames(self, ws: ClientConnection, now: float) -> None:
        due = int((now - self._t0) // FRAME_MS) + 1
        if due <= self._chunk:
            return
        if ws.transport.get_write_buffer_size() > _SEND_BACKLOG:
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since > self._options.timeout_s * 1000:
                self._fail_wait(
                    CallFailed(ErrorKind.timeout, "the server stopped reading the stream")
                )
            return
        self._stalled_since = None
        sid = self._stream_sid
        while self._chunk < due:
            speech = self._speech
            if speech is None:
                payload = SILENCE_PAYLOAD
            else:
                if self._speech_at == 0:
                    self._on_onset(speech, now)
                payload = speech.payloads[self._speech_at]
                self._speech_at += 1
            chunk = self._chunk + 1
            self._seq += 1
            await ws.send(
                f'{{"event":"media","sequenceNumber":"{self._seq}","streamSid":"{sid}",'
                f'"media":{{"track":"inbound","chunk":"{chunk}",'
                f'"timestamp":"{self._chunk * FRAME_MS}","payload":"{payload}"}}}}'
            )
            self._chunk = chunk
            if speech is not None and self._speech_at == len(speech.payloads):
                self._on_speech_end(speech, now)

    def _on_onset(self, speech: CallerAudio, now: float) -> None:
        backchannel = not self._speech_expect_clear
        self._derail_pause(now, "the caller spoke again before the agent resumed")
        self._note(now, f"caller: {speech.label} ({speech.duration_ms / 1000:.1f} s)")
        if not backchannel:
            if self._reply_armed is not None:
                self._counters.turns_unanswered += 1
            self._reply_armed = None
            self._last_onset = now
        if self._playback.playing(now):
            self._interruption = _Interruption(now, self._speech_expect_clear, speech.label)
        elif self._speech_barge_in:
            self._note(now, "caller: (too late to barge in: the agent had stopped talking)")

    def _on_speech_end(self, speech: CallerAudio, now: float) -> None:
        self._speech = None
        self._last_speech_end = now
        self._counters.caller_speech_ms += speech.duration_ms
        if self._pause is not None and self._pause.speech_end_ms is None:
            self._pause.speech_end_ms = now
        if self._speech_expect_clear:
            self._reply_armed = now
            self._reply_blocked = self._playback.playing(now)
        self._check_wait(now)

    # -- what the server sends ----------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        clock = self._ticker.now_ms
        try:
            async for message in ws:
                now = clock()
                try:
                    msg = tw.parse_outbound(message)
                except tw.ProtocolError as exc:
                    self._error(ErrorKind.protocol, exc.reason, now)
                    continue
                if msg.stream_sid != self._stream_sid:
                    self._error(
                        ErrorKind.protocol, f"message for stream {msg.stream_sid[:40]!r}", now
                    )
                    continue
                if type(msg) is tw.OutboundMedia:
                    # Playback first: a reply that ended before this audio unblocks it.
                    await self._handle(self._playback.media(now, msg.payload))
                    self._on_agent_media(now)
                elif type(msg) is tw.OutboundMark:
                    await self._handle(self._playback.mark(now, msg.name))
                else:
                    self._counters.clears += 1
                    await self._handle(self._playback.clear(now))
        except ConnectionClosed:
            pass
        self._on_closed(ws)

    def _on_agent_media(self, now: float) -> None:
        self._last_agent_media = now
        pause, self._pause = self._pause, None
        if pause is not None:
            gap = now - (pause.speech_end_ms if pause.speech_end_ms is not None else now)
            self._counters.backchannels_resumed += 1
            self._counters.backchannel_resume_ms.append(gap)
            self._note(now, f"agent: resumed {gap:.0f} ms after the backchannel {pause.label!r}")
        armed = self._reply_armed
        if armed is not None and not self._reply_blocked:
            latency = now - armed
            self._counters.response_ms.append(latency)
            self._counters.response_at_ms.append(now)
            self._reply_armed = None
            self._note(now, f"agent: first audio {latency:.0f} ms after the caller stopped")

    async def _handle(self, events: list[PlaybackEvent]) -> None:
        for event in events:
            if type(event) is MarkEchoed:
                await self._echo_mark(event)
            elif type(event) is PlaybackFinished:
                self._quiet_since = event.at_ms
                self._reply_blocked = False
                self._note(event.at_ms, f"agent: audio {event.played_ms / 1000:.1f} s")
                self._interruption_outlived(event.at_ms)
            elif type(event) is Cleared:
                self._quiet_since = event.at_ms
                self._last_clear = event.at_ms
                self._reply_blocked = False
                self._on_clear(event)

    async def _echo_mark(self, event: MarkEchoed) -> None:
        if event.played:
            self._counters.marks_echoed += 1
            self._note(event.at_ms, f"mark {event.name} echoed")
        else:
            self._counters.marks_cleared += 1
            self._note(event.at_ms, f"mark {event.name} echoed (cleared, not played)")
        ws = self._ws
        if ws is None or self._stopped:
            return
        echo = tw.Mark(self._next_seq(), self._stream_sid, event.name)
        await ws.send(tw.serialize(echo))

    def _on_clear(self, event: Cleared) -> None:
        heard = f"{event.played_ms / 1000:.1f} s heard, {event.dropped_ms / 1000:.1f} s dropped"
        interruption, self._interruption = self._interruption, None
        if interruption is None:
            self._note(event.at_ms, f"agent: clear ({heard})")
            return
        latency = event.at_ms - interruption.onset_ms
        if interruption.expect_clear:
            self._counters.barge_in_ms.append(latency)
            self._counters.barge_in_at_ms.append(event.at_ms)
            self._note(event.at_ms, f"agent: clear after {latency:.0f} ms ({heard})")
        else:
            # Stopping at the onset is fine if the reply comes back (see the docstring).
            ended = None if self._speech is not None else self._last_speech_end
            self._pause = _Pause(interruption.label, event.at_ms, ended)
            self._note(
                event.at_ms,
                f"agent: clear {latency:.0f} ms after a backchannel {interruption.label!r}",
            )

    def _check_pause(self, now: float) -> None:
        pause = self._pause
        if pause is None or pause.speech_end_ms is None:
            return
        if now - pause.speech_end_ms > self._options.backchannel_resume_window_ms:
            self._derail_pause(
                now,
                f"not resumed within {self._options.backchannel_resume_window_ms:.0f} ms",
            )

    def _derail_pause(self, now: float, why: str) -> None:
        pause, self._pause = self._pause, None
        if pause is None:
            return
        self._counters.backchannels_derailed += 1
        self._note(now, f"agent: stopped for the backchannel {pause.label!r} and {why}")

    def _interruption_outlived(self, at_ms: float) -> None:
        interruption, self._interruption = self._interruption, None
        if interruption is None:
            return
        if interruption.expect_clear:
            self._counters.barge_ins_unanswered += 1
            self._note(at_ms, "agent: talked over the caller to the end, no clear")
        else:
            self._counters.backchannels_ignored += 1

    def _on_closed(self, ws: ClientConnection) -> None:
        code = ws.close_code
        self._close_code = code
        now = self._ticker.now_ms()
        if self._hanging_up:
            return
        self._stopped = True
        reason = f"{code} {ws.close_reason}".strip() if code is not None else "no close frame"
        if code in (1000, 1001):
            self._ended_by = EndedBy.server
            self._note(now, f"server: ended the call ({reason})")
            self._fail_wait(_ServerEnded())
        else:
            self._ended_by = EndedBy.error
            self._error(ErrorKind.close, f"the server closed the stream: {reason}", now)
            self._fail_wait(_ServerEnded())

    # -- small helpers ----------------------------------------------------------------------

    async def _send_dtmf(self, digit: str, now: float) -> None:
        ws = self._ws
        if ws is None or self._stopped:
            return
        key = tw.Dtmf(self._next_seq(), self._stream_sid, digit)
        await ws.send(tw.serialize(key))
        self._counters.dtmf_sent.append(digit)
        self._note(now, f"caller: presses {digit}")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _fail_wait(self, exc: BaseException) -> None:
        wait = self._wait
        if wait is not None and not wait.future.done():
            wait.future.set_exception(exc)

    @staticmethod
    def _ws_closed(ws: ClientConnection) -> bool:
        return ws.close_code is not None

    def _error(self, kind: ErrorKind, detail: str, now: float | None) -> None:
        at = None if now is None or self._ws is None else now - self._t0
        error = CallError(kind, detail, at)
        self._errors.append(error)
        log.debug("simulated call %s: %s", self._call_sid, error)
        if self._options.echo is not None:
            self._options.echo(f"{self._options.label}error: {error}")

    def _note(self, now: float, text: str) -> None:
        echo = self._options.echo
        if echo is not None:
            echo(f"{self._options.label}{(now - self._t0) / 1000:7.2f} s  {text}")

    def _result(self, duration_ms: float, recording: Path | None) -> CallResult:
        self._derail_pause(self._ticker.now_ms(), "the call ended first")
        counters = self._counters
        playback = self._playback
        return CallResult(
            call_sid=self._call_sid,
            stream_sid=self._stream_sid,
            parameters=dict(self._parameters),
            ended_by=EndedBy.error if self._errors else self._ended_by,
            close_code=self._close_code,
            duration_ms=duration_ms,
            response_ms=tuple(counters.response_ms),
            barge_in_ms=tuple(counters.barge_in_ms),
            barge_ins_unanswered=counters.barge_ins_unanswered,
            backchannels_ignored=counters.backchannels_ignored,
            backchannels_resumed=counters.backchannels_resumed,
            backchannels_derailed=counters.backchannels_derailed,
            backchannel_resume_ms=tuple(counters.backchannel_resume_ms),
            turns_unanswered=counters.turns_unanswered,
            caller_speech_ms=counters.caller_speech_ms,
            agent_played_ms=playback.played_ms,
            agent_dropped_ms=playback.dropped_ms,
            max_buffered_ms=playback.max_buffered_ms,
            marks_echoed=counters.marks_echoed,
            marks_cleared=counters.marks_cleared,
            clears=counters.clears,
            dtmf_sent=tuple(counters.dtmf_sent),
            frames_sent=self._chunk,
            errors=tuple(self._errors),
            recording=recording,
            response_at_ms=tuple(counters.response_at_ms),
            barge_in_at_ms=tuple(counters.barge_in_at_ms),
        )


def check_options(base_url: str, options: CallOptions) -> None:
    """`DialError` for what no call could succeed with: a bad URL or phone number."""
    dial.Address.of(base_url, options.public_host)
    dial.check_number(options.from_number, "the caller's number", anonymous_ok=True)
    dial.check_number(options.to_number, "the number called")


def write_wav(path: Path, audio: bytes) -> None:
    """μ-law 8 kHz `audio` as a 16-bit PCM WAV file, which every player opens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav.wav_bytes(mulaw.decode(audio), SAMPLE_RATE, 1))


async def run_call(
    base_url: str,
    script: Script,
    *,
    options: CallOptions | None = None,
    ticker: Ticker | None = None,
    http: httpx.AsyncClient | None = None,
    audio: UtteranceCache | None = None,
) -> CallResult:
    """One simulated call against the server at `base_url` (http://127.0.0.1:8000).

    The script's utterances are prepared before dialling (`AudioSourceError` if one
    cannot be); a malformed URL or number raises `DialError`. What goes wrong on the call itself
    is in the result's `errors`. `ticker`, `http` and `audio` let a load run share them among calls.
    """
    options = options or CallOptions()
    check_options(base_url, options)
    audio = audio or UtteranceCache(options.tts)
    await audio.warm(script.utterances())
    async with contextlib.AsyncExitStack() as stack:
        if ticker is None:
            ticker = await stack.enter_async_context(Ticker())
        if http is None:
            http = await stack.enter_async_context(httpx.AsyncClient())
        call = SimulatedCall(base_url, script, options, ticker=ticker, http=http, audio=audio)
        return await call.run()
