"""The fixed-phrase cache: hits and misses, eviction by bytes, one synthesis for many
identical requests, and files that survive a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from voice_gateway.config import GatewaySettings
from voice_gateway.providers.base import ProviderError, TextToSpeech
from voice_gateway.providers.tts_cache import (
    FIXED_PHRASES,
    CachedTts,
    CacheKey,
    PhraseCache,
    cached_from_settings,
    default_cacheable,
    normalize_text,
    phrase_predicate,
)
from voice_gateway.providers.tts_fake import FakeTts

GREETING = "Hola, le habla Ana de Inmobiliaria Sur."
#: What `GatedTts` says in full: three 20 ms chunks of 0x00, 0x01 and 0x02.
GATED_AUDIO = b"".join(bytes([i]) * 160 for i in range(3))


def always(_: str) -> bool:
    return True


def never(_: str) -> bool:
    return False


async def speak(voice: TextToSpeech, text: str, language: str = "es") -> bytes:
    return b"".join([chunk async for chunk in voice.synthesize(text, language=language)])


async def drain(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


class GatedTts:
    """A provider whose chunks come out one `step()` at a time, to stage races."""

    name = "gated"

    def __init__(self, chunks: int = 3, *, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.calls: list[str] = []
        self._steps: asyncio.Queue[None] = asyncio.Queue()

    def voice_key(self, language: str) -> str:
        return f"gated-{language}"

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self._steps.put_nowait(None)

    async def synthesize(self, text: str, *, language: str) -> AsyncGenerator[bytes, None]:
        self.calls.append(text)
        for index in range(self.chunks):
            await self._steps.get()
            if index == self.fail_at:
                raise ProviderError(self.name, "gave up")
            yield bytes([index]) * 160


def key(text: str, voice: str = "v", language: str = "es", provider: str = "p") -> CacheKey:
    return CacheKey(provider=provider, language=language, voice=voice, text=text)


# ------------------------------------------------------------------ PhraseCache


def test_lru_evicts_least_recently_used_by_bytes() -> None:
    cache = PhraseCache(max_bytes=1000)
    cache.put(key("a"), b"a" * 400)
    cache.put(key("b"), b"b" * 400)
    assert cache.get(key("a")) == b"a" * 400  # "a" is now the most recent
    cache.put(key("c"), b"c" * 400)  # 1200 > 1000: the least recent ("b") goes
    assert key("b") not in cache
    assert key("a") in cache
    assert key("c") in cache
    assert cache.bytes_used == 800
    assert cache.evictions == 1


def test_an_entry_larger_than_the_cache_is_not_kept() -> None:
    cache = PhraseCache(max_bytes=100)
    cache.put(key("small"), b"s" * 60)
    cache.put(key("big"), b"b" * 101)
    assert key("big") not in cache
    assert cache.get(key("small")) == b"s" * 60
    assert cache.bytes_used == 60


def test_replacing_an_entry_counts_its_bytes_once() -> None:
    cache = PhraseCache(max_bytes=1000)
    cache.put(key("a"), b"1" * 300)
    cache.put(key("a"), b"2" * 500)
    assert cache.bytes_used == 500
    assert len(cache) == 1


def test_keys_differ_by_every_field_and_make_safe_file_names() -> None:
    digests = {
        key("Hola").digest,
        key("Hola", voice="w").digest,
        key("Hola", language="en").digest,
        key("Hola", provider="q").digest,
        key("Hola.").digest,
    }
    assert len(digests) == 5
    assert all(len(d) == 64 and d.isalnum() for d in digests)
    assert key("../../etc/passwd").digest.isalnum()


def test_whitespace_does_not_change_the_text() -> None:
    assert normalize_text("  Un   momento,\n por  favor. ") == "Un momento, por favor."


# ------------------------------------------------------------------ CachedTts


async def test_second_request_is_a_hit_with_the_same_audio() -> None:
    inner = FakeTts()
    voice = CachedTts(inner, always)
    first = await speak(voice, "Un momento, por favor.")
    second = [chunk async for chunk in voice.synthesize("Un  momento, por favor. ", language="es")]
    assert b"".join(second) == first
    assert inner.requests == [("Un momento, por favor.", "es")]
    assert (voice.hits, voice.misses) == (1, 1)
    assert all(len(chunk) == 800 for chunk in second[:-1])  # 100 ms chunks from the cache
    assert voice.name == "fake"


async def test_phrases_not_cacheable_always_reach_the_provider() -> None:
    inner = FakeTts()
    voice = CachedTts(inner, phrase_predicate(["Un momento."]))
    await speak(voice, "¿Cuál es su presupuesto?")
    await speak(voice, "¿Cuál es su presupuesto?")
    await speak(voice, "Un momento.")
    await speak(voice, "Un momento.")
    assert [text for text, _ in inner.requests] == [
        "¿Cuál es su presupuesto?",
        "¿Cuál es su presupuesto?",
        "Un momento.",
    ]
    assert len(voice.cache) == 1


async def test_language_and_voice_settings_are_part_of_the_key() -> None:
    shared = PhraseCache()
    slow = CachedTts(FakeTts(ms_per_char=100), always, cache=shared)
    fast = CachedTts(FakeTts(ms_per_char=40), always, cache=shared)
    slow_audio = await speak(slow, "OK.")
    fast_audio = await speak(fast, "OK.")
    english = await speak(fast, "OK.", "en")
    assert len(slow_audio) > len(fast_audio)
    assert len(shared) == 3
    assert english == fast_audio  # the fake sounds the same; the entries are still apart
    assert slow.key_for("OK.", language="es") != fast.key_for("OK.", language="es")


async def test_eviction_by_bytes_sends_the_phrase_back_to_the_provider() -> None:
    inner = FakeTts(ms_per_char=100)  # "Hola." = 500 ms = 4000 bytes
    voice = CachedTts(inner, always, cache=PhraseCache(max_bytes=9000))
    for text in ("Hola.", "Chao.", "Hola.", "Listo."):  # "Listo." pushes out "Chao."
        await speak(voice, text)
    await speak(voice, "Chao.")
    assert [text for text, _ in inner.requests] == ["Hola.", "Chao.", "Listo.", "Chao."]
    assert voice.cache.evictions == 2


async def test_concurrent_identical_requests_synthesize_once_and_stream() -> None:
    inner = GatedTts(chunks=3)
    voice = CachedTts(inner, always)
    streams = [voice.synthesize("Un momento.", language="es") for _ in range(10)]
    firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
    await asyncio.sleep(0)
    inner.step()  # the provider has produced only its first chunk...
    got = await asyncio.gather(*firsts)
    assert got == [bytes([0]) * 160] * 10  # ...and every listener already has it
    inner.step(2)
    rests = await asyncio.gather(*(drain(stream) for stream in streams))
    assert all(rest == [bytes([1]) * 160, bytes([2]) * 160] for rest in rests)
    assert inner.calls == ["Un momento."]
    assert (voice.misses, voice.hits) == (1, 0)
    assert await speak(voice, "Un momento.") == GATED_AUDIO
    assert voice.hits == 1


async def test_a_failure_reaches_every_listener_and_is_not_cached() -> None:
    inner = GatedTts(chunks=3, fail_at=1)
    voice = CachedTts(inner, always)
    listeners = [asyncio.ensure_future(speak(voice, "Un momento.")) for _ in range(3)]
    await asyncio.sleep(0)
    inner.step(2)
    outcomes = await asyncio.gather(*listeners, return_exceptions=True)
    assert all(isinstance(o, ProviderError) and o.reason == "gave up" for o in outcomes)
    assert len(voice.cache) == 0
    inner.fail_at = None
    inner.step(3)
    assert await speak(voice, "Un momento.") == GATED_AUDIO
    assert inner.calls == ["Un momento.", "Un momento."]


async def test_a_listener_that_leaves_does_not_stop_the_synthesis() -> None:
    inner = GatedTts(chunks=3)
    voice = CachedTts(inner, always)
    leaver = voice.synthesize("Adiós.", language="es")
    first = asyncio.ensure_future(anext(leaver))
    await asyncio.sleep(0)
    inner.step()
    assert await first == bytes([0]) * 160
    await leaver.aclose()  # the caller barged in (or hung up)
    stayer = asyncio.ensure_future(speak(voice, "Adiós."))
    inner.step(2)
    assert await stayer == GATED_AUDIO
    assert inner.calls == ["Adiós."]
    assert len(voice.cache) == 1


async def test_disk_cache_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "tts-cache"
    first_inner = FakeTts()
    first = CachedTts(first_inner, always, cache=PhraseCache(directory=directory))
    audio = await speak(first, GREETING)
    await first.aclose()
    files = sorted(directory.iterdir())
    assert [f.name for f in files] == [f"{first.key_for(GREETING, language='es').digest}.ulaw"]
    assert files[0].read_bytes() == audio

    second_inner = FakeTts()
    second = CachedTts(second_inner, always, cache=PhraseCache(directory=directory))
    chunks = [chunk async for chunk in second.synthesize(GREETING, language="es")]
    assert b"".join(chunks) == audio
    assert all(len(chunk) == 800 for chunk in chunks[:-1])  # paced in 100 ms chunks
    assert second_inner.requests == []
    assert len(second.cache) == 1  # promoted into memory
    assert await speak(second, GREETING) == audio


async def test_disk_cache_is_pruned_to_its_bound(tmp_path: Path) -> None:
    cache = PhraseCache(directory=tmp_path, max_disk_bytes=10_000)
    voice = CachedTts(FakeTts(ms_per_char=100), always, cache=cache)
    for word in ("Uno.", "Dos.", "Tres.", "Cuatro."):  # 3200, 3200, 4000, 5600 bytes
        await speak(voice, word)
        await voice.idle()  # the disk write follows the audio
    sizes = sorted(f.stat().st_size for f in tmp_path.glob("*.ulaw"))
    assert sum(sizes) <= 10_000
    assert 5600 in sizes  # the newest is kept
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary files left behind


async def test_an_unwritable_directory_costs_only_the_disk_copy(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    voice = CachedTts(FakeTts(), always, cache=PhraseCache(directory=blocker / "tts-cache"))
    audio = await speak(voice, "Hola.")
    await voice.idle()
    assert audio
    assert await speak(voice, "Hola.") == audio  # still served from memory


async def test_a_corrupt_or_empty_file_is_a_miss(tmp_path: Path) -> None:
    inner = FakeTts()
    voice = CachedTts(inner, always, cache=PhraseCache(directory=tmp_path))
    path = voice.cache.path_for(voice.key_for("Hola.", language="es"))
    assert path is not None
    path.write_bytes(b"")
    assert await speak(voice, "Hola.")
    assert len(inner.requests) == 1


async def test_warm_prepares_phrases_and_makes_them_cacheable() -> None:
    inner = FakeTts()
    voice = CachedTts(inner, never)
    result = await voice.warm([GREETING, "Un momento.", GREETING, "  "], language="es")
    assert (result.already_cached, result.synthesized, result.failed) == (0, 2, ())
    assert len(inner.requests) == 2
    await speak(voice, GREETING)
    assert len(inner.requests) == 2  # warmed phrases are cached although `never` says no
    await speak(voice, GREETING, "en")  # ...in the language they were warmed for only
    assert len(inner.requests) == 3
    again = await voice.warm([GREETING], language="es")
    assert (again.already_cached, again.synthesized) == (1, 0)


async def test_warm_reports_failures_instead_of_raising() -> None:
    inner = FakeTts(fail_on=lambda text: "roto" in text)
    voice = CachedTts(inner, never)
    result = await voice.warm(["Esto está roto.", "Esto no."], language="es")
    assert result.synthesized == 1
    assert [text for text, _ in result.failed] == ["Esto está roto."]
    assert "injected failure" in result.failed[0][1]


async def test_warm_with_a_language_without_a_voice_reports_it() -> None:
    from voice_gateway.providers.tts_espeak import EspeakTts

    voice = CachedTts(EspeakTts(), never)
    result = await voice.warm(["Bonjour."], language="fr")
    assert result.synthesized == 0
    assert "no voice configured" in result.failed[0][1]


async def test_aclose_cancels_syntheses_in_flight() -> None:
    inner = GatedTts(chunks=3)
    voice = CachedTts(inner, always)
    listener = asyncio.ensure_future(speak(voice, "Hola."))
    await asyncio.sleep(0)
    await voice.aclose()
    with pytest.raises(ProviderError, match="cancelled"):
        await listener
    assert len(voice.cache) == 0


def test_built_in_fixed_phrases_are_cacheable_in_both_languages() -> None:
    cacheable = default_cacheable()
    for language in ("es", "en"):
        phrases = FIXED_PHRASES[language]
        assert all(len(group) > 0 for group in (phrases.fillers, phrases.reprompts))
        assert all(len(group) > 0 for group in (phrases.goodbyes, phrases.apologies))
        assert all(cacheable(p) for p in phrases.all())
    assert cacheable("  Un momento,   por favor. ")
    assert not cacheable("¿Cuál es su presupuesto?")


async def test_from_settings_caches_fixed_phrases_under_the_data_dir(tmp_path: Path) -> None:
    settings = GatewaySettings(
        _env_file=None, DATA_DIR=str(tmp_path), TTS_CACHE_MAX_BYTES=1_000_000
    )
    inner = FakeTts()
    voice = cached_from_settings(inner, settings)
    goodbye = FIXED_PHRASES["es"].goodbyes[0]
    await speak(voice, goodbye)
    await speak(voice, goodbye)
    await speak(voice, "¿Cuál es su presupuesto?")
    await voice.idle()
    assert len(inner.requests) == 2
    assert voice.cache.max_bytes == 1_000_000
    assert len(list((tmp_path / "tts-cache").glob("*.ulaw"))) == 1


def test_from_settings_can_stay_in_memory(tmp_path: Path) -> None:
    settings = GatewaySettings(_env_file=None, DATA_DIR=str(tmp_path), TTS_CACHE_ON_DISK=False)
    voice = cached_from_settings(FakeTts(), settings, cacheable=never)
    assert voice.cache.directory is None
