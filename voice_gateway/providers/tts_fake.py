"""A text-to-speech stand-in for tests and the load benchmark: a fixed delay, then audio
whose length follows the text.

The audio is a synthetic vowel (a glottal pulse train at ~120 Hz through three formants,
with slow pitch and loudness movement), so a VAD on the simulator's side hears speech
and barge-in and echo tests behave as with a real voice. It is computed once per process
and served as a ring of ready-made 20 ms frames: a phrase costs one `sleep` and a slice
of tuple references, which keeps 200 concurrent calls cheap on one core.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.providers.base import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, ProviderError

if TYPE_CHECKING:
    from voice_gateway.config import GatewaySettings

PROVIDER = "fake"

#: Default speech length per character of text: ~15 characters a second, a brisk talker.
DEFAULT_MS_PER_CHAR: Final = 60
#: Frames in the precomputed ring (4 s), so consecutive phrases do not sound identical.
_RING_FRAMES: Final = 200


@lru_cache(maxsize=1)
def speech_frames() -> tuple[bytes, ...]:
    """The ring of 20 ms μ-law frames every fake phrase is cut from (deterministic)."""
    count = _RING_FRAMES * FRAME_SAMPLES
    t = np.arange(count, dtype=np.float64) / SAMPLE_RATE
    # Pitch gliding 100–140 Hz like intonation; the phase is the running integral of f0.
    f0 = 120.0 + 20.0 * np.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * np.cumsum(f0) / SAMPLE_RATE
    # Harmonics shaped by formants near 700, 1200 and 2600 Hz (an open "a").
    signal = np.zeros(count)
    for k in range(1, 30):
        frequency = k * 120.0
        if frequency >= SAMPLE_RATE / 2 - 200:
            break
        gain = sum(
            height / (1.0 + ((frequency - centre) / width) ** 2)
            for centre, width, height in (
                (700.0, 130.0, 1.0),
                (1200.0, 150.0, 0.6),
                (2600.0, 250.0, 0.25),
            )
        )
        signal += (gain / k**0.5) * np.sin(k * phase)
    # Syllable-rate loudness (4 Hz) that never falls to silence.
    envelope = 0.65 + 0.35 * np.sin(2 * math.pi * 4.0 * t) ** 2
    signal *= envelope
    pcm = (signal * (9000.0 / float(np.max(np.abs(signal))))).astype("<i2")
    encoded = mulaw.encode(pcm.tobytes())
    return tuple(encoded[i : i + FRAME_SAMPLES] for i in range(0, len(encoded), FRAME_SAMPLES))


class FakeTts:
    """`TextToSpeech` that waits `latency_ms`, then yields ⌈len(text)·ms_per_char / 20⌉
    frames of 20 ms. `fail_on(text)` returning true makes that phrase raise
    `ProviderError` after the delay, as a real provider's error would arrive."""

    name = PROVIDER

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        ms_per_char: int = DEFAULT_MS_PER_CHAR,
        fail_on: Callable[[str], bool] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if latency_ms < 0 or ms_per_char <= 0:
            raise ValueError("latency_ms must be ≥ 0 and ms_per_char > 0")
        self.latency_ms = latency_ms
        self.ms_per_char = ms_per_char
        self._fail_on = fail_on
        self._sleep = sleep
        self._frames = speech_frames()
        #: Every phrase asked for, in order, with its language: what tests assert on.
        self.requests: list[tuple[str, str]] = []

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FakeTts:
        """FAKE_TTS_LATENCY_MS and FAKE_TTS_MS_PER_CHAR."""
        return cls(
            latency_ms=settings.fake_tts_latency_ms, ms_per_char=settings.fake_tts_ms_per_char
        )

    def voice_key(self, language: str) -> str:
        return f"fake|{language}|{self.ms_per_char}ms/char"

    def frames_for(self, text: str) -> int:
        """How many 20 ms frames `text` is spoken in."""
        characters = len(text.strip())
        return -(-characters * self.ms_per_char // FRAME_MS) if characters else 0

    async def synthesize(self, text: str, *, language: str) -> AsyncGenerator[bytes, None]:
        self.requests.append((text, language))
        if self.latency_ms:
            await self._sleep(self.latency_ms / 1000)
        if self._fail_on is not None and self._fail_on(text):
            raise ProviderError(PROVIDER, f"injected failure for {text[:40]!r}")
        frames = self._frames
        ring = len(frames)
        # Start where the text points in the ring: different phrases, different audio.
        start = sum(text.encode()[:16]) % ring
        for i in range(self.frames_for(text)):
            yield frames[(start + i) % ring]

    async def aclose(self) -> None:
        """Nothing to release."""
