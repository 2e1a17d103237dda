from __future__ import annotations

import asyncio
import time

import pytest

from tests.voice.speech_audio import frames, silence, tone
from voice_gateway.audio import mulaw
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import AudioFrame, ProviderError, Transcript
from voice_gateway.providers.stt_fake import (
    DEFAULT_SCRIPTS,
    EnergySegmenter,
    FakeSpeechToText,
    FakeSttStream,
    SegmenterConfig,
    SpeechEnded,
    SpeechStarted,
    SpokenTexts,
    bind_fake_stt_key,
    mulaw_mean_square,
    pcm_mean_square,
)


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps or the test says."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def segment_events(pcm: bytes, config: SegmenterConfig | None = None) -> list[object]:
    segmenter = EnergySegmenter(config)
    events: list[object] = []
    for frame in frames(pcm):
        event = segmenter.push_pcm(frame.pcm, frame.timestamp_ms)
        if event is not None:
            events.append(event)
    end = segmenter.flush()
    if end is not None:
        events.append(end)
    return events


async def run_stream(
    stream: FakeSttStream, audio: list[AudioFrame], clock: FakeClock | None = None
) -> list[Transcript]:
    for frame in audio:
        if clock is not None:
            clock.now += 0.02
        await stream.send(frame)
    await stream.close()
    return [result async for result in stream.results()]


# ---------------------------------------------------------------- energy segmenter


def test_segment_spans_the_loud_audio() -> None:
    audio = silence(200) + tone(500) + silence(400)
    assert segment_events(audio) == [SpeechStarted(200), SpeechEnded(200, 700)]


def test_click_shorter_than_min_speech_is_not_a_segment() -> None:
    audio = silence(200) + tone(40) + silence(400)
    assert segment_events(audio) == []


def test_pause_shorter_than_end_silence_does_not_split_a_segment() -> None:
    audio = tone(300) + silence(200) + tone(300) + silence(400)
    assert segment_events(audio) == [SpeechStarted(0), SpeechEnded(0, 800)]


def test_pause_longer_than_end_silence_splits() -> None:
    config = SegmenterConfig(end_silence_ms=160)
    audio = tone(300) + silence(200) + tone(300) + silence(400)
    assert segment_events(audio, config) == [
        SpeechStarted(0),
        SpeechEnded(0, 300),
        SpeechStarted(500),
        SpeechEnded(500, 800),
    ]


def test_flush_closes_a_segment_cut_by_the_end_of_audio() -> None:
    assert segment_events(silence(100) + tone(300)) == [SpeechStarted(100), SpeechEnded(100, 400)]


def test_quiet_audio_below_threshold_is_silence() -> None:
    assert segment_events(tone(500, amplitude=200)) == []  # about -44 dBFS
    assert segment_events(tone(500, amplitude=200), SegmenterConfig(threshold_dbfs=-50)) != []


def test_energy_on_mulaw_matches_energy_on_pcm() -> None:
    pcm = mulaw.decode(mulaw.encode(tone(20, amplitude=5000)))
    assert mulaw_mean_square(mulaw.encode(pcm)) == pytest.approx(pcm_mean_square(pcm), rel=1e-6)
    assert pcm_mean_square(b"") == 0.0
    assert mulaw_mean_square(b"") == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"threshold_dbfs": 3.0}, {"min_speech_ms": -1}, {"end_silence_ms": 0}]
)
def test_segmenter_config_is_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        SegmenterConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the fake provider

TWO_UTTERANCES = silence(200) + tone(400) + silence(500) + tone(600) + silence(500)


async def test_each_speech_segment_gets_the_next_scripted_final() -> None:
    stt = FakeSpeechToText(script=["hola", "busco casa"])
    stream = await stt.open_stream(language="es")
    results = await run_stream(stream, frames(TWO_UTTERANCES, start_ms=1000))
    assert results == [
        Transcript("hola", True, 1.0, end_ms=1600),
        Transcript("busco casa", True, 1.0, end_ms=2700),
    ]


async def test_script_cycles_and_each_stream_starts_at_the_top() -> None:
    stt = FakeSpeechToText(script=["uno"])
    first = await run_stream(await stt.open_stream(language="es"), frames(TWO_UTTERANCES))
    second = await run_stream(await stt.open_stream(language="es"), frames(TWO_UTTERANCES))
    assert [r.text for r in first] == ["uno", "uno"]
    assert first == second


async def test_default_script_follows_the_language() -> None:
    stt = FakeSpeechToText()
    results = await run_stream(await stt.open_stream(language="en-US"), frames(TWO_UTTERANCES))
    assert [r.text for r in results] == list(DEFAULT_SCRIPTS["en"][:2])
    with pytest.raises(ProviderError, match="no default script"):
        await stt.open_stream(language="de")


async def test_latency_delays_each_result_from_the_end_of_speech() -> None:
    clock = FakeClock()
    stt = FakeSpeechToText(script=["a", "b"], latency_ms=250, clock=clock, sleep=clock.sleep)
    stream = await stt.open_stream(language="es")
    results = await run_stream(stream, frames(TWO_UTTERANCES), clock)
    assert [r.text for r in results] == ["a", "b"]
    # The audio takes 2.2 s to arrive and is read only then. The first final (speech ended
    # at 1.1 s, known at 1.4 s) is long due; the second (known at 2.0 s) is due at 2.25 s:
    # 0.05 s to wait; the end of stream (closed at 2.2 s) waits out its own 0.25 s.
    assert clock.sleeps == [0.05, 0.2]


