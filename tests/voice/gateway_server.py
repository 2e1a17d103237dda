"""The real gateway on loopback, for tests that phone it as Twilio would.

`running_gateway` serves the real ASGI app (`voice_gateway.app.create_app`) with uvicorn
on 127.0.0.1, on a port the OS picked, in a background thread with its own event loop,
against the test PostgreSQL database that tests/conftest.py created. Providers are the
fakes, chosen through the same environment variables an operator would set; every
settings, token, admission and runtime cache is cleared before the server starts and
again after it stops, so each test sees the configuration it asked for and leaves none
behind.

The runtime (`VoiceRuntime`) is built before the first call and exposed, so a test can
read what the fake telephony recorded or swap a provider for one that fails on cue.
The server thread shares the process with the test, so the gateway's log records reach
pytest's `caplog`.

Calls come from the simulator (`Gateway.options` signs them for this server) or, when a
test must misbehave as Twilio never would, from `TwilioStream`, a hand-driven stream.

Helpers for the CRM side: a broker owning a fresh Twilio number (`make_line`), and
`wait_for`, which polls a condition until it holds (an event, not a timing: a generous
deadline only turns a hang into a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent import config as agent_config
from crm import config as crm_config
from crm.actor import Actor
from crm.brokers import service as broker_service
from crm.calls.models import Call, CallTurn
from crm.db import session_scope
from voice_gateway import admission as admission_module
from voice_gateway import call_control as call_control_module
from voice_gateway import config as gateway_config
from voice_gateway import metrics as metrics_module
from voice_gateway import runtime as runtime_module
from voice_gateway.providers.telephony_fake import FakeTelephony
from voice_gateway.providers.tts_fake import speech_frames
from voice_gateway.runtime import VoiceRuntime
from voice_gateway.simulator import dial
from voice_gateway.simulator.caller import CallOptions
from voice_gateway.simulator.playback import MarkEchoed, PlaybackBuffer, PlaybackEvent
from voice_gateway.twilio import protocol as tw
from voice_gateway.twilio import tokens as tokens_module

AUTH_TOKEN = "gateway-test-auth-token-0123456789"
CALL_TOKEN_SECRET = "gateway-test-call-token-secret-0123456789"

#: Fake providers, short timings: a whole call takes a few seconds of wall time.
FAST_ENV: Mapping[str, str] = {
    "STT_PROVIDER": "fake",
    "TTS_PROVIDER": "fake",
    "TELEPHONY_PROVIDER": "fake",
    "LLM_PROVIDER": "fake",
    "VAD": "webrtc",
    "TWILIO_VALIDATE_SIGNATURES": "true",
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "CALL_TOKEN_SECRET": CALL_TOKEN_SECRET,
    "FAKE_STT_LATENCY_MS": "0",
    "FAKE_TTS_LATENCY_MS": "0",
    "FAKE_TTS_MS_PER_CHAR": "5",
    "FAKE_LLM_LATENCY_MS": "0",
    "FAKE_LLM_TOKEN_INTERVAL_MS": "0",
    "ENDPOINT_SILENCE_MS": "300",
    "BARGE_IN_MIN_MS": "120",
    "MAX_CONCURRENT_CALLS": "20",
    "TTS_CACHE_ON_DISK": "false",
}


def clear_caches() -> None:
    """Forget every cached settings object and process-wide singleton of the gateway."""
    for cached in (
        gateway_config.get_settings,
        agent_config.get_settings,
        crm_config.get_settings,
        admission_module.get_admission,
        call_control_module.get_call_control,
        tokens_module.get_call_tokens,
        metrics_module.get_metrics,
        runtime_module.get_runtime,
    ):
        cached.cache_clear()


@dataclass
class Gateway:
    """A running gateway: where it listens and the runtime its calls use."""

    base_url: str
    public_host: str
    runtime: VoiceRuntime
    recordings: Path

    @property
    def telephony(self) -> FakeTelephony:
        telephony = self.runtime.telephony
        assert isinstance(telephony, FakeTelephony)
        return telephony

    def options(self, *, to_number: str, from_number: str, **changes: Any) -> CallOptions:
        """How the simulator dials this server: signed, at its public host."""
        return CallOptions(
            to_number=to_number,
            from_number=from_number,
            public_host=self.public_host,
            auth_token=AUTH_TOKEN,
            **changes,
        )


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def running_gateway(tmp_path: Path, **env: str) -> Iterator[Gateway]:
    """The real app on 127.0.0.1:<free port> with `FAST_ENV` plus `env` (strings, as in
    the environment); stopped, and every cache cleared, on the way out."""
    from voice_gateway.app import create_app

    sock = _free_socket()
    port = sock.getsockname()[1]
    public_host = f"127.0.0.1:{port}"
    recordings = tmp_path / "recordings"
    values = {
        **FAST_ENV,
        "PUBLIC_HOST": public_host,
        "DATA_DIR": str(tmp_path / "data"),
        "RECORDINGS_DIR": str(recordings),
        **env,
    }
    with _environment(values):
        clear_caches()
        try:
            runtime = runtime_module.get_runtime()
            config = uvicorn.Config(
                create_app(),
                log_config=None,
                access_log=False,
                lifespan="off",
                ws_ping_interval=None,
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name=f"gateway-{port}", daemon=True
            )
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start")
                time.sleep(0.01)
            try:
                yield Gateway(
                    base_url=f"http://{public_host}",
                    public_host=public_host,
                    runtime=runtime,
                    recordings=recordings,
                )
            finally:
                server.should_exit = True
                thread.join(timeout=15)
                if thread.is_alive():
                    server.force_exit = True
                    thread.join(timeout=5)
        finally:
            sock.close()
            clear_caches()


# -- the CRM side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A broker owning a Twilio number, and a caller number of its own for each test."""

    broker_id: int
    legal_name: str
    number: str
    caller: str


