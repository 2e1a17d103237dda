"""Scripted speech-to-text: real turn timing without a recogniser.

Tests, the demo and the load benchmark need an STT whose words are known in advance but
whose timing still follows the caller's audio, so that end-of-turn, barge-in and latency
behave as on a real call. The fake finds speech segments by frame energy (a few
microseconds per 20 ms frame, no model) and, once a segment ends, emits the next
scripted final after a configurable latency (FAKE_STT_LATENCY_MS), optionally with
interim results growing word by word while the caller speaks.

Where the words come from, first match wins:
- a side channel (`SpokenTexts`): whoever plays the caller says what it said, keyed by
  a stream key (`open_stream(key=...)` or the `fake_stt_key` context variable);
- the script, cycled per stream, so every call is deterministic on its own.

The energy segmenter is a pure core (frame level in, zero or one event out); the
Google stand-in in tests reuses it to "hear" μ-law audio the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.providers.base import SAMPLE_RATE, AudioFrame, ProviderError, Transcript

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

PROVIDER = "fake-stt"
_SAMPLES_PER_MS = SAMPLE_RATE // 1000

#: The stream key a fake stream reads its side-channel texts under, when `open_stream`
#: is not given one: the simulator or session sets it around the call's tasks.
fake_stt_key: ContextVar[str | None] = ContextVar("fake_stt_key", default=None)

DEFAULT_SCRIPTS: dict[str, tuple[str, ...]] = {
    "es": (
        "Hola, sí, soy yo.",
        "Busco un departamento de dos dormitorios en Providencia.",
        "Mi presupuesto es de unos cien millones de pesos.",
        "Tengo el crédito hipotecario preaprobado.",
        "Me gustaría visitarlo el sábado en la mañana.",
        "Gracias, hasta luego.",
    ),
    "en": (
        "Hi, yes, speaking.",
        "I am looking for a two bedroom apartment downtown.",
        "My budget is about four hundred thousand dollars.",
        "I already have a mortgage pre-approval.",
        "Saturday morning would work for a visit.",
        "Thanks, goodbye.",
    ),
}


# ---------------------------------------------------------------- energy segmenter (pure)


#: Power of each μ-law code, so energy on μ-law audio is one table lookup per sample.
_MULAW_SQUARED = mulaw.decode_array(bytes(range(256))).astype(np.float64) ** 2


def pcm_mean_square(pcm: bytes) -> float:
    """Mean of squared PCM16 samples (power): compared with a precomputed threshold, no log."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return 0.0
    return float(samples.dot(samples)) / samples.size


def mulaw_mean_square(mulaw: bytes) -> float:
    """The same power measured straight on μ-law bytes through a 256-entry table."""
    if not mulaw:
        return 0.0
    return float(_MULAW_SQUARED[np.frombuffer(mulaw, dtype=np.uint8)].mean())


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    start_ms: int
    #: End of the last loud frame (the trailing silence that confirmed the end excluded).
    end_ms: int

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


SegmentEvent = SpeechStarted | SpeechEnded


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    #: Frames louder than this (dB relative to full scale) count as speech.
    threshold_dbfs: float = -40.0
    #: Loud audio needed to open a segment, so clicks do not.
    min_speech_ms: int = 60
    #: Quiet audio needed to close a segment, so pauses between words do not.
    end_silence_ms: int = 300

    def __post_init__(self) -> None:
        if not -96.0 <= self.threshold_dbfs <= 0.0:
            raise ValueError("threshold_dbfs must be within -96..0 dBFS")
        if self.min_speech_ms < 0 or self.end_silence_ms <= 0:
            raise ValueError("min_speech_ms must be >= 0 and end_silence_ms > 0")


