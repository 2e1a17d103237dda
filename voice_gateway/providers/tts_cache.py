"""Fixed phrases (greeting, fillers, reprompt, goodbye, apologies) synthesized once.

A slow greeting is the first thing a caller notices (2–5 s in other frameworks), and a
filler or an apology is needed exactly when the provider is slow or failing. So those
phrases are synthesized ahead (`warm`) or on first use, kept in memory (LRU, bounded by
bytes) and optionally on disk (DATA_DIR/tts-cache, written atomically) so a restarted
server has them at once. The key is everything that decides the audio: provider,
language, voice settings (`voice_key`) and the text with its whitespace collapsed.

`CachedTts` wraps any `TextToSpeech` and is one itself, so the session does not know it
is there. Only phrases `cacheable` accepts (or that were warmed) are cached; the rest go
straight through. Identical requests that arrive while a phrase is being synthesized
share one synthesis: each follows the same growing list of chunks, so the first audio
still leaves as soon as the provider produces it, and a caller who hangs up does not
cancel the synthesis the others (and the cache) are waiting for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from voice_gateway.providers.base import SAMPLE_RATE, ProviderError, TextToSpeech

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

logger = logging.getLogger(__name__)

#: Bumped when the stored audio format changes, so old files are never read back.
_FORMAT: Final = 1
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024  # ~35 min of μ-law 8 kHz
DEFAULT_MAX_DISK_BYTES: Final = 256 * 1024 * 1024
_SUFFIX: Final = ".ulaw"


@runtime_checkable
class VoiceKeyed(Protocol):
    """A provider that can say which voice settings decide its audio for a language."""

    def voice_key(self, language: str) -> str: ...


def normalize_text(text: str) -> str:
    """Whitespace does not change what is said: collapse it so keys match."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class CacheKey:
    provider: str
    language: str
    voice: str
    text: str

    @property
    def digest(self) -> str:
        """A file name that no text can turn into a path."""
        payload = json.dumps([_FORMAT, self.provider, self.language, self.voice, self.text])
        return hashlib.sha256(payload.encode()).hexdigest()


