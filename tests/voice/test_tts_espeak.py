"""eSpeak NG through ctypes: Spanish and English speech, μ-law 8 kHz, one engine for all."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from voice_gateway.audio import mulaw
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError, TextToSpeech
from voice_gateway.providers.tts_espeak import (
    DEFAULT_VOICES,
    EspeakTts,
    EspeakVoice,
    measure_speed,
    render_pcm,
    voice_for,
)

PHRASES = [
    ("Hola, le habla Ana de Inmobiliaria Sur. ¿Tiene un minuto?", "es"),
    ("¿Qué presupuesto tiene para la compra?", "es"),
    ("Hello, this is Ana from South Realty. Do you have a minute?", "en"),
    ("What budget do you have in mind?", "en"),
]


async def chunks_of(tts: TextToSpeech, text: str, language: str) -> list[bytes]:
    return [chunk async for chunk in tts.synthesize(text, language=language)]


async def speak(tts: TextToSpeech, text: str, language: str) -> bytes:
    return b"".join(await chunks_of(tts, text, language))


def rms(audio: bytes) -> float:
    samples = mulaw.decode_array(audio).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def envelope(audio: bytes) -> npt.NDArray[np.float64]:
    """Loudness per 20 ms frame."""
    samples = mulaw.decode_array(audio).astype(np.float64)
    frames = len(samples) // 160
    loudness: npt.NDArray[np.float64] = np.sqrt(
        np.mean(samples[: frames * 160].reshape(frames, 160) ** 2, axis=1)
    )
    return loudness


def median_f0(audio: bytes) -> float:
    """The speaker's typical pitch: autocorrelation peak (60–400 Hz) of loud 40 ms frames."""
    samples = mulaw.decode_array(audio).astype(np.float64)
    estimates = []
    for start in range(0, len(samples) - 320, 320):
        frame = samples[start : start + 320]
        if np.sqrt(np.mean(frame**2)) < 2000:
            continue
        frame = frame - frame.mean()
        correlation = np.correlate(frame, frame, mode="full")[319:]
        lag = 20 + int(np.argmax(correlation[20:134]))
        estimates.append(8000 / lag)
    return float(np.median(estimates))


def same_speech(a: bytes, b: bytes) -> bool:
    """The same utterance, allowing for eSpeak's carried-over flutter (see the module doc):
    lengths within 2 % and loudness contours that match."""
    if abs(len(a) - len(b)) > 0.02 * max(len(a), len(b)):
        return False
    ea, eb = envelope(a), envelope(b)
    n = min(len(ea), len(eb))
    return bool(np.corrcoef(ea[:n], eb[:n])[0, 1] > 0.9)


@pytest.mark.parametrize(("text", "language"), PHRASES)
async def test_speaks_spanish_and_english(text: str, language: str) -> None:
    chunks = await chunks_of(EspeakTts(), text, language)
    audio = b"".join(chunks)
    seconds = len(audio) / 8000
    assert 1.0 < seconds < 6.0  # a short sentence at ~165 words a minute
    assert not audio.startswith(b"RIFF")
    assert len(chunks) > 5  # streamed per synth callback, not one blob at the end
    assert rms(audio) > 1000  # clearly audible speech, not silence


async def test_duration_is_plausible_for_one_word() -> None:
    audio = await speak(EspeakTts(), "Hola.", "es")
    assert 0.3 < len(audio) / 8000 < 1.5


async def test_speech_has_pauses_and_voiced_parts() -> None:
    audio = await speak(EspeakTts(), PHRASES[0][0], "es")
    frames = [audio[i : i + 160] for i in range(0, len(audio) - 159, 160)]
    loudness = [rms(frame) for frame in frames]
    assert max(loudness) > 3000
    assert min(loudness) < 300  # the pause at the comma (or the edges) is near silence


async def test_same_text_same_speech() -> None:
    tts = EspeakTts()
    renderings = [await speak(tts, PHRASES[0][0], "es") for _ in range(4)]
    assert all(same_speech(r, renderings[0]) for r in renderings)
    assert not same_speech(renderings[0], await speak(tts, PHRASES[2][0], "en"))
    assert not same_speech(renderings[0], await speak(tts, PHRASES[1][0], "es"))


async def test_languages_pick_their_voices() -> None:
    tts = EspeakTts()
    text = "Departamento en el centro"
    spanish = await speak(tts, text, "es")
    english = await speak(tts, text, "en")
    assert not same_speech(spanish, english)
    assert same_speech(await speak(tts, text, "es-CL"), spanish)  # region → its language
    assert same_speech(await speak(tts, text, "EN-us"), english)


async def test_concurrent_requests_get_the_same_audio_as_serial_ones() -> None:
    tts = EspeakTts()
    serial = [await speak(tts, text, language) for text, language in PHRASES]
    jobs = [speak(tts, text, language) for _ in range(4) for text, language in PHRASES]
    concurrent = await asyncio.gather(*jobs)
    assert len(concurrent) == 16
    for got, expected in zip(concurrent, serial * 4, strict=True):
        assert same_speech(got, expected)


