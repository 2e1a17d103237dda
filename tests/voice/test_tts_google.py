"""The Google TTS client, unchanged, against a local gRPC stand-in on loopback."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.cloud import texttospeech_v1 as tts

from tests.voice.standins.google_tts import GoogleTtsStandIn, mulaw_wav
from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError, TextToSpeech
from voice_gateway.providers.tts_google import (
    DEFAULT_VOICES,
    MAX_INPUT_BYTES,
    TELEPHONY_PROFILE,
    GoogleTts,
    channel_client,
    cloud_client,
    language_code_of,
    split_text,
)

SPANISH = "Hola, le habla Ana de Inmobiliaria Sur. ¿Tiene un minuto para conversar?"


def client_for(standin: GoogleTtsStandIn, **options: Any) -> GoogleTts:
    return GoogleTts(client_factory=channel_client(standin.channel), **options)


async def chunks_of(voice: TextToSpeech, text: str, language: str = "es") -> list[bytes]:
    return [chunk async for chunk in voice.synthesize(text, language=language)]


async def tone(text: str, language_code: str) -> bytes:
    """Cheap stand-in audio: 10 ms of a fixed μ-law pattern per character."""
    return bytes(range(0x10, 0x60)) * len(text)


# ------------------------------------------------------------------ text splitting


def test_short_text_is_one_piece() -> None:
    assert split_text("  Hola.  ") == ["Hola."]
    assert split_text(" \n ") == []


def test_long_text_splits_at_sentences_within_the_byte_limit() -> None:
    sentences = [f"Oración número {i}, con acentos: ñandú, canción y corazón." for i in range(200)]
    text = " ".join(sentences)
    assert len(text.encode()) > 2 * MAX_INPUT_BYTES
    pieces = split_text(text)
    assert len(pieces) == -(-len(text.encode()) // MAX_INPUT_BYTES)  # packed tight
    assert all(len(piece.encode()) <= MAX_INPUT_BYTES for piece in pieces)
    assert all(piece.endswith(".") for piece in pieces)  # cut between sentences only
    assert " ".join(pieces) == text


def test_a_sentence_too_long_splits_at_clauses_then_words() -> None:
    clause = "uno dos tres cuatro cinco"
    text = ", ".join([clause] * 12)  # one sentence of ~320 bytes
    pieces = split_text(text, max_bytes=100)
    assert all(len(piece.encode()) <= 100 for piece in pieces)
    assert all(piece.endswith(",") for piece in pieces[:-1])
    assert " ".join(pieces) == text
    words = split_text("palabra " * 40, max_bytes=50)
    assert all(len(piece.encode()) <= 50 for piece in words)
    assert " ".join(words) == ("palabra " * 40).strip()


def test_a_word_longer_than_the_limit_is_cut_between_characters() -> None:
    word = "ñ" * 30  # 60 bytes; never cut inside a character
    pieces = split_text(word, max_bytes=7)
    assert all(len(piece.encode()) <= 7 for piece in pieces)
    assert "".join(pieces) == word
    with pytest.raises(ValueError, match="max_bytes"):
        split_text("x", max_bytes=3)


def test_language_code_comes_from_the_voice_name() -> None:
    assert language_code_of("es-US-Neural2-A") == "es-US"
    assert language_code_of("en-US-Chirp3-HD-Kore") == "en-US"
    with pytest.raises(ValueError, match="not a Google voice name"):
        language_code_of("Kore")


# ------------------------------------------------------------------ against the stand-in


async def test_speech_arrives_as_headerless_mulaw_in_100_ms_chunks() -> None:
    async with GoogleTtsStandIn() as standin:
        voice = client_for(standin)
        chunks = await chunks_of(voice, SPANISH)
        await voice.aclose()
    audio = b"".join(chunks)
    assert audio == standin.answers[0]  # the exact μ-law the server wrapped in its WAV
    assert not audio.startswith(b"RIFF")
    assert 2.0 < len(audio) / 8000 < 8.0  # real speech from eSpeak, a few seconds
    assert all(len(chunk) == 800 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 800


async def test_request_asks_google_for_telephone_audio() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = client_for(standin)
        await chunks_of(voice, "Hola.", "es")
        await chunks_of(voice, "Hello.", "en-US")
        await voice.aclose()
    spanish, english = standin.requests
    assert spanish.input.text == "Hola."
    assert spanish.voice.name == DEFAULT_VOICES["es"]
    assert spanish.voice.language_code == "es-US"
    assert english.voice.name == DEFAULT_VOICES["en"]
    assert english.voice.language_code == "en-US"
    config = spanish.audio_config
    assert config.audio_encoding == tts.AudioEncoding.MULAW
    assert config.sample_rate_hertz == 8000
    assert list(config.effects_profile_id) == [TELEPHONY_PROFILE]
    assert config.speaking_rate == 1.0


async def test_voices_and_prosody_are_configurable() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = GoogleTts(
            client_factory=channel_client(standin.channel),
            voices={"es": "es-ES-Chirp3-HD-Kore", "es-cl": "es-US-Neural2-B"},
            speaking_rate=1.2,
            pitch=-2.0,
        )
        await chunks_of(voice, "Hola.", "es-AR")  # falls back to "es"
        await chunks_of(voice, "Hola.", "es-CL")  # exact tag wins
        await voice.aclose()
    first, second = standin.requests
    assert (first.voice.name, first.voice.language_code) == ("es-ES-Chirp3-HD-Kore", "es-ES")
    assert (second.voice.name, second.voice.language_code) == ("es-US-Neural2-B", "es-US")
    assert first.audio_config.speaking_rate == pytest.approx(1.2)
    assert first.audio_config.pitch == pytest.approx(-2.0)
    assert voice.voice_key("es") != voice.voice_key("es-CL")


async def test_text_over_5000_bytes_goes_in_several_requests_in_order() -> None:
    text = " ".join(f"Frase {i} del texto largo que describe la propiedad." for i in range(150))
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = client_for(standin)
        audio = b"".join(await chunks_of(voice, text))
        await voice.aclose()
    assert len(standin.requests) == len(split_text(text))
    assert len(standin.requests) >= 2
    assert all(len(r.input.text.encode()) <= MAX_INPUT_BYTES for r in standin.requests)
    assert " ".join(r.input.text for r in standin.requests) == text
    assert audio == b"".join(standin.answers)


async def test_first_audio_leaves_before_later_pieces_are_requested() -> None:
    text = " ".join(["Una frase corta para llenar el límite de bytes."] * 250)
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = client_for(standin)
        stream = voice.synthesize(text, language="es")
        await anext(stream)
        assert len(standin.requests) == 1
        await stream.aclose()
        await voice.aclose()


async def test_the_stand_in_refuses_what_google_refuses() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        # A client misconfigured past Google's limit gets Google's answer, as an error.
        voice = client_for(standin, max_input_bytes=10_000)
        with pytest.raises(ProviderError) as caught:
            await chunks_of(voice, "x" * 6000)
        await voice.aclose()
    assert caught.value.provider == "google-tts"
    assert caught.value.reason.startswith("INVALID_ARGUMENT")
    assert "limit of 5000 bytes" in caught.value.reason


async def test_unavailable_is_retried_once() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        standin.fail_next(grpc.StatusCode.UNAVAILABLE, "try again")
        voice = client_for(standin, retry_backoff_s=0.0)
        audio = b"".join(await chunks_of(voice, "Hola."))
        await voice.aclose()
    assert len(standin.requests) == 2
    assert audio == standin.answers[0]


async def test_unavailable_every_time_is_a_provider_error() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        for _ in range(3):
            standin.fail_next(grpc.StatusCode.UNAVAILABLE, "down for maintenance")
        voice = client_for(standin, attempts=3, retry_backoff_s=0.0)
        with pytest.raises(ProviderError, match="UNAVAILABLE: down for maintenance"):
            await chunks_of(voice, "Hola.")
        await voice.aclose()
    assert len(standin.requests) == 3


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
async def test_other_errors_are_not_retried(code: grpc.StatusCode) -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        standin.fail_next(code, "no")
        voice = client_for(standin)
        with pytest.raises(ProviderError, match=f"{code.name}: no"):
            await chunks_of(voice, "Hola.")
        await voice.aclose()
    assert len(standin.requests) == 1


async def test_a_hung_server_times_out() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        standin.hold()
        voice = client_for(standin, timeout_s=0.2)
        with pytest.raises(ProviderError, match=r"timed out after 0\.2 s"):
            await chunks_of(voice, "Hola.")
        standin.release()
        await voice.aclose()


async def test_nobody_listening_is_a_provider_error() -> None:
    standin = GoogleTtsStandIn(synthesize=tone)
    await standin.start()
    address = standin.address
    await standin.stop()
    voice = GoogleTts(
        client_factory=channel_client(lambda: grpc.aio.insecure_channel(address)),
        retry_backoff_s=0.0,
    )
    with pytest.raises(ProviderError, match="UNAVAILABLE"):
        await chunks_of(voice, "Hola.")
    await voice.aclose()


async def test_a_wav_without_audio_is_a_provider_error() -> None:
    def no_data(audio: bytes) -> bytes:
        body = b"WAVE" + b"LIST" + struct.pack("<I", 4) + b"INFO"
        return b"RIFF" + struct.pack("<I", len(body)) + body

    async with GoogleTtsStandIn(synthesize=tone, container=no_data) as standin:
        voice = client_for(standin)
        with pytest.raises(ProviderError, match="unreadable audio"):
            await chunks_of(voice, "Hola.")
        await voice.aclose()


async def test_audio_at_another_rate_is_refused() -> None:
    def wrong_rate(audio: bytes) -> bytes:
        return mulaw_wav(audio, rate=24000)

    async with GoogleTtsStandIn(synthesize=tone, container=wrong_rate) as standin:
        voice = client_for(standin)
        with pytest.raises(ProviderError, match="expected μ-law 8000 Hz mono"):
            await chunks_of(voice, "Hola.")
        await voice.aclose()


async def test_header_is_found_by_walking_chunks_not_at_byte_44() -> None:
    audio = await tone("Hola.", "es-US")
    wrapped = mulaw_wav(audio)
    assert wrapped[44:] != audio  # a fixed offset would play header bytes as noise
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = client_for(standin)
        assert b"".join(await chunks_of(voice, "Hola.")) == audio
        await voice.aclose()


async def test_empty_text_sends_nothing() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        voice = client_for(standin)
        assert await chunks_of(voice, "   ") == []
        await voice.aclose()
    assert standin.requests == []


async def test_unknown_language_is_a_provider_error() -> None:
    voice = GoogleTts(client_factory=lambda: pytest.fail("no client should be made"))
    with pytest.raises(ProviderError, match="no voice configured for language 'fr'"):
        await chunks_of(voice, "Bonjour", "fr")


async def test_concurrent_requests_share_one_channel() -> None:
    made: list[grpc.aio.Channel] = []
    async with GoogleTtsStandIn(synthesize=tone) as standin:

        def channel() -> grpc.aio.Channel:
            made.append(standin.channel())
            return made[-1]

        voice = GoogleTts(client_factory=channel_client(channel))
        texts = [f"Frase número {i}." for i in range(12)]
        results = await asyncio.gather(*(chunks_of(voice, text) for text in texts))
        assert len(made) == 1
        for text, chunks in zip(texts, results, strict=True):
            assert b"".join(chunks) == await tone(text, "es-US")
        await voice.aclose()
        # After aclose the next synthesis opens a new channel.
        await chunks_of(voice, "Otra vez.")
        assert len(made) == 2
        await voice.aclose()


@pytest.mark.parametrize("content", [None, "{}", "not json"])
async def test_unusable_credentials_are_a_provider_error(
    tmp_path: Path, content: str | None
) -> None:
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    voice = GoogleTts(client_factory=cloud_client(credentials_file=key))
    with pytest.raises(ProviderError, match="cannot create the client"):
        await chunks_of(voice, "Hola.")


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="speaking_rate"):
        GoogleTts(speaking_rate=3.0)
    with pytest.raises(ValueError, match="chunk_ms"):
        GoogleTts(chunk_ms=30)
    with pytest.raises(ValueError, match="at least one"):
        GoogleTts(voices={})
    with pytest.raises(ValueError, match="not a Google voice name"):
        GoogleTts(voices={"es": "Kore"})


async def test_from_settings_reaches_a_loopback_stand_in_over_plain_grpc() -> None:
    async with GoogleTtsStandIn(synthesize=tone) as standin:
        settings = GatewaySettings(
            _env_file=None,
            GOOGLE_TTS_ENDPOINT=standin.address,
            GOOGLE_TTS_VOICE_ES="es-US-Chirp3-HD-Kore",
            GOOGLE_TTS_TIMEOUT_S=0.5,
        )
        voice = GoogleTts.from_settings(settings)
        assert b"".join(await chunks_of(voice, "Hola.")) == await tone("Hola.", "es-US")
        standin.hold()
        with pytest.raises(ProviderError, match=r"timed out after 0\.5 s"):
            await chunks_of(voice, "Hola otra vez.")
        standin.release()
        await voice.aclose()
    assert standin.requests[0].voice.name == "es-US-Chirp3-HD-Kore"
    assert voice.voice_key("en").startswith("en-US-Neural2-F|")


def test_settings_refuse_a_voice_name_without_a_locale() -> None:
    with pytest.raises(ValueError, match="GOOGLE_TTS_VOICE_ES"):
        GatewaySettings(_env_file=None, GOOGLE_TTS_VOICE_ES="Kore")