class PhraseCache:
    """μ-law audio by `CacheKey`: an LRU bounded by bytes, and optionally a directory.

    The memory side is synchronous and allocation-free on a hit; disk reads and writes
    run in a thread. Disk problems are logged and treated as misses: a cache must never
    cost a call its audio.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        directory: Path | None = None,
        max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
    ) -> None:
        if max_bytes < 0 or max_disk_bytes < 0:
            raise ValueError("cache sizes cannot be negative")
        self.max_bytes = max_bytes
        self.directory = directory
        self.max_disk_bytes = max_disk_bytes
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()
        self.bytes_used = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: CacheKey) -> bytes | None:
        audio = self._entries.get(key)
        if audio is not None:
            self._entries.move_to_end(key)
        return audio

    def put(self, key: CacheKey, audio: bytes) -> None:
        """Keep `audio` in memory, evicting the least recently used until it fits."""
        if len(audio) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes_used -= len(old)
        self._entries[key] = audio
        self.bytes_used += len(audio)
        while self.bytes_used > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= len(evicted)
            self.evictions += 1

    async def load(self, key: CacheKey) -> bytes | None:
        """Memory first, then disk (promoting a disk hit into memory)."""
        audio = self.get(key)
        if audio is None and self.directory is not None:
            audio = await asyncio.to_thread(self._read, key)
            if audio is not None:
                self.put(key, audio)
        return audio

    async def store(self, key: CacheKey, audio: bytes) -> None:
        """Memory now, then disk."""
        self.put(key, audio)
        await self.persist(key, audio)

    async def persist(self, key: CacheKey, audio: bytes) -> None:
        """Disk only (atomically, then pruned to its bound), in a thread."""
        if self.directory is not None and audio:
            await asyncio.to_thread(self._write, key, audio)

    def path_for(self, key: CacheKey) -> Path | None:
        return None if self.directory is None else self.directory / f"{key.digest}{_SUFFIX}"

    def _read(self, key: CacheKey) -> bytes | None:
        path = self.path_for(key)
        assert path is not None
        try:
            audio = path.read_bytes()
            os.utime(path)  # disk pruning drops the least recently used files
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("tts cache: cannot read %s: %s", path, exc)
            return None
        return audio or None

    def _write(self, key: CacheKey, audio: bytes) -> None:
        path = self.path_for(key)
        assert path is not None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write a temporary file beside the target and rename it over: a reader (or a
            # crash) sees the whole file or none of it.
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(audio)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            self._prune(path.parent)
        except OSError as exc:
            logger.warning("tts cache: cannot write %s: %s", path, exc)

    def _prune(self, directory: Path) -> None:
        files: list[tuple[float, int, Path]] = []
        for entry in directory.glob(f"*{_SUFFIX}"):
            if entry.name.startswith(".tmp-"):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files, key=lambda item: item[0]):
            if total <= self.max_disk_bytes:
                break
            entry.unlink(missing_ok=True)
            total -= size


@dataclass(eq=False)
class _Flight:
    """One synthesis in progress that any number of requests follow."""

    chunks: list[bytes] = field(default_factory=list)
    done: bool = False
    error: ProviderError | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self, error: ProviderError | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[bytes]:
        index = 0
        while True:
            changed = self._changed
            if index < len(self.chunks):
                index += 1
                yield self.chunks[index - 1]
                continue
            if self.error is not None:
                raise ProviderError(self.error.provider, self.error.reason) from self.error
            if self.done:
                return
            await changed.wait()


@dataclass(frozen=True, slots=True)
class WarmResult:
    already_cached: int
    synthesized: int
    #: (text, reason) for each phrase that could not be synthesized.
    failed: tuple[tuple[str, str], ...]


class CachedTts:
    """A `TextToSpeech` that serves cacheable phrases from a `PhraseCache`."""

    def __init__(
        self,
        inner: TextToSpeech,
        cacheable: Callable[[str], bool],
        *,
        cache: PhraseCache | None = None,
        chunk_ms: int = 100,
    ) -> None:
        if chunk_ms <= 0:
            raise ValueError("chunk_ms must be positive")
        self.inner = inner
        self.name = inner.name
        self.cache = cache if cache is not None else PhraseCache()
        self._cacheable = cacheable
        self._warmed: set[tuple[str, str]] = set()
        self._flights: dict[CacheKey, _Flight] = {}
        #: Background work: each synthesis in flight, then its disk write.
        self._tasks: dict[asyncio.Task[None], tuple[CacheKey, _Flight]] = {}
        self._chunk_bytes = SAMPLE_RATE * chunk_ms // 1000
        self.hits = 0
        self.misses = 0

    def voice_key(self, language: str) -> str:
        return self.inner.voice_key(language) if isinstance(self.inner, VoiceKeyed) else ""

    def key_for(self, text: str, *, language: str) -> CacheKey:
        return CacheKey(
            provider=self.inner.name,
            language=language.strip().lower(),
            voice=self.voice_key(language),
            text=normalize_text(text),
        )

    def is_cacheable(self, text: str, *, language: str) -> bool:
        text = normalize_text(text)
        return bool(text) and (
            (language.strip().lower(), text) in self._warmed or self._cacheable(text)
        )

    async def synthesize(self, text: str, *, language: str) -> AsyncGenerator[bytes, None]:
        if not self.is_cacheable(text, language=language):
            async for chunk in self.inner.synthesize(text, language=language):
                yield chunk
            return
        key = self.key_for(text, language=language)
        audio = self.cache.get(key)
        if audio is not None:
            self.hits += 1
            step = self._chunk_bytes
            for start in range(0, len(audio), step):
                yield audio[start : start + step]
            return
        flight = self._flights.get(key)
        if flight is None:
            self.misses += 1
            flight = self._start(key, text, language)
        async for chunk in flight.follow():
            yield chunk

    def _start(self, key: CacheKey, text: str, language: str) -> _Flight:
        flight = _Flight()
        self._flights[key] = flight
        task = asyncio.create_task(self._produce(key, text, language, flight))
        self._tasks[task] = (key, flight)
        task.add_done_callback(self._forget)
        return flight

    def _forget(self, task: asyncio.Task[None]) -> None:
        key, flight = self._tasks.pop(task)
        if not flight.done:  # cancelled before it ever ran: nobody else will tell listeners
            flight.finish(ProviderError(self.name, "synthesis cancelled"))
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _produce(self, key: CacheKey, text: str, language: str, flight: _Flight) -> None:
        """Fill `flight` from disk or from the provider; cache what completes."""
        try:
            audio = await self.cache.load(key)
            if audio is None:
                async for chunk in self.inner.synthesize(text, language=language):
                    flight.add(chunk)
                audio = b"".join(flight.chunks)
                if audio:
                    self.cache.put(key, audio)
                # Followers are released before the disk write: it only serves restarts.
                flight.finish()
                await self.cache.persist(key, audio)
            else:
                for start in range(0, len(audio), self._chunk_bytes):
                    flight.add(audio[start : start + self._chunk_bytes])
                flight.finish()
        except ProviderError as exc:
            flight.finish(exc)
        except asyncio.CancelledError:
            flight.finish(ProviderError(self.name, "synthesis cancelled"))
            raise
        except Exception as exc:
            logger.exception("tts cache: synthesis of a cached phrase failed")
            flight.finish(ProviderError(self.name, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def warm(self, phrases: Iterable[str], *, language: str) -> WarmResult:
        """Synthesize `phrases` now (at start-up, or before a call's stream opens) so they
        are ready when needed; they count as cacheable from now on. Failures are reported,
        not raised: a cold cache still works."""
        texts = list(dict.fromkeys(t for t in map(normalize_text, phrases) if t))
        tag = language.strip().lower()
        self._warmed.update((tag, text) for text in texts)
        try:
            keys = [self.key_for(text, language=language) for text in texts]
        except ProviderError as exc:  # e.g. no voice for this language
            return WarmResult(0, 0, tuple((text, str(exc)) for text in texts))
        cached = 0
        missing: list[str] = []
        for text, key in zip(texts, keys, strict=True):
            if await self.cache.load(key) is not None:
                cached += 1
            else:
                missing.append(text)
        outcomes = await asyncio.gather(*(self._drain(text, language) for text in missing))
        failed = tuple(
            (text, reason) for text, reason in zip(missing, outcomes, strict=True) if reason
        )
        return WarmResult(
            already_cached=cached, synthesized=len(missing) - len(failed), failed=failed
        )

    async def _drain(self, text: str, language: str) -> str | None:
        try:
            async for _ in self.synthesize(text, language=language):
                pass
        except ProviderError as exc:
            logger.warning("tts cache: cannot warm %r: %s", text, exc)
            return str(exc)
        return None

    async def idle(self) -> None:
        """Wait until background work is done: syntheses in flight and disk writes."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel syntheses in flight, let finished ones reach the disk, close the provider."""
        for task, (_key, flight) in list(self._tasks.items()):
            if not flight.done:
                task.cancel()
        await self.idle()
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True, slots=True)
class FixedPhrases:
    """The phrases a call says without the agent, per language: worth caching."""

    fillers: tuple[str, ...]
    reprompts: tuple[str, ...]
    goodbyes: tuple[str, ...]
    apologies: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return self.fillers + self.reprompts + self.goodbyes + self.apologies