def random_number(prefix: str = "+3491") -> str:
    return f"{prefix}{random.randint(1_000_000, 9_999_999)}"


def make_line(*, legal_name: str | None = None, locale: str = "es") -> Line:
    """A committed broker with a fresh Twilio number; the caller is new to it (the voice
    webhook creates the lead on the first call)."""
    suffix = uuid.uuid4().hex[:8]
    number = random_number("+3491")
    name = legal_name or f"Inmobiliaria {suffix}"
    with session_scope() as db:
        broker = broker_service.create(
            db,
            name=f"Broker {suffix}",
            legal_name=name,
            locale=locale,
            twilio_numbers=[number],
            actor=Actor.system("tests"),
        )
        db.flush()
        broker_id = broker.id
    return Line(broker_id=broker_id, legal_name=name, number=number, caller=random_number("+3461"))


def call_by_sid(sid: str) -> Call | None:
    with session_scope() as db:
        call = db.scalars(select(Call).where(Call.twilio_call_sid == sid)).first()
        if call is not None:
            db.expunge(call)
        return call


def turns_of(call_id: int) -> list[CallTurn]:
    with session_scope() as db:
        turns = list(
            db.scalars(select(CallTurn).where(CallTurn.call_id == call_id).order_by(CallTurn.seq))
        )
        for turn in turns:
            db.expunge(turn)
        return turns


T = TypeVar("T")


async def wait_for(
    probe: Callable[[], T | None], *, what: str, timeout_s: float = 15.0, every_s: float = 0.05
) -> T:
    """`probe()`'s first truthy answer (run in a thread: it may query the database)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await asyncio.to_thread(probe)
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout_s:g} s")
        await asyncio.sleep(every_s)


async def ended_call(sid: str, *, timeout_s: float = 15.0) -> Call:
    """The call Twilio knows as `sid`, once the gateway's teardown has finished it."""

    def probe() -> Call | None:
        call = call_by_sid(sid)
        return call if call is not None and call.end_reason is not None else None

    return await wait_for(probe, what=f"call {sid} to end", timeout_s=timeout_s)


# -- a hand-driven media stream --------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    code: int | None
    reason: str


