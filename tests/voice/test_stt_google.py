"""Google STT: pure cores first, then the real client against the local gRPC stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.cloud import speech_v1
from google.cloud.speech_v1.services.speech.transports import SpeechGrpcAsyncIOTransport

from tests.voice.speech_audio import frames, silence, tone
from tests.voice.standins.google_speech import GoogleSpeechStandIn, Utterance
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError, Transcript
from voice_gateway.providers.stt_google import (
    MAX_REQUEST_BYTES,
    Batch,
    FrameBatcher,
    GoogleSpeechToText,
    GoogleSttError,
    GoogleSttOptions,
    GoogleSttStream,
    Next,
    ReplayBuffer,
    after_stream_end,
    resolve_language,
    restart_due,
    streaming_config,
)

# ---------------------------------------------------------------- language and config


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("es", "es-US"),
        ("en", "en-US"),
        ("ES", "es-US"),
        ("es-CL", "es-US"),  # the broker locale's own entry
        ("es_cl", "es-US"),
        ("es-MX", "es-MX"),  # a locale with no entry goes to Google as is
        ("en-gb", "en-GB"),
    ],
)
def test_language_resolution(language: str, expected: str) -> None:
    mapping = {"es": "es-US", "en": "en-US", "es-CL": "es-US"}
    assert resolve_language(language, mapping) == expected


@pytest.mark.parametrize("language", ["pt", "", "spanish", "es-!!"])
def test_unknown_language_is_refused_before_any_network(language: str) -> None:
    with pytest.raises(GoogleSttError, match="GOOGLE_STT_LANGUAGES"):
        resolve_language(language, {"es": "es-US", "en": "en-US"})


def test_streaming_config_is_mulaw_8k_telephony_with_interims_and_punctuation() -> None:
    config = streaming_config(GoogleSttOptions(), "es-US")
    recognition = config.config
    assert recognition.encoding == speech_v1.RecognitionConfig.AudioEncoding.MULAW
    assert recognition.sample_rate_hertz == 8000
    assert recognition.language_code == "es-US"
    assert recognition.model == "telephony"
    assert recognition.enable_automatic_punctuation
    assert config.interim_results
    assert not config.single_utterance


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": ""},
        {"batch_ms": 10},
        {"batch_ms": 4000},
        {"restart_after_s": 300, "restart_deadline_s": 310},
        {"restart_after_s": 200, "restart_deadline_s": 100},
        {"max_replay_ms": 50},
        {"reconnects": -1},
    ],
)
def test_options_are_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        GoogleSttOptions(**kwargs)


def test_options_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_STT_MODEL", "phone_call")
    monkeypatch.setenv("GOOGLE_STT_LANGUAGES", '{"es": "es-ES", "en": "en-GB"}')
    monkeypatch.setenv("GOOGLE_STT_RESTART_S", "200")
    settings = GatewaySettings(_env_file=None)
    options = GoogleSttOptions.from_settings(settings)
    assert options.model == "phone_call"
    assert dict(options.languages) == {"es": "es-ES", "en": "en-GB"}
    assert options.restart_after_s == 200
    assert 200 < options.restart_deadline_s < 305


# ---------------------------------------------------------------- batching


def test_frames_are_batched_to_100_ms_requests() -> None:
    batcher = FrameBatcher(100)
    out = [batcher.push(bytes([i]) * 160, i * 20) for i in range(12)]
    batches = [b for b in out if b is not None]
    assert [(len(b.data), b.call_ms) for b in batches] == [(800, 0), (800, 100)]
    assert batches[0].data == b"".join(bytes([i]) * 160 for i in range(5))
    assert batcher.flush() == Batch(bytes([10]) * 160 + bytes([11]) * 160, 200)
    assert batcher.flush() is None


def test_a_gap_in_timestamps_closes_the_batch() -> None:
    batcher = FrameBatcher(100)
    assert batcher.push(b"\x01" * 160, 0) is None
    assert batcher.push(b"\x02" * 160, 20) is None
    closed = batcher.push(b"\x03" * 160, 500)  # Twilio skipped 440 ms
    assert closed == Batch(b"\x01" * 160 + b"\x02" * 160, 0)
    assert batcher.flush() == Batch(b"\x03" * 160, 500)


# ---------------------------------------------------------------- replay buffer


def test_replay_maps_stream_time_to_the_call_clock_across_gaps() -> None:
    replay = ReplayBuffer(max_ms=10_000)
    replay.append(b"a" * 800, call_ms=1000)  # stream 0-100
    replay.append(b"b" * 800, call_ms=1100)  # stream 100-200
    replay.append(b"c" * 800, call_ms=5000)  # stream 200-300, after a gap
    assert replay.to_call_ms(50) == 1050
    assert replay.to_call_ms(150) == 1150
    assert replay.to_call_ms(250) == 5050
    assert replay.to_call_ms(300) == 5100


def test_finalized_audio_is_released_to_the_exact_millisecond() -> None:
    replay = ReplayBuffer(max_ms=10_000)
    for index in range(3):
        replay.append(bytes([index]) * 800, call_ms=index * 100)
    replay.finalized(130)
    assert replay.held_ms == 170
    pieces = replay.restart()
    assert pieces == [bytes([1]) * (70 * 8) + bytes([2]) * 800]
    # The new stream's time 0 is call time 130.
    assert replay.to_call_ms(0) == 130
    assert replay.to_call_ms(100) == 230
    assert replay.stream_ms == 170


def test_restart_with_nothing_held_continues_the_call_clock() -> None:
    replay = ReplayBuffer(max_ms=10_000)
    replay.append(b"x" * 800, call_ms=2000)
    replay.finalized(100)
    assert replay.restart() == []
    assert replay.stream_ms == 0
    replay.append(b"y" * 800, call_ms=2100)
    assert replay.to_call_ms(40) == 2140


def test_replay_is_bounded_and_cut_into_requests_google_accepts() -> None:
    replay = ReplayBuffer(max_ms=5000)
    for index in range(100):  # 10 s of audio, no final
        replay.append(b"\xff" * 800, call_ms=index * 100)
    assert replay.held_ms == 5000
    pieces = replay.restart()
    assert sum(len(p) for p in pieces) == 5000 * 8
    assert all(len(p) <= MAX_REQUEST_BYTES for p in pieces)
    assert replay.to_call_ms(0) == 5000


def test_times_before_what_is_held_are_extrapolated() -> None:
    replay = ReplayBuffer(max_ms=10_000)
    replay.append(b"a" * 800, call_ms=700)
    replay.append(b"b" * 800, call_ms=800)
    replay.finalized(200)
    assert replay.held_ms == 0
    assert replay.to_call_ms(150) == 850


# ---------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("code", "closing", "answered", "failures", "expected"),
    [
        (None, True, True, 0, Next.finish),
        ("UNAVAILABLE", True, True, 0, Next.finish),
        ("OUT_OF_RANGE", False, True, 0, Next.restart),
        ("OUT_OF_RANGE", False, False, 0, Next.restart),
        ("OUT_OF_RANGE", False, False, 1, Next.fail),
        (None, False, True, 0, Next.restart),
        ("UNAVAILABLE", False, True, 0, Next.reconnect),
        ("DEADLINE_EXCEEDED", False, False, 0, Next.reconnect),
        ("INTERNAL", False, True, 0, Next.reconnect),
        ("UNAVAILABLE", False, False, 1, Next.fail),
        ("INVALID_ARGUMENT", False, True, 0, Next.fail),
        ("PERMISSION_DENIED", False, False, 0, Next.fail),
        ("RESOURCE_EXHAUSTED", False, True, 0, Next.fail),
    ],
)
def test_what_happens_when_a_stream_ends(
    code: str | None, closing: bool, answered: bool, failures: int, expected: Next
) -> None:
    step = after_stream_end(
        code, closing=closing, answered=answered, failures=failures, reconnects=1
    )
    assert step is expected


@pytest.mark.parametrize(
    ("age", "utterance_open", "expected"),
    [
        (100, False, False),
        (240, False, True),
        (240, True, False),
        (284, True, False),
        (285, True, True),
    ],
)
def test_restart_waits_for_a_pause_until_the_deadline(
    age: float, utterance_open: bool, expected: bool
) -> None:
    due = restart_due(
        age, utterance_open=utterance_open, restart_after_s=240, restart_deadline_s=285
    )
    assert due is expected


# ---------------------------------------------------------------- against the stand-in

SCRIPT = [
    Utterance("Hola.", duration_ms=400),
    Utterance("Busco un departamento.", duration_ms=800),
    Utterance("En Providencia, con dos dormitorios.", duration_ms=1400),
]


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Call:
    """One recognition driven like the call session drives it, results read alongside."""

    def __init__(self, stream: GoogleSttStream, clock: ManualClock | None = None) -> None:
        self.stream = stream
        self.clock = clock
        self.position_ms = 0
        self.results: list[Transcript] = []
        self.error: ProviderError | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for result in self.stream.results():
                self.results.append(result)
        except ProviderError as exc:
            self.error = exc

    @property
    def finals(self) -> list[Transcript]:
        return [r for r in self.results if r.is_final]

    async def play(self, pcm: bytes) -> None:
        for frame in frames(pcm, start_ms=self.position_ms):
            if self.clock is not None:
                self.clock.now += 0.02
            await self.stream.send(frame)
        self.position_ms += len(pcm) // 16

    async def hang_up(self) -> None:
        await self.stream.close()
        await self._reader


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for the network side to catch up; not a timing assertion."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


@pytest_asyncio.fixture(loop_scope="function")  # the server must live in the test's loop
async def standin() -> AsyncIterator[GoogleSpeechStandIn]:
    async with GoogleSpeechStandIn(SCRIPT) as server:
        yield server


def provider_for(
    server: GoogleSpeechStandIn, clock: ManualClock | None = None, **options: Any
) -> GoogleSpeechToText:
    return GoogleSpeechToText(
        GoogleSttOptions(**options),
        api_endpoint=server.address,
        insecure=True,
        clock=clock or time.monotonic,
    )


async def test_transcripts_come_back_on_the_call_clock(standin: GoogleSpeechStandIn) -> None:
    stt = provider_for(standin)
    call = Call(await stt.open_stream(language="es"))
    call.position_ms = 5000  # the stream opened 5 s into the call
    await call.play(silence(300) + tone(400) + silence(600) + tone(800) + silence(600))
    await call.hang_up()
    await stt.aclose()

    assert call.error is None
    assert [(f.text, f.end_ms) for f in call.finals] == [
        ("Hola.", 5700),
        ("Busco un departamento.", 7100),
    ]
    assert [f.confidence for f in call.finals] == [pytest.approx(0.92)] * 2
    interims = [r for r in call.results if not r.is_final]
    assert interims
    # Interims end where the audio heard so far ends (trailing silence included).
    assert all(r.end_ms is not None and 5300 < r.end_ms <= 7700 for r in interims)
    log = standin.streams[0]
    assert log.config is not None
    assert log.config.config.language_code == "es-US"
    assert log.config.config.model == "telephony"
    assert log.outcome == "half-closed"
    assert log.request_sizes[0] == 0  # the config request carries no audio
    assert set(log.request_sizes[1:-1]) == {800}  # 100 ms of μ-law per request


async def test_broker_locale_picks_the_google_language(standin: GoogleSpeechStandIn) -> None:
    stt = GoogleSpeechToText(
        GoogleSttOptions(languages={"es": "es-US", "es-ES": "es-ES", "en": "en-US"}),
        api_endpoint=standin.address,
        insecure=True,
    )
    call = Call(await stt.open_stream(language="es-ES"))
    await call.play(tone(400) + silence(400))
    await call.hang_up()
    assert standin.streams[0].config is not None
    assert standin.streams[0].config.config.language_code == "es-ES"


async def test_close_finalises_the_utterance_in_progress(standin: GoogleSpeechStandIn) -> None:
    call = Call(await provider_for(standin).open_stream(language="es"))
    await call.play(silence(200) + tone(800))  # hangs up while still speaking
    await call.hang_up()
    assert [f.text for f in call.finals] == ["Busco un departamento."]
    assert standin.streams[0].outcome == "half-closed"
    with pytest.raises(GoogleSttError, match="send after close"):
        await call.stream.send(frames(tone(20))[0])


async def test_restart_between_utterances_loses_and_repeats_nothing(
    standin: GoogleSpeechStandIn,
) -> None:
    clock = ManualClock()
    stt = provider_for(standin, clock, restart_after_s=1.2, restart_deadline_s=30.0)
    call = Call(await stt.open_stream(language="es"), clock)
    await call.play(silence(200) + tone(400) + silence(400))
    await until(lambda: len(call.finals) == 1, "the first final")
    await call.play(silence(600))  # past restart_after_s and nobody speaking: restart
    assert call.stream.restarts == 1
    await call.play(tone(800) + silence(600))
    await call.hang_up()

    assert [(f.text, f.end_ms) for f in call.finals] == [
        ("Hola.", 600),
        ("Busco un departamento.", 2400),
    ]
    assert [log.outcome for log in standin.streams] == ["cancelled", "half-closed"]
    assert standin.streams[1].finals == ["Busco un departamento."]


async def test_restart_waits_while_the_caller_is_speaking(standin: GoogleSpeechStandIn) -> None:
    clock = ManualClock()
    stt = provider_for(standin, clock, restart_after_s=0.3, restart_deadline_s=30.0)
    call = Call(await stt.open_stream(language="es"), clock)
    await call.play(tone(200))
    await until(lambda: bool(call.results), "an interim")
    await call.play(tone(1200))
    assert call.stream.restarts == 0  # past restart_after_s, but mid-utterance: kept
    await call.play(silence(400))
    await until(lambda: bool(call.finals), "the final")
    await call.play(silence(100))
    assert call.stream.restarts == 1
    await call.hang_up()
    assert [f.text for f in call.finals] == ["En Providencia, con dos dormitorios."]


async def test_deadline_restart_mid_utterance_replays_it(standin: GoogleSpeechStandIn) -> None:
    clock = ManualClock()
    stt = provider_for(standin, clock, restart_after_s=0.5, restart_deadline_s=0.9)
    call = Call(await stt.open_stream(language="es"), clock)
    await call.play(silence(400) + tone(400))
    await until(lambda: bool(call.results), "an interim")
    await call.play(tone(1000) + silence(500))  # the deadline passes in the middle
    await call.hang_up()

    assert call.stream.restarts >= 1
    assert [(f.text, f.end_ms) for f in call.finals] == [
        ("En Providencia, con dos dormitorios.", 1800)
    ]
    # Earlier streams heard only the beginning; nothing they said was a final.
    assert [log.finals for log in standin.streams[:-1]] == [[]] * (len(standin.streams) - 1)
    assert standin.streams[-1].finals == ["En Providencia, con dos dormitorios."]


async def test_a_final_still_in_flight_on_the_old_stream_is_neither_lost_nor_doubled(
    standin: GoogleSpeechStandIn,
) -> None:
    clock = ManualClock()
    stt = provider_for(standin, clock, restart_after_s=1.5, restart_deadline_s=1.5)
    call = Call(await stt.open_stream(language="es"), clock)
    standin.hold()  # Google has recognised it but the answer is still on its way
    await call.play(silence(200) + tone(800) + silence(400))
    await until(lambda: bool(standin.streams and standin.streams[0].recognised), "the old final")
    await call.play(silence(200))  # the deadline: switch streams with that final in flight
    assert call.stream.restarts == 1
    await until(lambda: len(standin.streams) == 2, "the new stream")
    await until(lambda: standin.streams[1].audio_ms >= 1400, "the replay")
    standin.release()
    await call.play(silence(200))
    await call.hang_up()

    assert [(f.text, f.end_ms) for f in call.finals] == [("Busco un departamento.", 1000)]
    # Both streams recognised it; only the new one's reached the client.
    assert [log.recognised for log in standin.streams] == [["Busco un departamento."]] * 2
    assert standin.finals == ["Busco un departamento."]


async def test_google_duration_limit_restarts_transparently() -> None:
    async with GoogleSpeechStandIn(SCRIPT, max_stream_ms=3000) as server:
        call = Call(await provider_for(server).open_stream(language="es"))
        await call.play(silence(1900) + tone(400) + silence(600))
        await until(lambda: len(call.finals) == 1, "the first final")
        await call.play(silence(200))  # crosses the stand-in's 3 s limit
        await until(lambda: len(server.streams) == 2, "the replacement stream")
        await call.play(tone(800) + silence(600))
        await call.hang_up()
    assert call.error is None
    assert [(f.text, f.end_ms) for f in call.finals] == [
        ("Hola.", 2300),
        ("Busco un departamento.", 3900),
    ]
    assert server.streams[0].outcome == "error: OUT_OF_RANGE"


async def test_one_reconnect_with_replay_after_unavailable(standin: GoogleSpeechStandIn) -> None:
    standin.fail_next_stream(grpc.StatusCode.UNAVAILABLE, "backend restarting", after_ms=500)
    call = Call(await provider_for(standin).open_stream(language="es"))
    await call.play(silence(200) + tone(300))  # the stream dies mid-word
    await until(lambda: len(standin.streams) == 2, "the reconnect")
    await call.play(tone(500) + silence(600))
    await call.hang_up()
    assert call.error is None
    assert [(f.text, f.end_ms) for f in call.finals] == [("Busco un departamento.", 1000)]
    assert standin.streams[0].outcome == "error: UNAVAILABLE"


async def test_a_second_failure_in_a_row_is_a_provider_error(standin: GoogleSpeechStandIn) -> None:
    standin.fail_next_stream(grpc.StatusCode.UNAVAILABLE, "down", after_ms=200)
    standin.fail_next_stream(grpc.StatusCode.DEADLINE_EXCEEDED, "still down", after_ms=300)
    call = Call(await provider_for(standin).open_stream(language="es"))
    await call.play(silence(300))
    await until(lambda: call.error is not None, "the error")
    assert isinstance(call.error, GoogleSttError)
    assert call.error.code == "DEADLINE_EXCEEDED"
    assert call.error.provider == "google-stt"
    with pytest.raises(GoogleSttError, match="still down"):
        await call.stream.send(frames(silence(20))[0])
    await call.hang_up()
    assert len(standin.streams) == 2


async def test_permanent_errors_are_not_retried(standin: GoogleSpeechStandIn) -> None:
    standin.fail_next_stream(grpc.StatusCode.PERMISSION_DENIED, "Speech API not enabled")
    call = Call(await provider_for(standin).open_stream(language="es"))
    await until(lambda: call.error is not None, "the error")
    assert call.error is not None
    assert "PERMISSION_DENIED: Speech API not enabled" in str(call.error)
    await call.hang_up()
    assert len(standin.streams) == 1


async def test_a_stalled_stream_is_a_provider_error(standin: GoogleSpeechStandIn) -> None:
    standin.stall_next_stream(after_ms=100)
    stt = provider_for(standin, max_backlog_ms=1000, close_timeout_s=0.2)
    call = Call(await stt.open_stream(language="es"))

    async def feed_until_refused() -> None:
        for _ in range(1200):  # up to two minutes of audio, fed as fast as gRPC takes it
            await call.play(silence(100))
            await asyncio.sleep(0.001)

    with pytest.raises(GoogleSttError, match="stalled"):
        await feed_until_refused()
    await call.hang_up()
    assert isinstance(call.error, GoogleSttError)
    print(f"\nstalled after {call.position_ms} ms of audio")


async def test_close_gives_up_on_a_stream_that_never_ends(standin: GoogleSpeechStandIn) -> None:
    standin.stall_next_stream(after_ms=100)
    stt = provider_for(standin, close_timeout_s=0.1)
    call = Call(await stt.open_stream(language="es"))
    await call.play(tone(300))
    await until(lambda: bool(standin.streams) and standin.streams[0].audio_ms >= 100, "the audio")
    await call.hang_up()  # returns: the stream is dropped after close_timeout_s
    assert call.error is None
    assert call.finals == []
    await until(lambda: standin.streams[0].outcome == "cancelled", "the cancellation")


async def test_unreachable_endpoint_is_a_provider_error() -> None:
    async with GoogleSpeechStandIn() as server:
        address = server.address
    stt = GoogleSpeechToText(api_endpoint=address, insecure=True)
    call = Call(await stt.open_stream(language="en"))
    await until(lambda: call.error is not None, "the error")
    assert isinstance(call.error, GoogleSttError)
    assert call.error.code == "UNAVAILABLE"
    await call.hang_up()
    await stt.aclose()


async def test_settings_point_the_provider_at_a_local_endpoint(
    standin: GoogleSpeechStandIn,
) -> None:
    settings = GatewaySettings(
        _env_file=None,
        STT_PROVIDER="google",
        GOOGLE_STT_ENDPOINT=standin.address,
        GOOGLE_STT_LANGUAGES={"es": "es-CL", "en": "en-US"},
    )
    stt = GoogleSpeechToText.from_settings(settings)
    call = Call(await stt.open_stream(language="es"))
    await call.play(tone(400) + silence(500))
    await call.hang_up()
    await stt.aclose()
    assert [f.text for f in call.finals] == ["Hola."]
    assert standin.streams[0].config is not None
    assert standin.streams[0].config.config.language_code == "es-CL"


async def test_missing_credentials_file_is_a_provider_error(tmp_path: Path) -> None:
    stt = GoogleSpeechToText(credentials_file=tmp_path / "missing.json")
    with pytest.raises(GoogleSttError, match="cannot create the Google STT client"):
        await stt.open_stream(language="es")


def test_insecure_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="api_endpoint"):
        GoogleSpeechToText(insecure=True)


async def test_standin_refuses_audio_before_config(standin: GoogleSpeechStandIn) -> None:
    """The stand-in holds the client to Google's rules (the client never breaks them)."""
    channel = grpc.aio.insecure_channel(standin.address)
    client = speech_v1.SpeechAsyncClient(transport=SpeechGrpcAsyncIOTransport(channel=channel))

    async def audio_first() -> AsyncIterator[speech_v1.StreamingRecognizeRequest]:
        yield speech_v1.StreamingRecognizeRequest(audio_content=b"\xff" * 160)

    responses = await client.streaming_recognize(requests=audio_first(), retry=None)
    with pytest.raises(Exception, match="Malordered Data Received"):
        async for _ in responses:
            pass
    await channel.close()