FIXED_PHRASES: Final[Mapping[str, FixedPhrases]] = {
    "es": FixedPhrases(
        fillers=("Un momento, por favor.", "Déjeme revisar.", "Mm, a ver."),
        reprompts=("¿Sigue ahí?", "Disculpe, no le escuché. ¿Me lo puede repetir?"),
        goodbyes=("Muchas gracias por su tiempo. Que tenga un buen día.",),
        apologies=(
            "Disculpe, tuve un problema técnico. ¿Me lo puede repetir?",
            "Lo siento, no puedo seguir con la llamada ahora. Le volveremos a contactar.",
        ),
    ),
    "en": FixedPhrases(
        fillers=("One moment, please.", "Let me check.", "Hmm, let's see."),
        reprompts=("Are you still there?", "Sorry, I didn't catch that. Could you say it again?"),
        goodbyes=("Thank you for your time. Have a great day.",),
        apologies=(
            "Sorry, I had a technical problem. Could you say that again?",
            "I'm sorry, I can't continue the call right now. We'll get back to you.",
        ),
    ),
}


def phrase_predicate(phrases: Iterable[str]) -> Callable[[str], bool]:
    """`cacheable` for a known set of phrases (whitespace-insensitive)."""
    known = frozenset(normalize_text(p) for p in phrases)
    return lambda text: normalize_text(text) in known


def default_cacheable() -> Callable[[str], bool]:
    """Every built-in fixed phrase, in every language."""
    return phrase_predicate(p for phrases in FIXED_PHRASES.values() for p in phrases.all())


def cached_from_settings(
    inner: TextToSpeech,
    settings: GatewaySettings,
    cacheable: Callable[[str], bool] | None = None,
) -> CachedTts:
    """`inner` behind a cache sized by TTS_CACHE_MAX_BYTES, on disk under
    DATA_DIR/tts-cache when TTS_CACHE_ON_DISK; caching the built-in fixed phrases unless
    told otherwise (the greeting is added per call with `warm`)."""
    directory = settings.data_dir / "tts-cache" if settings.tts_cache_on_disk else None
    cache = PhraseCache(max_bytes=settings.tts_cache_max_bytes, directory=directory)
    return CachedTts(inner, cacheable or default_cacheable(), cache=cache)
