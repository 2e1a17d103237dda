"""The fake TTS: a fixed delay, audio as long as the text asks, speech to a VAD."""

from __future__ import annotations

import importlib

import pytest

from voice_gateway.audio import mulaw
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import FRAME_SAMPLES, ProviderError, TextToSpeech
from voice_gateway.providers.tts_fake import FakeTts, speech_frames


async def collect(tts: TextToSpeech, text: str, language: str = "es") -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text, language=language)]


class RecordingSleep:
    """An injected clock: records each requested delay instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_is_a_text_to_speech() -> None:
    tts: TextToSpeech = FakeTts()
    assert tts.name == "fake"


async def test_audio_length_follows_the_text_in_20_ms_frames() -> None:
    tts = FakeTts(ms_per_char=60)
    chunks = await collect(tts, "Hola, ¿cómo está?")  # 17 characters → 1020 ms → 51 frames
    assert len(chunks) == 51
    assert all(len(chunk) == FRAME_SAMPLES for chunk in chunks)
    assert tts.frames_for("Hola, ¿cómo está?") == 51
    assert tts.frames_for("  ") == 0


async def test_ms_per_char_is_configurable() -> None:
    slow, fast = FakeTts(ms_per_char=100), FakeTts(ms_per_char=20)
    text = "Ten chars!"
    assert len(await collect(slow, text)) == 50  # 1000 ms
    assert len(await collect(fast, text)) == 10  # 200 ms


async def test_latency_is_waited_once_before_the_first_chunk() -> None:
    sleep = RecordingSleep()
    tts = FakeTts(latency_ms=250, sleep=sleep)
    stream = tts.synthesize("Un momento.", language="es")
    first = await anext(stream)
    assert sleep.calls == [0.25]
    rest = [chunk async for chunk in stream]
    assert sleep.calls == [0.25]
    assert len(first) == FRAME_SAMPLES
    assert len(rest) + 1 == tts.frames_for("Un momento.")


async def test_no_latency_means_no_sleep() -> None:
    sleep = RecordingSleep()
    await collect(FakeTts(sleep=sleep), "Hola.")
    assert sleep.calls == []


async def test_injected_failure_arrives_after_the_delay() -> None:
    sleep = RecordingSleep()
    tts = FakeTts(latency_ms=100, fail_on=lambda text: "falla" in text, sleep=sleep)
    with pytest.raises(ProviderError) as caught:
        await collect(tts, "Esto falla seguro.")
    assert caught.value.provider == "fake"
    assert "injected failure" in caught.value.reason
    assert sleep.calls == [0.1]
    assert len(await collect(tts, "Esto no.")) == tts.frames_for("Esto no.")


async def test_requests_are_recorded_in_order() -> None:
    tts = FakeTts()
    await collect(tts, "Hola.", "es")
    await collect(tts, "Hello.", "en")
    assert tts.requests == [("Hola.", "es"), ("Hello.", "en")]


async def test_deterministic_and_text_dependent() -> None:
    tts = FakeTts()
    first = b"".join(await collect(tts, "Buenos días."))
    assert first == b"".join(await collect(FakeTts(), "Buenos días."))
    other = b"".join(await collect(tts, "Buenas tardes"))
    assert other[:1600] != first[:1600]


async def test_empty_text_gives_no_audio() -> None:
    assert await collect(FakeTts(), "   ") == []


def test_a_vad_hears_speech() -> None:
    frames = speech_frames()
    webrtcvad = importlib.import_module("webrtcvad")  # untyped; imported for its Vad only
    vad = webrtcvad.Vad(3)  # the most aggressive mode: least willing to call noise speech
    voiced = sum(vad.is_speech(mulaw.decode(frame), 8000) for frame in frames)
    assert voiced / len(frames) > 0.95


def test_audio_is_loud_but_not_clipped() -> None:
    import numpy as np

    pcm = np.frombuffer(mulaw.decode(b"".join(speech_frames())), dtype="<i2").astype(float)
    rms = float(np.sqrt(np.mean(pcm**2)))
    assert 1500 < rms < 8000
    assert np.max(np.abs(pcm)) < 32000


async def test_frames_are_computed_once_and_shared() -> None:
    assert speech_frames() is speech_frames()
    one = await collect(FakeTts(), "Hola.")
    two = await collect(FakeTts(), "Hola.")
    assert all(a is b for a, b in zip(one, two, strict=True))  # no copies per phrase


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        FakeTts(latency_ms=-1)
    with pytest.raises(ValueError, match="ms_per_char"):
        FakeTts(ms_per_char=0)


def test_voice_key_names_what_changes_the_audio() -> None:
    assert FakeTts(ms_per_char=60).voice_key("es") != FakeTts(ms_per_char=80).voice_key("es")
    assert FakeTts().voice_key("es") != FakeTts().voice_key("en")


def test_from_settings() -> None:
    settings = GatewaySettings(_env_file=None, FAKE_TTS_LATENCY_MS=120, FAKE_TTS_MS_PER_CHAR=30)
    tts = FakeTts.from_settings(settings)
    assert (tts.latency_ms, tts.ms_per_char) == (120, 30)