class TwilioStream:
    """Twilio's half of one media stream, driven by hand.

    The simulator plays whole scripted calls; a bad-input test also needs to send what
    Twilio never would, to go quiet without hanging up, or to drop the socket without
    `stop`. Where the test does not intervene this behaves as Twilio does: while
    `streaming`, a 20 ms μ-law frame every 20 ms (silence unless `say` queued speech,
    which is the fake TTS's voice: the fake STT hears it, the VAD calls it speech); the
    agent's audio goes through the simulator's `PlaybackBuffer`, so marks are echoed
    when the audio before them has played and `clear` echoes the pending ones at once.
    """

    def __init__(self, ws: ClientConnection, target: dial.StreamTarget, *, call_sid: str) -> None:
        self.ws = ws
        self.target = target
        self.call_sid = call_sid
        self.stream_sid = dial.new_sid("MZ")
        self.account_sid = "AC" + "0" * 32
        self.received: list[tw.OutboundMessage] = []
        #: (loop time in ms, message) for every media/mark/clear received.
        self.timeline: list[tuple[float, tw.OutboundMessage]] = []
        self.closed: asyncio.Future[Closed] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._playback = PlaybackBuffer()
        self._seq = 0
        self._chunk = 0
        self._stream_ms = 0
        self._speech: list[bytes] = []
        self._speech_done: asyncio.Future[None] | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._reader = asyncio.create_task(self._read())

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def dial(
        cls, gateway: Gateway, line: Line, *, start: bool = True, **start_changes: Any
    ) -> TwilioStream:
        """Ring the voice webhook, open the signed stream; with `start`, send `connected`
        and `start` (with `start_changes` applied) and begin streaming silence."""
        call_sid = dial.new_sid("CA")
        target = await ring(gateway, line, call_sid)
        ws = await connect_stream(gateway, target.url)
        stream = cls(ws, target, call_sid=call_sid)
        if start:
            await stream.send(tw.serialize(tw.Connected()))
            await stream.send(stream.start_message(**start_changes))
            stream.stream()
        return stream

    def start_message(self, **changes: Any) -> str:
        """`start` as Twilio would send it for this call; `changes` override its fields
        (`custom_parameters`, `call_sid`...)."""
        start = tw.Start(
            sequence_number=self.next_seq(),
            stream_sid=self.stream_sid,
            account_sid=self.account_sid,
            call_sid=self.call_sid,
            custom_parameters=dict(self.target.parameters),
        )
        return tw.serialize(replace(start, **changes))

    # -- sending ---------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def media_message(self, payload: bytes) -> str:
        """The next `media` of the stream: its timestamp moves on by the payload's length."""
        self._chunk += 1
        at = self._stream_ms
        self._stream_ms += len(payload) // 8
        media = tw.Media(self.next_seq(), self.stream_sid, self._chunk, at, payload)
        return tw.serialize(media)

    async def send(self, message: str | bytes) -> None:
        await self.ws.send(message)

    def stream(self) -> None:
        """Send a frame every 20 ms from now on (Twilio's steady beat)."""
        if self._pacer is None:
            self._pacer = asyncio.create_task(self._pace())

    def go_silent(self) -> None:
        """Stop sending anything at all, the socket left open (a stalled Twilio)."""
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None

    async def say(self, ms: int) -> None:
        """Speak for `ms` (whole frames) and return once the last frame is sent."""
        frames = speech_frames()
        count = max(1, ms // 20)
        self._speech.extend(frames[i % len(frames)] for i in range(count))
        self._speech_done = self._loop.create_future()
        await self._speech_done

    async def dtmf(self, digit: str) -> None:
        await self.send(tw.serialize(tw.Dtmf(self.next_seq(), self.stream_sid, digit)))

    async def stop(self) -> None:
        """Hang up as Twilio does: `stop`, then close."""
        self.go_silent()
        stop = tw.Stop(self.next_seq(), self.stream_sid, self.account_sid, self.call_sid)
        with contextlib.suppress(ConnectionClosed):
            await self.send(tw.serialize(stop))
        await self.ws.close()

    async def drop(self) -> None:
        """Close the socket without `stop` (a network failure, a crashed proxy)."""
        self.go_silent()
        await self.ws.close()

    # -- what the server sent ----------------------------------------------------------

    def now_ms(self) -> float:
        return self._loop.time() * 1000

    async def wait_closed(self, timeout_s: float = 15.0) -> Closed:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.received if type(m) is kind]

    def agent_audio_since(self, since_ms: float) -> bool:
        return any(t >= since_ms and type(m) is tw.OutboundMedia for t, m in self.timeline)

    async def agent_reply(self, since_ms: float, *, timeout_s: float = 10.0) -> None:
        """Until agent audio arrives after `since_ms` and has all played."""
        deadline = self._loop.time() + timeout_s
        while not (self.agent_audio_since(since_ms) and not self._playback.playing(self.now_ms())):
            if self.closed.done():
                raise AssertionError(f"the server closed the stream: {self.closed.result()}")
            if self._loop.time() > deadline:
                raise AssertionError(f"no agent reply within {timeout_s:g} s")
            await asyncio.sleep(0.02)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = self.now_ms()
                msg = tw.parse_outbound(message)
                self.received.append(msg)
                self.timeline.append((now, msg))
                if type(msg) is tw.OutboundMedia:
                    events = self._playback.media(now, msg.payload)
                elif type(msg) is tw.OutboundMark:
                    events = self._playback.mark(now, msg.name)
                else:
                    events = self._playback.clear(now)
                await self._echo(events)
        except ConnectionClosed:
            pass
        finally:
            self.go_silent()
            if not self.closed.done():
                self.closed.set_result(Closed(self.ws.close_code, self.ws.close_reason or ""))

    async def _echo(self, events: list[PlaybackEvent]) -> None:
        for event in events:
            if type(event) is MarkEchoed and self.ws.close_code is None:
                mark = tw.Mark(self.next_seq(), self.stream_sid, event.name)
                with contextlib.suppress(ConnectionClosed):
                    await self.send(tw.serialize(mark))

    async def _pace(self) -> None:
        started = self._loop.time()
        beat = 0
        while True:
            beat += 1
            await asyncio.sleep(max(0.0, started + beat * 0.02 - self._loop.time()))
            await self._echo(self._playback.advance(self.now_ms()))
            if self._speech:
                payload = self._speech.pop(0)
            else:
                payload = SILENCE
                if self._speech_done is not None and not self._speech_done.done():
                    self._speech_done.set_result(None)
            try:
                await self.send(self.media_message(payload))
            except ConnectionClosed:
                return