async def test_a_listener_that_stops_early_does_not_disturb_the_next_phrase() -> None:
    tts = EspeakTts()
    expected = await speak(tts, PHRASES[1][0], "es")
    stream = tts.synthesize(PHRASES[0][0], language="es")
    first = await anext(stream)
    assert first
    await stream.aclose()  # barge-in: the caller stops listening mid-phrase
    assert same_speech(await speak(tts, PHRASES[1][0], "es"), expected)


async def test_cancelling_the_consumer_task_is_clean() -> None:
    tts = EspeakTts()
    started = asyncio.Event()

    async def listen() -> None:
        async for _ in tts.synthesize(PHRASES[2][0], language="en"):
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(listen())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rms(await speak(tts, "Still here.", "en")) > 1000


async def test_rate_and_pitch_change_the_audio() -> None:
    text = "Tenemos tres departamentos disponibles en el centro."
    normal = await speak(EspeakTts(), text, "es")
    fast = await speak(EspeakTts.with_prosody(rate_wpm=260, pitch=50), text, "es")
    high = await speak(EspeakTts.with_prosody(rate_wpm=165, pitch=80), text, "es")
    assert len(fast) < 0.8 * len(normal)
    assert median_f0(high) > 1.15 * median_f0(normal)
    # Alternating voices on the one engine must not leak settings between requests.
    assert same_speech(await speak(EspeakTts(), text, "es"), normal)


async def test_empty_text_gives_no_audio() -> None:
    assert await chunks_of(EspeakTts(), " \n ", "es") == []


async def test_unknown_language_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="no voice configured for language 'fr'"):
        await speak(EspeakTts(), "Bonjour", "fr")


async def test_unknown_voice_is_a_provider_error_and_the_engine_recovers() -> None:
    broken = EspeakTts({"es": EspeakVoice("xx-nonexistent")})
    with pytest.raises(ProviderError, match="not found"):
        await speak(broken, "Hola", "es")
    assert rms(await speak(EspeakTts(), "Hola", "es")) > 1000


def test_voice_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="rate_wpm"):
        EspeakVoice("es", rate_wpm=20)
    with pytest.raises(ValueError, match="pitch"):
        EspeakVoice("es", pitch=101)
    with pytest.raises(ValueError, match="voice name"):
        EspeakVoice("es 419")
    with pytest.raises(ValueError, match="at least one"):
        EspeakTts({})


def test_voice_key_covers_every_setting() -> None:
    assert EspeakTts().voice_key("es") == EspeakTts().voice_key("es-AR")
    keys = {
        EspeakVoice("es").key,
        EspeakVoice("es-419").key,
        EspeakVoice("es", rate_wpm=200).key,
        EspeakVoice("es", pitch=40).key,
        EspeakVoice("es", pitch_range=40).key,
        EspeakVoice("es", volume=90).key,
        EspeakVoice("es", word_gap=2).key,
    }
    assert len(keys) == 7
    assert voice_for(DEFAULT_VOICES, "en_US").name == "en-us"


async def test_speed_figures(capsys: pytest.CaptureFixture[str]) -> None:
    figures = await measure_speed(EspeakTts(), PHRASES, rounds=2)
    assert figures.phrases == 8
    assert figures.audio_s > 8
    assert figures.compute_ms_per_audio_s > 0
    assert 0 < figures.first_chunk_ms_p50 <= figures.first_chunk_ms_max
    with capsys.disabled():
        print(
            f"\neSpeak NG: {figures.compute_ms_per_audio_s:.1f} ms of compute per second of "
            f"audio, first chunk p50 {figures.first_chunk_ms_p50:.2f} ms "
            f"(max {figures.first_chunk_ms_max:.2f} ms), {figures.audio_s:.1f} s of audio"
        )


async def test_from_settings() -> None:
    settings = GatewaySettings(_env_file=None, ESPEAK_RATE_WPM=260, ESPEAK_PITCH=70)
    tts = EspeakTts.from_settings(settings)
    assert tts.voice_key("es") == EspeakVoice("es-419", rate_wpm=260, pitch=70).key
    assert tts.voice_key("en") == EspeakVoice("en-us", rate_wpm=260, pitch=70).key
    text = "Tenemos tres departamentos disponibles en el centro."
    assert len(await speak(tts, text, "es")) < 0.8 * len(await speak(EspeakTts(), text, "es"))


async def test_blocking_render_shares_the_engine_with_the_provider() -> None:
    tts = EspeakTts()
    voice = DEFAULT_VOICES["en"]
    spoken = asyncio.gather(*(speak(tts, text, language) for text, language in PHRASES))
    rendered = await asyncio.gather(
        *(asyncio.to_thread(render_pcm, text, voice) for text, _ in PHRASES[2:])
    )
    telephone = await spoken
    for pcm, rate in rendered:
        assert rate == 22050
        assert len(pcm) / 2 / rate > 1.0
    for audio, (text, language) in zip(telephone, PHRASES, strict=True):
        assert same_speech(audio, await speak(tts, text, language))
    with pytest.raises(ProviderError, match="not found"):
        await asyncio.to_thread(render_pcm, "Hola", EspeakVoice("xx-nonexistent"))
