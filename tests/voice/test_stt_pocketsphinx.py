"""PocketSphinx on real (synthetic) English speech that went through the phone path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.voice.speech_audio import conversation, frames, silence, tone
from voice_gateway.providers.base import Transcript
from voice_gateway.providers.stt_fake import EnergySegmenter, SpeechEnded
from voice_gateway.providers.stt_pocketsphinx import (
    CallClockMap,
    PocketSphinxError,
    PocketSphinxOptions,
    PocketSphinxSpeechToText,
    PocketSphinxStream,
    check_language,
)


def first_sentence() -> bytes:
    """The fixture up to the end of its first sentence, as if the caller hung up then."""
    audio = conversation()
    segmenter = EnergySegmenter()
    for frame in frames(audio):
        event = segmenter.push_pcm(frame.pcm, frame.timestamp_ms)
        if isinstance(event, SpeechEnded):
            return audio[: event.end_ms * 16]
    raise AssertionError("no sentence in the fixture")


@pytest.fixture
def stt() -> Iterator[PocketSphinxSpeechToText]:
    provider = PocketSphinxSpeechToText(PocketSphinxOptions(idle_decoders=0))
    yield provider
    provider.close()


async def transcribe(
    stream: PocketSphinxStream, pcm: bytes, *, start_ms: int = 0
) -> list[Transcript]:
    for frame in frames(pcm, start_ms=start_ms):
        await stream.send(frame)
    await stream.close()
    return [result async for result in stream.results()]


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize("language", ["en", "en-US", "EN_gb"])
def test_english_is_accepted(language: str) -> None:
    check_language(language)


def test_spanish_is_refused_with_the_way_out() -> None:
    with pytest.raises(PocketSphinxError) as caught:
        check_language("es-CL")
    assert caught.value.reason == "no offline Spanish STT; use STT_PROVIDER=google"
    assert caught.value.provider == "pocketsphinx"


def test_other_languages_are_refused() -> None:
    with pytest.raises(PocketSphinxError, match="English only, not 'fr'"):
        check_language("fr")


def test_call_clock_map_follows_gaps_in_timestamps() -> None:
    clock = CallClockMap()
    for timestamp in (1000, 1020, 1040):
        clock.frame(timestamp, 20)
    for timestamp in (5000, 5020):  # Twilio skipped ahead
        clock.frame(timestamp, 20)
    assert clock.to_call_ms(0) == 1000
    assert clock.to_call_ms(50) == 1050
    assert clock.to_call_ms(60) == 5000
    assert clock.to_call_ms(95) == 5035


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vad_mode": 4},
        {"vad_window_s": 0.01},
        {"vad_ratio": 1.0},
        {"interim_every_ms": 10},
        {"chunk_ms": 10},
        {"max_streams": 0},
    ],
)
def test_options_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        PocketSphinxOptions(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- recognition


async def test_recognises_english_phone_speech(stt: PocketSphinxSpeechToText) -> None:
    audio = conversation()
    stream = await stt.open_stream(language="en")  # a cold model load holds the GIL ~0.2 s
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        """How long the loop waits for the GIL while the call is decoded (a figure)."""
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    for index, frame in enumerate(frames(audio, start_ms=1000)):
        await stream.send(frame)
        if index % 5 == 4:
            await asyncio.sleep(0)  # a session yields between frames
    await stream.close()
    results = [result async for result in stream.results()]
    elapsed = time.perf_counter() - started
    stop.set()
    await ticking
    finals = [r for r in results if r.is_final]
    lags.sort()
    print(f"\nPocketSphinx finals: {[f.text for f in finals]}")
    print(
        f"real-time factor {elapsed / (len(audio) / 16000):.2f} "
        f"({len(audio) / 16000:.1f} s of audio in {elapsed:.2f} s, fed without pacing); "
        f"event loop lag p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
        f"max {lags[-1] * 1000:.1f} ms (the second pass at the end of an utterance)"
    )

    # One final per sentence, each with words that survive the phone path (demo-grade:
    # "apartment" and "bathrooms" do not). soxr dithers its int16 output, so the audio
    # differs by ±2 LSB from run to run; these words came out in 20 runs of 20.
    assert len(finals) == 3
    assert "looking for" in finals[0].text
    assert "three bedroom" in finals[1].text
    assert "would like" in finals[2].text
    assert "saturday morning" in finals[2].text
    # On the call clock, in order, and each before the next sentence starts.
    ends = [f.end_ms or 0 for f in finals]
    assert ends == sorted(ends)
    assert 1000 < ends[0] < ends[1] < ends[2] <= 1000 + len(audio) // 16
    # Interim hypotheses come while each sentence is still being spoken.
    first_final = results.index(finals[0])
    assert any(not r.is_final for r in results[:first_final])


async def test_close_finalises_speech_cut_off_by_a_hang_up(stt: PocketSphinxSpeechToText) -> None:
    stream = await stt.open_stream(language="en")
    results = await transcribe(stream, first_sentence())  # no pause after it
    finals = [r for r in results if r.is_final]
    assert len(finals) == 1
    assert "looking" in finals[0].text
    with pytest.raises(PocketSphinxError, match="send after close"):
        await stream.send(frames(silence(20))[0])


async def test_silence_and_tones_give_no_words(stt: PocketSphinxSpeechToText) -> None:
    stream = await stt.open_stream(language="en")
    assert await transcribe(stream, silence(2000)) == []


async def test_spanish_stream_is_refused_before_loading_a_model(
    stt: PocketSphinxSpeechToText,
) -> None:
    with pytest.raises(PocketSphinxError, match="use STT_PROVIDER=google"):
        await stt.open_stream(language="es")
    assert stt.open_streams == 0


async def test_streams_are_capped_and_decoders_reused() -> None:
    stt = PocketSphinxSpeechToText(PocketSphinxOptions(max_streams=1, idle_decoders=1))
    try:
        await stt.warm_up()
        first = await stt.open_stream(language="en")
        with pytest.raises(PocketSphinxError, match="max_streams=1"):
            await stt.open_stream(language="en")
        assert await transcribe(first, tone(300) + silence(300)) is not None
        assert stt.open_streams == 0
        second = await stt.open_stream(language="en")  # the warm decoder, no reload
        await transcribe(second, silence(100))
    finally:
        stt.close()


async def test_a_missing_model_is_a_provider_error(tmp_path: Path) -> None:
    stt = PocketSphinxSpeechToText(PocketSphinxOptions(hmm=tmp_path / "nope"))
    try:
        with pytest.raises(PocketSphinxError, match="cannot load the PocketSphinx model"):
            await stt.open_stream(language="en")
        assert stt.open_streams == 0
    finally:
        stt.close()