SILENCE = b"\xff" * 160


async def ring(gateway: Gateway, line: Line, call_sid: str) -> dial.StreamTarget:
    """The voice webhook, signed, as Twilio posts it; the stream its TwiML names."""
    address = dial.Address.of(gateway.base_url, gateway.public_host)
    fields = dial.webhook_fields(
        call_sid=call_sid,
        account_sid="AC" + "0" * 32,
        from_number=line.caller,
        to_number=line.number,
    )
    async with httpx.AsyncClient() as http:
        return await dial.ring(http, address, fields, auth_token=AUTH_TOKEN, timeout_s=10)


async def connect_stream(
    gateway: Gateway, stream_url: str, *, headers: Mapping[str, str] | None = None
) -> ClientConnection:
    """Open the media socket at `stream_url`, signed with the auth token unless
    `headers` says otherwise (the upgrade is signed over the public wss:// URL)."""
    address = dial.Address.of(gateway.base_url, gateway.public_host)
    sent = {**address.forwarded_headers(), **dial.sign(AUTH_TOKEN, stream_url, {})}
    if headers is not None:
        sent = {**address.forwarded_headers(), **headers}
    return await connect(
        address.socket_url(stream_url),
        additional_headers=sent,
        open_timeout=10,
        close_timeout=5,
        ping_interval=None,
        max_size=1 << 22,
    )
