"""The caller's voice: utterances turned into ready-to-send Twilio media payloads.

Everything costly happens once per distinct utterance, before the call dials: synthesis
(offline TTS) or WAV decoding, resampling to 8 kHz, μ-law encoding, trimming the silence
around the speech, cutting into 20 ms frames and base64-encoding each frame. A call then
sends a frame by formatting one precomputed string into a message template, which is
what lets one core drive hundreds of calls. The cache shares results between calls, so
200 calls saying the same line synthesize it once (concurrent requests wait for the
first).

Silence is trimmed so that the first frame sent is the caller's speech onset and the
last one the end of speech: the barge-in latency is measured from the first, the
response latency from the last. Between utterances the call sends μ-law silence, as
Twilio streams continuous audio.
"""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from voice_gateway.audio import mulaw, wav
from voice_gateway.audio.resample import resample_once
from voice_gateway.providers.base import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    ProviderError,
    TextToSpeech,
)
from voice_gateway.simulator.script import Utterance

#: A frame is speech when its mean level is above this (≈ -50 dBFS) and within 40 dB of
#: the utterance's loudest frame: TTS silence is exact zero, a recording's is not.
_FLOOR_LEVEL: Final = 100.0
_RELATIVE_LEVEL: Final = 0.01
#: Longest utterance accepted (a caller's turn, not a podcast).
MAX_UTTERANCE_S: Final = 120


class AudioSourceError(Exception):
    """An utterance that cannot be turned into audio (missing file, TTS failure…)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64(frame: bytes) -> str:
    return binascii.b2a_base64(frame, newline=False).decode("ascii")


#: One 20 ms frame of μ-law silence, base64: what a quiet caller's phone sends.
SILENCE_PAYLOAD: Final = b64(mulaw.silence(FRAME_SAMPLES))


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """One utterance, ready to stream: speech only, in 20 ms base64 payloads."""

    label: str
    payloads: tuple[str, ...]

    @property
    def duration_ms(self) -> int:
        return len(self.payloads) * FRAME_MS


def speech_frames(audio: bytes) -> tuple[bytes, ...]:
    """μ-law `audio` cut into 20 ms frames, without the silence before and after speech.

    The last frame is padded with μ-law silence to a whole frame. Audio with no speech
    at all gives no frames.
    """
    if not audio:
        return ()
    padding = -len(audio) % FRAME_SAMPLES
    padded = audio + mulaw.silence(padding)
    frames = np.frombuffer(padded, dtype=np.uint8).reshape(-1, FRAME_SAMPLES)
    levels = np.abs(mulaw.decode_array(padded).astype(np.float64)).reshape(-1, FRAME_SAMPLES)
    level = levels.mean(axis=1)
    threshold = max(_FLOOR_LEVEL, float(level.max()) * _RELATIVE_LEVEL)
    speech = np.flatnonzero(level > threshold)
    if speech.size == 0:
        return ()
    first, last = int(speech[0]), int(speech[-1])
    return tuple(frames[i].tobytes() for i in range(first, last + 1))


def caller_audio(label: str, audio: bytes) -> CallerAudio:
    """μ-law 8 kHz `audio` as a ready utterance (refused when it holds no speech)."""
    if len(audio) > MAX_UTTERANCE_S * SAMPLE_RATE:
        raise AudioSourceError(f"{label}: longer than {MAX_UTTERANCE_S} s")
    frames = speech_frames(audio)
    if not frames:
        raise AudioSourceError(f"{label}: no speech in the audio")
    return CallerAudio(label, tuple(b64(frame) for frame in frames))


def mulaw_from_wav(path: Path) -> bytes:
    """A WAV file (16-bit PCM or μ-law, any rate, any channels) as μ-law 8 kHz mono."""
    try:
        clip = wav.read_wav(path.read_bytes())
    except OSError as exc:
        raise AudioSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    except wav.WavError as exc:
        raise AudioSourceError(f"{path} is not a usable WAV file: {exc.reason}") from None
    fmt = clip.format
    if fmt.encoding is wav.WavEncoding.MULAW:
        samples = mulaw.decode_array(clip.data)
    elif fmt.encoding is wav.WavEncoding.PCM and fmt.bits_per_sample == 16:
        samples = np.frombuffer(clip.data, dtype="<i2")
    else:
        raise AudioSourceError(
            f"{path}: format {fmt.format_tag} at {fmt.bits_per_sample} bits; "
            "use 16-bit PCM or μ-law"
        )
    if fmt.channels > 1:
        frames = samples[: len(samples) // fmt.channels * fmt.channels]
        samples = frames.reshape(-1, fmt.channels).mean(axis=1).astype("<i2")
    pcm = resample_once(samples.astype("<i2", copy=False).tobytes(), fmt.sample_rate, SAMPLE_RATE)
    return mulaw.encode(pcm)


async def synthesize(tts: TextToSpeech, text: str, language: str) -> bytes:
    """The whole phrase from a streaming TTS, as μ-law 8 kHz."""
    chunks: list[bytes] = []
    try:
        async for chunk in tts.synthesize(text, language=language):
            chunks.append(chunk)
    except ProviderError as exc:
        raise AudioSourceError(f"{tts.name} could not say {text[:40]!r}: {exc.reason}") from None
    return b"".join(chunks)


class UtteranceCache:
    """Ready audio per utterance, computed once per process and shared by every call.

    `tts` speaks text utterances; None creates the offline eSpeak voice on first use,
    so a script made only of WAV files never loads it.
    """

    def __init__(self, tts: TextToSpeech | None = None) -> None:
        self._tts = tts
        self._ready: dict[Utterance, asyncio.Future[CallerAudio]] = {}

    def _voice(self) -> TextToSpeech:
        if self._tts is None:
            from voice_gateway.providers.tts_espeak import EspeakTts

            self._tts = EspeakTts()
        return self._tts

    async def get(self, utterance: Utterance) -> CallerAudio:
        """The audio of `utterance`; the first request makes it, the others wait for it."""
        pending = self._ready.get(utterance)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._ready[utterance] = pending
            try:
                pending.set_result(await self._make(utterance))
            except asyncio.CancelledError:
                del self._ready[utterance]
                pending.cancel()
                raise
            except Exception as exc:
                # Later requests try again; those already waiting get the same error.
                del self._ready[utterance]
                pending.set_exception(exc)
                pending.exception()  # retrieved: no "never retrieved" warning if unawaited
                raise
        return await asyncio.shield(pending)

    async def warm(self, utterances: Iterable[Utterance]) -> None:
        """Prepare every utterance before the calls start, so none waits mid-call."""
        for utterance in utterances:
            await self.get(utterance)

    async def _make(self, utterance: Utterance) -> CallerAudio:
        if utterance.wav is not None:
            path = utterance.wav
            audio = await asyncio.to_thread(mulaw_from_wav, path)
        else:
            assert utterance.text is not None
            audio = await synthesize(self._voice(), utterance.text, utterance.language)
        return caller_audio(utterance.label, audio)