async def test_latency_when_results_are_read_as_they_come() -> None:
    clock = FakeClock()
    stt = FakeSpeechToText(script=["a"], latency_ms=300, clock=clock, sleep=clock.sleep)
    stream = await stt.open_stream(language="es")
    for frame in frames(silence(100) + tone(300) + silence(400)):
        await stream.send(frame)
    results = stream.results()
    first = await anext(results)
    assert first.text == "a"
    assert clock.sleeps == [0.3]  # the whole latency, measured from when speech ended


async def test_interims_grow_word_by_word_while_speech_goes_on() -> None:
    stt = FakeSpeechToText(script=["tres dormitorios en Ñuñoa"], interim_every_ms=200)
    stream = await stt.open_stream(language="es")
    results = await run_stream(stream, frames(tone(900) + silence(400)))
    interims = [r.text for r in results if not r.is_final]
    assert interims == [
        "tres",
        "tres dormitorios",
        "tres dormitorios en",
        "tres dormitorios en Ñuñoa",
    ]
    assert results[-1] == Transcript("tres dormitorios en Ñuñoa", True, 1.0, end_ms=900)


async def test_side_channel_text_wins_over_the_script() -> None:
    spoken = SpokenTexts()
    stt = FakeSpeechToText(script=["guion"], spoken=spoken)
    stream = await stt.open_stream(language="es", key="call-7")
    spoken.say("call-7", "quiero visitar el sábado")
    spoken.say("call-8", "otra llamada")
    results = await run_stream(stream, frames(TWO_UTTERANCES))
    assert [r.text for r in results] == ["quiero visitar el sábado", "guion"]
    assert spoken.peek("call-8") == "otra llamada"


async def test_stream_key_can_come_from_the_context() -> None:
    spoken = SpokenTexts()
    spoken.say("call-9", "hola desde el simulador")
    stt = FakeSpeechToText(script=["guion"], spoken=spoken)
    with bind_fake_stt_key("call-9"):
        stream = await stt.open_stream(language="es")
    results = await run_stream(stream, frames(tone(300) + silence(400)))
    assert [r.text for r in results] == ["hola desde el simulador"]


def test_spoken_texts_queue_per_key() -> None:
    spoken = SpokenTexts()
    spoken.say("a", "uno")
    spoken.say("a", "dos")
    assert spoken.take("a") == "uno"
    assert spoken.take("a") == "dos"
    assert spoken.take("a") is None
    spoken.say("b", "tres")
    spoken.forget("b")
    assert spoken.peek("b") is None


async def test_fail_after_raises_provider_error_from_results() -> None:
    stt = FakeSpeechToText(script=["a"], fail_after=1)
    stream = await stt.open_stream(language="es")
    for frame in frames(TWO_UTTERANCES):
        await stream.send(frame)
    results = stream.results()
    assert (await anext(results)).text == "a"
    with pytest.raises(ProviderError, match="scripted failure") as caught:
        await anext(results)
    assert caught.value.provider == "fake-stt"


async def test_close_finalises_speech_in_progress_and_refuses_more_audio() -> None:
    stt = FakeSpeechToText(script=["cortado"])
    stream = await stt.open_stream(language="es")
    results = await run_stream(stream, frames(silence(100) + tone(300)))
    assert results == [Transcript("cortado", True, 1.0, end_ms=400)]
    with pytest.raises(ProviderError, match="send after close"):
        await stream.send(frames(tone(20))[0])
    await stream.close()  # twice is fine


async def test_silence_only_gives_no_results() -> None:
    stream = await FakeSpeechToText(script=["x"]).open_stream(language="es")
    assert await run_stream(stream, frames(silence(2000))) == []


async def test_many_streams_run_side_by_side() -> None:
    stt = FakeSpeechToText(script=["a", "b"])
    streams = [await stt.open_stream(language="es") for _ in range(50)]
    outcomes = await asyncio.gather(*(run_stream(s, frames(TWO_UTTERANCES)) for s in streams))
    assert all([r.text for r in outcome] == ["a", "b"] for outcome in outcomes)


def test_latency_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STT_LATENCY_MS", "350")
    stt = FakeSpeechToText.from_settings(GatewaySettings(_env_file=None))
    assert stt.latency_ms == 350


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        FakeSpeechToText(latency_ms=-1)
    with pytest.raises(ValueError, match="interim_every_ms"):
        FakeSpeechToText(interim_every_ms=0)


async def test_per_frame_cost_is_printed() -> None:
    """Figure for the load benchmark (printed, not asserted)."""
    stream = await FakeSpeechToText(script=["a"]).open_stream(language="es")
    audio = frames((tone(400) + silence(600)) * 50)
    started = time.perf_counter()
    for frame in audio:
        await stream.send(frame)
    per_frame_us = (time.perf_counter() - started) / len(audio) * 1e6
    await stream.close()
    finals = [r async for r in stream.results()]
    assert len(finals) == 50
    print(f"\nfake STT: {per_frame_us:.1f} µs per 20 ms frame ({len(audio)} frames)")
