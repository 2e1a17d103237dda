"""The call simulator against a small fake gateway on loopback.

The fake gateway (below) answers the voice webhook with real TwiML, checks both
signatures with the gateway's own `signature` module, and on the media socket greets,
answers each caller utterance after a fixed delay with audio and a mark, and sends
`clear` when the caller talks over it. It runs in its own thread (uvicorn) and logs
what it received and when it acted, on the same clock as the simulator, so each check
below is causal: nothing asserts how fast anything was.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from typer.testing import CliRunner

from voice_gateway.audio import mulaw, wav
from voice_gateway.audio.resample import resample_once
from voice_gateway.commands.simulate import simulate_call
from voice_gateway.providers.tts_espeak import EspeakTts
from voice_gateway.providers.tts_fake import FakeTts
from voice_gateway.simulator import dial
from voice_gateway.simulator.audio_source import (
    SILENCE_PAYLOAD,
    AudioSourceError,
    UtteranceCache,
    caller_audio,
    mulaw_from_wav,
    speech_frames,
)
from voice_gateway.simulator.bench import bench_simulator
from voice_gateway.simulator.caller import CallOptions, EndedBy, ErrorKind, run_call
from voice_gateway.simulator.load import (
    CpuReadError,
    LoadOptions,
    Percentiles,
    percentile,
    process_cpu_s,
    run_load,
)
from voice_gateway.simulator.script import Utterance, parse_script
from voice_gateway.simulator.ticker import Ticker
from voice_gateway.twilio import protocol as tw
from voice_gateway.twilio import signature, twiml

TOKEN = "test-auth-token"
BROKER = "+34910000001"
CALLER = "+34612345678"
CALL_TOKEN = "per-call-token"
AGENT_BYTE = 0x20  # the fake agent's audio: a constant, clearly non-silent μ-law code


def now_ms() -> float:
    return time.perf_counter() * 1000  # the simulator's clock too


@dataclass
class Behaviour:
    greeting_ms: int = 200
    reply_ms: int = 300
    reply_delay_ms: int = 100
    #: Silent frames that end a caller turn, and speech frames that make one (shorter
    #: speech is a backchannel: no clear, no reply).
    end_silence_frames: int = 4
    min_speech_frames: int = 5
    clear_on_speech: bool = True
    #: Clear after this many speech frames instead of `min_speech_frames` (stop at the
    #: onset, as the real gateway does, before knowing whether it is a backchannel).
    clear_after_frames: int | None = None
    #: After a short utterance that was cleared, resume the reply this long after it
    #: ended (None: stay quiet, derailed).
    resume_after_ms: int | None = None
    close_after_greeting: int | None = None
    garbage_after_start: bool = False


@dataclass
class Utter:
    """One caller utterance as the fake gateway saw it (its clock, ms)."""

    first_rx: float
    last_rx: float = 0.0
    frames: int = 0
    clear_sent: float | None = None
    reply_sent: float | None = None


@dataclass
class StreamLog:
    messages: list[tw.InboundMessage] = field(default_factory=list)
    media_rx: list[float] = field(default_factory=list)
    utterances: list[Utter] = field(default_factory=list)
    #: (mark name, ms from sending the mark to its echo, audio before it in ms)
    echoes: list[tuple[str, float, int]] = field(default_factory=list)
    sent_audio_ms: int = 0
    opened: float = field(default_factory=now_ms)
    close_code: int | None = None
    state: tw.StreamState = field(default_factory=tw.StreamState)
    done: threading.Event = field(default_factory=threading.Event)

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.messages if type(m) is kind]


class FakeGateway:
    """Twilio's peer, just enough of it: webhook → TwiML, and a talking media socket."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.webhooks: list[dict[str, str]] = []
        self.refusals: list[str] = []
        self.streams: list[StreamLog] = []
        self.base_url = ""

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.webhooks.clear()
        self.refusals.clear()
        self.streams.clear()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/twilio/voice", self.voice, methods=["POST"]),
                WebSocketRoute("/twilio/media", self.media),
            ]
        )

    async def voice(self, request: Request) -> Response:
        form = await request.form()
        fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        address = signature.address_of(request)
        try:
            signature.check(
                auth_token=TOKEN,
                url=signature.public_url(address, configured=None, websocket=False),
                fields=fields,
                signature=request.headers.get(signature.SIGNATURE_HEADER),
            )
        except signature.SignatureError as exc:
            self.refusals.append(exc.reason)
            return Response(status_code=403)
        self.webhooks.append(dict(fields))
        if dict(fields)["To"] != BROKER:
            return Response(twiml.not_in_service(), media_type="text/xml")
        base = signature.public_base(address, configured=None, websocket=True)
        document = twiml.connect_stream(ws_url=f"{base}/twilio/media", call_id=7, token=CALL_TOKEN)
        return Response(document, media_type="text/xml")

    async def media(self, ws: WebSocket) -> None:
        log = StreamLog()
        try:
            signature.check(
                auth_token=TOKEN,
                url=signature.public_url(signature.address_of(ws), configured=None, websocket=True),
                fields=(),
                signature=ws.headers.get(signature.SIGNATURE_HEADER),
            )
        except signature.SignatureError as exc:
            self.refusals.append(exc.reason)
            await ws.close(code=1008)
            return
        await ws.accept()
        self.streams.append(log)
        try:
            await self._talk(ws, log)
        except WebSocketDisconnect as exc:
            log.close_code = exc.code
        finally:
            log.done.set()

    async def _talk(self, ws: WebSocket, log: StreamLog) -> None:
        b = self.behaviour
        pending: dict[str, tuple[float, int]] = {}
        sender: asyncio.Task[None] | None = None
        current: Utter | None = None
        silent = 0
        sid = ""

        async def speak(name: str, ms: int, delay_ms: int, utter: Utter | None) -> None:
            await asyncio.sleep(delay_ms / 1000)
            for offset in range(0, ms, 100):
                piece = bytes([AGENT_BYTE]) * (8 * min(100, ms - offset))
                await ws.send_text(tw.serialize(tw.OutboundMedia(sid, piece)))
                if utter is not None and utter.reply_sent is None:
                    utter.reply_sent = now_ms()
            log.sent_audio_ms += ms
            pending[name] = (now_ms(), ms)
            await ws.send_text(tw.serialize(tw.OutboundMark(sid, name)))

        try:
            while True:
                message = tw.parse_inbound(await ws.receive_text())
                received = now_ms()
                log.state.receive(message)
                log.messages.append(message)
                if type(message) is tw.Start:
                    sid = message.stream_sid
                    if message.custom_parameters.get("token") != CALL_TOKEN:
                        await ws.close(code=1008)
                        return
                    if b.garbage_after_start:
                        await ws.send_text("this is not json")
                    if b.greeting_ms:
                        sender = asyncio.create_task(speak("greeting", b.greeting_ms, 0, None))
                elif type(message) is tw.Media:
                    log.media_rx.append(received)
                    if message.payload.count(mulaw.SILENCE_BYTE) != len(message.payload):
                        silent = 0
                        if current is None:
                            current = Utter(first_rx=received)
                        current.frames += 1
                        current.last_rx = received
                        clear_at = b.clear_after_frames or b.min_speech_frames
                        if current.frames == b.min_speech_frames:
                            log.utterances.append(current)
                        if (
                            current.frames == clear_at
                            and current.clear_sent is None
                            and pending
                            and b.clear_on_speech
                        ):
                            if sender is not None:
                                sender.cancel()
                            await ws.send_text(tw.serialize(tw.Clear(sid)))
                            current.clear_sent = now_ms()
                    elif current is not None:
                        silent += 1
                        if silent == b.end_silence_frames:
                            if current.frames >= b.min_speech_frames:
                                name = f"reply-{len(log.utterances)}"
                                sender = asyncio.create_task(
                                    speak(name, b.reply_ms, b.reply_delay_ms, current)
                                )
                            elif current.clear_sent is not None and b.resume_after_ms:
                                delay = b.resume_after_ms - b.end_silence_frames * 20
                                sender = asyncio.create_task(
                                    speak("resumed", b.reply_ms, max(0, delay), None)
                                )
                            current = None
                elif type(message) is tw.Mark:
                    sent, audio_ms = pending.pop(message.name)
                    log.echoes.append((message.name, received - sent, audio_ms))
                    if message.name == "greeting" and b.close_after_greeting:
                        await ws.close(code=b.close_after_greeting)
                        log.close_code = b.close_after_greeting
                        return
                elif type(message) is tw.Stop:
                    await ws.close(code=1000)
                    log.close_code = 1000
                    return
        finally:
            if sender is not None:
                sender.cancel()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGateway]:
    gateway = FakeGateway()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gateway.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(gateway.app(), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the fake gateway did not start")
        time.sleep(0.01)
    yield gateway
    uv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def gateway(server: FakeGateway) -> FakeGateway:
    server.reset()
    return server


def options(**changes: Any) -> CallOptions:
    base = CallOptions(
        auth_token=TOKEN, timeout_s=5.0, tts=FakeTts(ms_per_char=20), echo=lambda line: None
    )
    return replace(base, **changes)


def finished(gateway: FakeGateway) -> StreamLog:
    assert len(gateway.streams) == 1
    log = gateway.streams[0]
    assert log.done.wait(5), "the fake gateway never saw the stream end"
    return log


# -- a whole call ---------------------------------------------------------------------------


async def test_a_call_streams_like_twilio_and_measures_each_reply(
    gateway: FakeGateway, tmp_path: Path
):
    script = parse_script(
        """
        wait 100
        say Hola, busco un piso en Chamberí.
        wait 100
        dtmf 5
        say ¿Tiene terraza el piso?
        wait 100
        hang-up
        dtmf 9 @ 60
        """
    )
    lines: list[str] = []
    recording = tmp_path / "agent.wav"
    result = await run_call(
        gateway.base_url, script, options=options(echo=lines.append, save_audio=recording)
    )
    log = finished(gateway)

    assert result.ok, result.errors
    assert result.ended_by is EndedBy.caller
    assert result.close_code == 1000
    assert result.parameters == {"call_id": "7", "token": CALL_TOKEN}

    # The webhook: Twilio's form, signed (the gateway checked it with its own module).
    assert gateway.refusals == []
    (form,) = gateway.webhooks
    assert form["From"] == CALLER
    assert form["To"] == BROKER
    assert form["CallSid"] == result.call_sid
    assert form["Direction"] == "inbound"
    assert form["AccountSid"].startswith("AC")
    assert len(form["AccountSid"]) == 34

    # The stream: connected, start, then numbered media and events, stop last.
    connected, start = log.messages[:2]
    assert connected == tw.Connected()
    assert start == tw.Start(
        sequence_number=1,
        stream_sid=result.stream_sid,
        account_sid=form["AccountSid"],
        call_sid=result.call_sid,
        tracks=("inbound",),
        custom_parameters={"call_id": "7", "token": CALL_TOKEN},
    )
    assert type(log.messages[-1]) is tw.Stop
    assert log.messages[-1] == tw.Stop(
        log.state.last_sequence_number, result.stream_sid, form["AccountSid"], result.call_sid
    )
    assert log.state.sequence_gaps == 0
    numbered = [m for m in log.messages if not isinstance(m, tw.Connected)]
    assert [m.sequence_number for m in numbered] == list(range(1, len(numbered) + 1))

    media = log.of(tw.Media)
    assert len(media) == result.frames_sent
    assert [m.chunk for m in media] == list(range(1, len(media) + 1))
    assert all(m.timestamp_ms == (m.chunk - 1) * 20 for m in media)
    assert all(len(m.payload) == 160 and m.track == "inbound" for m in media)
    # Paced in real time: the stream starts after the socket opened, and frame k leaves
    # no sooner than k·20 ms into it (less half a beat of alignment).
    assert all(
        rx - m.timestamp_ms > log.opened - 30 for rx, m in zip(log.media_rx, media, strict=True)
    )

    assert [d.digit for d in log.of(tw.Dtmf)] == ["9", "5"]
    assert result.dtmf_sent == ("9", "5")

    # Marks come back, each no sooner than the audio before it takes to play.
    assert [name for name, _, _ in log.echoes] == ["greeting", "reply-1", "reply-2"]
    assert all(delay >= audio_ms for _, delay, audio_ms in log.echoes)
    assert result.marks_echoed == 3
    assert result.marks_cleared == 0

    # Response latency: from the last speech frame to the first reply audio.
    assert len(result.response_ms) == 2
    for latency, utter in zip(result.response_ms, log.utterances, strict=True):
        assert utter.reply_sent is not None
        assert latency >= utter.reply_sent - utter.last_rx  # not before the server acted
        assert latency < utter.reply_sent - utter.first_rx  # from the end, not the onset
    assert result.barge_in_ms == ()
    assert result.turns_unanswered == 0

    # The saved audio is the agent's, as played, on the call's timeline.
    assert result.recording == recording
    saved = wav.read_wav(recording.read_bytes())
    assert (saved.format.sample_rate, saved.format.channels) == (8000, 1)
    samples = np.frombuffer(saved.data, dtype="<i2")
    assert np.count_nonzero(samples) == 8 * log.sent_audio_ms == 8 * result.agent_played_ms

    # The conversation, as printed.
    text = "\n".join(lines)
    assert "caller: Hola, busco un piso en Chamberí. (0.6 s)" in text
    assert "agent: audio 0.3 s" in text
    assert "mark reply-1 echoed" in text
    assert "agent: first audio" in text
    assert "caller: presses 5" in text
    assert "caller: hangs up" in text


async def test_barge_in_is_measured_to_the_clear_and_the_recording_is_cut(
    gateway: FakeGateway, tmp_path: Path
):
    gateway.behaviour.reply_ms = 1500
    script = parse_script(
        """
        wait 100
        say Quiero un piso grande.
        barge-in 200 Perdone, una pregunta.
        wait 100
        """
    )
    recording = tmp_path / "agent.wav"
    result = await run_call(gateway.base_url, script, options=options(save_audio=recording))
    log = finished(gateway)

    assert result.ok, result.errors
    assert result.clears == 1
    (latency,) = result.barge_in_ms
    interrupted = log.utterances[1]
    assert interrupted.clear_sent is not None
    assert latency >= interrupted.clear_sent - interrupted.first_rx
    assert latency < 1500
    # Twilio echoes the interrupted reply's mark at once, as not played.
    assert result.marks_cleared == 1
    assert [name for name, _, _ in log.echoes] == ["greeting", "reply-1", "reply-2"]
    assert result.agent_dropped_ms > 0
    assert result.agent_played_ms + result.agent_dropped_ms == pytest.approx(log.sent_audio_ms)
    # The caller's interruption got its own answer, measured like any turn.
    assert len(result.response_ms) == 2
    samples = np.frombuffer(wav.read_wav(recording.read_bytes()).data, dtype="<i2")
    heard = np.count_nonzero(samples)
    assert abs(heard - 8 * result.agent_played_ms) <= 1
    assert heard < 8 * log.sent_audio_ms


async def test_a_backchannel_the_agent_talks_through_is_not_a_barge_in(gateway: FakeGateway):
    gateway.behaviour.reply_ms = 1200
    gateway.behaviour.clear_on_speech = True  # but "sí" is too short to count as speech
    script = parse_script("wait 100\nsay Busco un piso.\nbackchannel 200 sí\nwait 100")
    result = await run_call(gateway.base_url, script, options=options())
    finished(gateway)
    assert result.ok, result.errors
    assert result.backchannels_ignored == 1
    assert result.backchannels_resumed == result.backchannels_derailed == 0
    assert result.barge_in_ms == ()
    assert result.clears == 0
    assert len(result.response_ms) == 1  # a backchannel expects no answer


async def test_a_backchannel_the_agent_pauses_for_then_resumes_is_not_a_failure(
    gateway: FakeGateway,
):
    """The real gateway's way: `clear` at the onset, the reply back once the "sí" is
    known to be a backchannel; the simulator measures the gap, not a failure."""
    gateway.behaviour.reply_ms = 1500
    gateway.behaviour.clear_after_frames = 2
    gateway.behaviour.resume_after_ms = 300
    script = parse_script("wait 100\nsay Busco un piso.\nbackchannel 200 sí\nwait 100")
    result = await run_call(gateway.base_url, script, options=options())
    finished(gateway)
    assert result.ok, result.errors
    assert result.clears == 1
    assert result.barge_in_ms == ()  # a backchannel is no barge-in
    assert (result.backchannels_ignored, result.backchannels_resumed) == (0, 1)
    assert result.backchannels_derailed == 0
    [gap] = result.backchannel_resume_ms
    assert 300 - 40 <= gap <= 300 + 150


async def test_a_backchannel_that_silences_the_agent_is_a_derailment(gateway: FakeGateway):
    gateway.behaviour.reply_ms = 1500
    gateway.behaviour.clear_after_frames = 2
    script = parse_script("wait 100\nsay Busco un piso.\nbackchannel 200 sí\npause 1800")
    result = await run_call(
        gateway.base_url, script, options=options(backchannel_resume_window_ms=800)
    )
    finished(gateway)
    assert result.ok, result.errors
    assert (result.backchannels_resumed, result.backchannels_derailed) == (0, 1)


async def test_a_barge_in_the_server_ignores_is_counted(gateway: FakeGateway):
    gateway.behaviour.reply_ms = 800
    gateway.behaviour.clear_on_speech = False
    script = parse_script("wait 100\nsay Busco un piso.\nbarge-in 100 Espere un momento.\nwait 100")
    result = await run_call(gateway.base_url, script, options=options())
    assert result.ok, result.errors
    assert result.barge_ins_unanswered == 1
    assert result.barge_in_ms == ()


# -- endings and errors ---------------------------------------------------------------------


async def test_the_agent_hanging_up_ends_the_call_cleanly(gateway: FakeGateway):
    gateway.behaviour.close_after_greeting = 1000
    script = parse_script("wait 100\nsay Hola, buenos días.\nwait")
    result = await run_call(gateway.base_url, script, options=options())
    assert result.ok, result.errors
    assert result.ended_by is EndedBy.server
    assert result.close_code == 1000


async def test_a_server_closing_with_an_error_code_is_an_error(gateway: FakeGateway):
    gateway.behaviour.close_after_greeting = 1011
    result = await run_call(
        gateway.base_url, parse_script("wait 100\nsay Hola.\nwait"), options=options()
    )
    assert result.ended_by is EndedBy.error
    assert [e.kind for e in result.errors] == [ErrorKind.close]
    assert "1011" in result.errors[0].detail


async def test_a_call_to_a_number_nobody_owns_is_refused_with_what_was_said(
    gateway: FakeGateway,
):
    result = await run_call(
        gateway.base_url, parse_script("wait"), options=options(to_number="+34910000999")
    )
    assert [e.kind for e in result.errors] == [ErrorKind.refused]
    assert "no está en servicio" in result.errors[0].detail
    assert gateway.streams == []


async def test_a_wrong_auth_token_fails_at_the_webhook(gateway: FakeGateway):
    result = await run_call(
        gateway.base_url, parse_script("wait"), options=options(auth_token="wrong")
    )
    assert [e.kind for e in result.errors] == [ErrorKind.http]
    assert "HTTP 403" in result.errors[0].detail
    assert gateway.refusals == [f"signature does not match {gateway.base_url}/twilio/voice"]


async def test_signatures_use_the_public_host_behind_a_proxy(gateway: FakeGateway):
    """The TwiML names wss://voice.example.com; the simulator still connects locally."""
    result = await run_call(
        gateway.base_url,
        parse_script("wait 100"),
        options=options(public_host="voice.example.com"),
    )
    assert result.ok, result.errors
    assert gateway.refusals == []
    finished(gateway)


async def test_an_agent_that_never_speaks_times_out_and_the_call_still_hangs_up(
    gateway: FakeGateway,
):
    gateway.behaviour.greeting_ms = 0
    result = await run_call(gateway.base_url, parse_script("wait"), options=options(timeout_s=0.3))
    log = finished(gateway)
    assert [e.kind for e in result.errors] == [ErrorKind.timeout]
    assert "the agent's reply" in result.errors[0].detail
    assert type(log.messages[-1]) is tw.Stop
    assert log.close_code == 1000


async def test_a_malformed_server_message_is_a_protocol_error_and_the_call_goes_on(
    gateway: FakeGateway,
):
    gateway.behaviour.garbage_after_start = True
    result = await run_call(gateway.base_url, parse_script("wait 100"), options=options())
    assert [e.kind for e in result.errors] == [ErrorKind.protocol]
    assert "invalid JSON" in result.errors[0].detail
    assert result.marks_echoed == 1  # the greeting still played and was acknowledged


async def test_nothing_listening_is_a_connect_or_http_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_call(
        f"http://127.0.0.1:{port}", parse_script("wait"), options=options(timeout_s=1)
    )
    assert [e.kind for e in result.errors] == [ErrorKind.http]


async def test_a_bad_server_url_is_refused_before_dialling():
    with pytest.raises(dial.DialError):
        await run_call("ftp://example.com", parse_script("wait"), options=options())


# -- many calls -------------------------------------------------------------------------------


async def test_load_runs_calls_at_once_and_reports_percentiles(gateway: FakeGateway):
    tts = FakeTts(ms_per_char=20)
    script = parse_script("wait 100\nsay Busco un piso.\nwait 100")
    report = await run_load(
        gateway.base_url,
        3,
        1,
        options=LoadOptions(
            call=CallOptions(auth_token=TOKEN, timeout_s=5, tts=tts),
            script=script,
            stagger_ms=10,
            server_pid=os.getpid(),
        ),
    )
    assert report.ok, [r.errors for r in report.results]
    assert report.calls == 3
    assert len(gateway.webhooks) == 3
    assert report.response.count == 3
    assert report.errors == {}
    assert len({r.call_sid for r in report.results}) == 3
    assert tts.requests == [("Busco un piso.", "es")]  # synthesized once for all calls
    assert report.simulator_cpu_s > 0
    assert report.server_cpu_s is not None  # in this process, on the uvicorn thread
    assert report.frames_sent == sum(r.frames_sent for r in report.results)
    text = "\n".join(report.lines())
    assert "calls: 3  ok: 3  failed: 0" in text
    assert "response latency (end of caller speech → first agent audio): p50" in text
    assert "errors: none" in text


def test_percentiles_interpolate_between_ranks():
    assert percentile([10.0], 0.99) == 10
    assert percentile([0.0, 100.0], 0.5) == 50
    assert percentile(list(range(101)), 0.95) == 95
    summary = Percentiles.of([30.0, 10.0, 20.0])
    assert (summary.count, summary.p50, summary.max) == (3, 20, 30)
    assert str(Percentiles.of([])) == "no samples"


def test_cpu_is_read_from_proc():
    spent = process_cpu_s(os.getpid())
    assert spent > 0
    with pytest.raises(CpuReadError):
        process_cpu_s(2**22 + 12345)


# -- the caller's voice ------------------------------------------------------------------------


def test_speech_frames_drop_the_silence_around_speech():
    speech = bytes([0x20]) * 400  # 50 ms
    silence = mulaw.silence(800)
    frames = speech_frames(silence + speech + silence)
    assert len(frames) == 3  # 50 ms, padded to whole 20 ms frames
    assert all(len(frame) == 160 for frame in frames)
    assert speech_frames(silence) == ()
    with pytest.raises(AudioSourceError, match="no speech"):
        caller_audio("quiet", silence)


def test_silence_payload_is_twenty_ms_of_mulaw_silence():
    import base64

    assert base64.b64decode(SILENCE_PAYLOAD) == mulaw.silence(160)


def test_wav_files_of_any_rate_and_channels_become_8k_mulaw(tmp_path: Path):
    tone = (8000 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype("<i2")
    stereo = np.repeat(tone, 2).tobytes()  # one second at 16 kHz, both channels
    path = tmp_path / "tone.wav"
    path.write_bytes(wav.wav_bytes(stereo, 16000, 2))
    audio = mulaw_from_wav(path)
    assert abs(len(audio) - 8000) <= 2
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(AudioSourceError, match="not a usable WAV"):
        mulaw_from_wav(tmp_path / "junk.wav")
    with pytest.raises(AudioSourceError, match="cannot read"):
        mulaw_from_wav(tmp_path / "missing.wav")


async def test_the_cache_synthesizes_each_utterance_once_even_when_asked_together():
    tts = FakeTts(ms_per_char=20, latency_ms=20)
    cache = UtteranceCache(tts)
    line = Utterance(text="Hola, buenos días.")
    first, second = await asyncio.gather(cache.get(line), cache.get(line))
    assert first is second
    assert tts.requests == [("Hola, buenos días.", "es")]
    assert first.duration_ms == 20 * len(first.payloads) > 0


async def test_the_offline_voice_speaks_text_utterances():
    cache = UtteranceCache(EspeakTts())
    audio = await cache.get(Utterance(text="Hola, busco un piso en Madrid.", language="es"))
    assert 800 <= audio.duration_ms <= 5000


# -- the webhook half ----------------------------------------------------------------------------


def test_twiml_gives_the_stream_and_its_parameters():
    document = twiml.connect_stream(
        ws_url="wss://voice.example.com/twilio/media", call_id=42, token="t"
    )
    target = dial.read_twiml(document)
    assert target == dial.StreamTarget(
        "wss://voice.example.com/twilio/media", {"call_id": "42", "token": "t"}
    )


@pytest.mark.parametrize(
    ("document", "refused", "reason"),
    [
        (twiml.refuse_busy("es"), True, "líneas están ocupadas"),
        (twiml.hangup(), True, "answered <Hangup>"),
        ("<Response><Connect><Stream url='https://x/m'/></Connect></Response>", False, "wss://"),
        ("<Response><Connect><Stream url='wss://x/m?a=1'/></Connect></Response>", False, "query"),
        ("not xml", False, "not XML"),
        ("<Other/>", False, "root is <Other>"),
        ('<!DOCTYPE r [<!ENTITY a "b">]><Response/>', False, "DTD"),
    ],
)
def test_twiml_that_opens_no_stream_says_why(document: str, refused: bool, reason: str):
    with pytest.raises(dial.DialError) as caught:
        dial.read_twiml(document)
    assert caught.value.refused is refused
    assert reason in caught.value.reason


def test_addresses_connect_locally_and_sign_publicly():
    local = dial.Address.of("http://127.0.0.1:8000/")
    assert local.voice_url == local.signed_voice_url == "http://127.0.0.1:8000/twilio/voice"
    assert local.forwarded_headers() == {}
    assert (
        local.socket_url("ws://127.0.0.1:8000/twilio/media") == "ws://127.0.0.1:8000/twilio/media"
    )

    public = dial.Address.of("http://127.0.0.1:8000", "voice.example.com")
    assert public.signed_voice_url == "https://voice.example.com/twilio/voice"
    assert public.socket_url("wss://voice.example.com/twilio/media") == (
        "ws://127.0.0.1:8000/twilio/media"
    )
    assert public.forwarded_headers() == {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "voice.example.com",
    }
    plain = dial.Address.of("https://gw.internal", "http://tunnel.example.com:8080")
    assert plain.signed_voice_url == "http://tunnel.example.com:8080/twilio/voice"
    assert plain.socket_url("ws://tunnel.example.com:8080/twilio/media") == (
        "wss://gw.internal/twilio/media"
    )
    for bad in ("127.0.0.1:8000", "http://host/prefix", "ftp://host"):
        with pytest.raises(dial.DialError):
            dial.Address.of(bad)
    with pytest.raises(dial.DialError):
        dial.Address.of("http://host", "voice.example.com/path")


def test_the_signature_is_the_one_the_gateway_checks():
    fields = dial.webhook_fields(
        call_sid="CA1", account_sid="AC1", from_number=CALLER, to_number=BROKER
    )
    url = "https://voice.example.com/twilio/voice"
    header = dial.sign(TOKEN, url, fields)
    signature.check(
        auth_token=TOKEN, url=url, fields=fields, signature=header[dial.SIGNATURE_HEADER]
    )
    assert dial.sign(None, url, fields) == {}


# -- the command line --------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(simulate_call)
    return app


def test_the_command_runs_a_call_from_wav_files(server: FakeGateway, tmp_path: Path):
    server.reset()
    frames = FakeTts().frames_for("Hola, buenas.")
    from voice_gateway.providers.tts_fake import speech_frames as fake_frames

    voice = mulaw.decode(b"".join(fake_frames()[:frames]))
    path = tmp_path / "hola.wav"
    path.write_bytes(wav.wav_bytes(resample_once(voice, 8000, 16000), 16000, 1))
    saved = tmp_path / "out" / "agent.wav"
    outcome = CliRunner().invoke(
        cli(),
        [
            server.base_url,
            "--wav", str(path),
            "--auth-token", TOKEN,
            "--dtmf", "3@100",
            "--save-audio", str(saved),
            "--timeout", "5",
        ],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    assert "caller: [hola.wav]" in outcome.output
    assert "response latency per turn:" in outcome.output
    assert "keys pressed: 3" in outcome.output
    assert "errors: none" in outcome.output
    assert saved.is_file()


def test_the_command_exits_1_when_a_call_fails_and_2_on_bad_input(server: FakeGateway):
    server.reset()
    refused = CliRunner().invoke(
        cli(), [server.base_url, "--wav", __file__, "--auth-token", "wrong", "--quiet"]
    )
    assert refused.exit_code == 2  # this file is not a WAV: refused before dialling
    assert "not a usable WAV" in refused.output
    bad_key = CliRunner().invoke(cli(), [server.base_url, "--dtmf", "x@5"])
    assert bad_key.exit_code == 2
    assert "DTMF" in bad_key.output
    bad_url = CliRunner().invoke(cli(), ["localhost:8000"])
    assert bad_url.exit_code == 2


def test_the_command_reports_failed_calls_with_exit_code_1(server: FakeGateway, tmp_path: Path):
    server.reset()
    script = tmp_path / "call.txt"
    script.write_text("wait\n", encoding="utf-8")
    outcome = CliRunner().invoke(
        cli(),
        [server.base_url, "--script", str(script), "--auth-token", "wrong", "--concurrency", "2"],
    )
    assert outcome.exit_code == 1, outcome.output
    assert "calls: 2  ok: 0  failed: 2" in outcome.output
    assert "errors: http 2" in outcome.output


# -- small parts -------------------------------------------------------------------------------


def test_streams_start_half_a_beat_off_the_tickers_grid():
    clock = iter([1.0])
    ticker = Ticker(clock=lambda: next(clock))  # origin 1000 ms
    for now in (1000.0, 1003.0, 1009.9, 1010.0, 1019.0, 1234.5):
        start = ticker.align(now)
        assert now - 20 < start <= now
        assert (start - 1000 - 10) % 20 == pytest.approx(0)


def test_phone_numbers_are_checked_before_dialling():
    dial.check_number("+34910000001", "to")
    dial.check_number("anonymous", "from", anonymous_ok=True)
    for bad in ("34910000001", "+34 910 000 001", "+1234567", "+1234567890123456", "anonymous"):
        with pytest.raises(dial.DialError):
            dial.check_number(bad, "to")


async def test_a_bad_number_is_refused_before_dialling():
    with pytest.raises(dial.DialError, match=r"E\.164"):
        await run_call(
            "http://127.0.0.1:1", parse_script("wait"), options=options(to_number="910000001")
        )


async def test_the_self_benchmark_runs_end_to_end():
    lines: list[str] = []
    report = await bench_simulator(
        calls=2,
        turns=2,
        greeting_ms=200,
        reply_ms=600,
        reply_delay_ms=50,
        caller_ms_per_char=8,
        echo=lines.append,
    )
    assert report.ok, [r.errors for r in report.results]
    assert report.barge_in.count == 2
    assert report.server_cpu_s is not None  # read from the child's /proc/PID/stat
    assert any(line.startswith("simulator cost: ") for line in lines)