class EnergySegmenter:
    """Speech segments from frame power: feed a frame, get at most one event back.

    No I/O and no clock: times are the frames' own timestamps, so a test can feed a
    whole call in microseconds and a stream can feed audio as it arrives.
    """

    __slots__ = (
        "_config",
        "_in_speech",
        "_loud_ms",
        "_quiet_ms",
        "_run_start",
        "_speech_end",
        "_speech_start",
        "_threshold",
    )

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self._config = config or SegmenterConfig()
        self._threshold = (32768.0 * 10.0 ** (self._config.threshold_dbfs / 20.0)) ** 2
        self._in_speech = False
        self._loud_ms = 0
        self._quiet_ms = 0
        self._run_start = 0
        self._speech_start = 0
        self._speech_end = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def speech_start_ms(self) -> int:
        """Where the current (or last) segment started."""
        return self._speech_start

    def push_level(
        self, mean_square: float, timestamp_ms: int, duration_ms: int
    ) -> SegmentEvent | None:
        loud = mean_square >= self._threshold
        end_ms = timestamp_ms + duration_ms
        if not self._in_speech:
            if not loud:
                self._loud_ms = 0
                return None
            if self._loud_ms == 0:
                self._run_start = timestamp_ms
            self._loud_ms += duration_ms
            if self._loud_ms < self._config.min_speech_ms:
                return None
            self._in_speech = True
            self._quiet_ms = 0
            self._speech_start = self._run_start
            self._speech_end = end_ms
            return SpeechStarted(self._speech_start)
        if loud:
            self._quiet_ms = 0
            self._speech_end = end_ms
            return None
        self._quiet_ms += duration_ms
        if self._quiet_ms < self._config.end_silence_ms:
            return None
        return self._end()

    def push_pcm(self, pcm: bytes, timestamp_ms: int) -> SegmentEvent | None:
        duration = len(pcm) // (2 * _SAMPLES_PER_MS)
        return self.push_level(pcm_mean_square(pcm), timestamp_ms, duration)

    def push_mulaw(self, mulaw: bytes, timestamp_ms: int) -> SegmentEvent | None:
        duration = len(mulaw) // _SAMPLES_PER_MS
        return self.push_level(mulaw_mean_square(mulaw), timestamp_ms, duration)

    def flush(self) -> SpeechEnded | None:
        """End of audio: close an open segment at its last loud frame."""
        return self._end() if self._in_speech else None

    def _end(self) -> SpeechEnded:
        self._in_speech = False
        self._loud_ms = 0
        self._quiet_ms = 0
        return SpeechEnded(self._speech_start, self._speech_end)


# ---------------------------------------------------------------- side channel


class SpokenTexts:
    """What a simulated caller said, per stream key, waiting for its speech to end.

    The in-process simulator calls `say(key, text)` as it starts playing an utterance;
    the fake stream with that key takes the text when the utterance's audio ends.
    """

    def __init__(self) -> None:
        self._texts: dict[str, deque[str]] = {}

    def say(self, key: str, text: str) -> None:
        self._texts.setdefault(key, deque()).append(text)

    def peek(self, key: str) -> str | None:
        pending = self._texts.get(key)
        return pending[0] if pending else None

    def take(self, key: str) -> str | None:
        pending = self._texts.get(key)
        if not pending:
            return None
        text = pending.popleft()
        if not pending:
            del self._texts[key]
        return text

    def forget(self, key: str) -> None:
        self._texts.pop(key, None)


@contextmanager
def bind_fake_stt_key(key: str) -> Iterator[None]:
    """Run a block (and tasks created in it) with `key` as the fake stream key."""
    token = fake_stt_key.set(key)
    try:
        yield
    finally:
        fake_stt_key.reset(token)


# ---------------------------------------------------------------- provider


@dataclass(frozen=True, slots=True)
class _Pending:
    due: float
    item: Transcript | ProviderError | None


class FakeSttStream:
    """One call's scripted recognition; see the module docstring."""

    def __init__(
        self,
        *,
        script: Sequence[str],
        key: str | None,
        spoken: SpokenTexts | None,
        latency_s: float,
        interim_every_ms: int | None,
        segmenter: SegmenterConfig | None,
        fail_after: int | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._script = script
        self._script_index = 0
        self._key = key
        self._spoken = spoken
        self._latency_s = latency_s
        self._interim_every_ms = interim_every_ms
        self._segmenter = EnergySegmenter(segmenter)
        self._fail_after = fail_after
        self._clock = clock
        self._sleep = sleep
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._finals = 0
        self._closed = False
        self._next_interim_ms = 0
        self._last_interim = ""

    async def send(self, frame: AudioFrame) -> None:
        if self._closed:
            raise ProviderError(PROVIDER, "send after close")
        event = self._segmenter.push_pcm(frame.pcm, frame.timestamp_ms)
        if event is None:
            if self._interim_every_ms is not None and self._segmenter.in_speech:
                self._maybe_interim(frame.timestamp_ms + len(frame.pcm) // (2 * _SAMPLES_PER_MS))
            return
        if isinstance(event, SpeechStarted):
            self._next_interim_ms = event.start_ms
            self._last_interim = ""
            return
        self._final(event.end_ms)

    async def results(self) -> AsyncIterator[Transcript]:
        while True:
            pending = await self._queue.get()
            delay = pending.due - self._clock()
            if delay > 0:
                await self._sleep(delay)
            if pending.item is None:
                return
            if isinstance(pending.item, ProviderError):
                raise pending.item
            yield pending.item

    async def close(self) -> None:
        if self._closed:
            return
        ended = self._segmenter.flush()
        if ended is not None:
            self._final(ended.end_ms)
        self._closed = True
        self._queue.put_nowait(_Pending(self._clock() + self._latency_s, None))

    def _peek_text(self) -> str:
        if self._spoken is not None and self._key is not None:
            text = self._spoken.peek(self._key)
            if text is not None:
                return text
        if not self._script:
            return ""
        return self._script[self._script_index % len(self._script)]

    def _take_text(self) -> str:
        if self._spoken is not None and self._key is not None:
            text = self._spoken.take(self._key)
            if text is not None:
                return text
        if not self._script:
            return ""
        text = self._script[self._script_index % len(self._script)]
        self._script_index += 1
        return text

    def _maybe_interim(self, now_ms: int) -> None:
        assert self._interim_every_ms is not None
        if now_ms - self._next_interim_ms < self._interim_every_ms:
            return
        self._next_interim_ms = now_ms
        words = self._peek_text().split()
        spoken_ms = now_ms - self._segmenter.speech_start_ms
        count = min(len(words), spoken_ms // self._interim_every_ms)
        text = " ".join(words[:count])
        if text and text != self._last_interim:
            self._last_interim = text
            self._push(Transcript(text, is_final=False, end_ms=now_ms))

    def _final(self, end_ms: int) -> None:
        self._finals += 1
        if self._fail_after is not None and self._finals > self._fail_after:
            self._push(
                ProviderError(PROVIDER, f"scripted failure after {self._fail_after} results")
            )
            return
        self._push(Transcript(self._take_text(), is_final=True, confidence=1.0, end_ms=end_ms))

    def _push(self, item: Transcript | ProviderError) -> None:
        self._queue.put_nowait(_Pending(self._clock() + self._latency_s, item))


class FakeSpeechToText:
    """Scripted STT with realistic timing (see module docstring); `name` is "fake"."""

    name = "fake"

    def __init__(
        self,
        *,
        script: Sequence[str] | None = None,
        spoken: SpokenTexts | None = None,
        latency_ms: int = 0,
        interim_every_ms: int | None = None,
        segmenter: SegmenterConfig | None = None,
        fail_after: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`script`: finals in order, cycled (None: DEFAULT_SCRIPTS for the stream's
        language). `fail_after`: results before the stream fails with ProviderError, to
        test fallbacks. `clock`/`sleep`: injectable so tests never wait for real."""
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if interim_every_ms is not None and interim_every_ms <= 0:
            raise ValueError("interim_every_ms must be > 0")
        self.script = script
        self.spoken = spoken
        self.latency_ms = latency_ms
        self._interim_every_ms = interim_every_ms
        self._segmenter = segmenter
        self._fail_after = fail_after
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FakeSpeechToText:
        return cls(latency_ms=settings.fake_stt_latency_ms)

    async def open_stream(self, *, language: str, key: str | None = None) -> FakeSttStream:
        base = language.split("-", 1)[0].lower()
        if self.script is not None:
            script: Sequence[str] = self.script
        elif base in DEFAULT_SCRIPTS:
            script = DEFAULT_SCRIPTS[base]
        else:
            raise ProviderError(PROVIDER, f"no default script for language {language!r}")
        return FakeSttStream(
            script=script,
            key=key if key is not None else fake_stt_key.get(),
            spoken=self.spoken,
            latency_s=self.latency_ms / 1000.0,
            interim_every_ms=self._interim_every_ms,
            segmenter=self._segmenter,
            fail_after=self._fail_after,
            clock=self._clock,
            sleep=self._sleep,
        )
