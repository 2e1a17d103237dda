"""Sample-rate conversion for providers that do not speak 8 kHz (PocketSphinx, some TTS).

Resampling is a filter with memory: converting each 20 ms frame on its own clicks at
every frame edge and costs ~27 µs, while one soxr `ResampleStream` per audio stream
costs ~6 µs per frame and is seamless. So: one `StreamResampler` per stream and
direction, created when the stream opens and flushed when it ends; `resample_once` only
for whole clips (a synthesized phrase), where the filter sees the entire signal.

Quality: soxr's "LQ" for streams. soxr releases output in blocks, so the audio a stream
holds back swings from frame to frame; measured with 20 ms chunks, LQ holds 33 ms on
average (61 ms at most) for 8k↔16k and 23 ms (43 ms at most) for 22.05k/24k→8k, with
aliasing at -62 dB, far below what a phone line carries. "HQ" and "MQ" hold about twice
as much (64 ms average, 115 ms at most, for 8k↔16k) for no audible gain on telephone
speech, and "QQ" (cubic, ~0 ms) has no anti-alias filter at all: a downsampled TTS voice
would fold its 4-11 kHz energy back into the band. One-shot clips use "HQ": there soxr
compensates its own delay.

The filter runs in float32 and we round to int16 ourselves: soxr's own int16 output adds
random dither, so the same input would give different audio on every run (±2 LSB),
which makes recognition results and tests irreproducible for no audible benefit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]  # no stubs; the API used is three calls

STREAM_QUALITY = "LQ"
CLIP_QUALITY = "HQ"


class ResampleError(ValueError):
    """Misuse of a resampler: bad rates, or audio pushed after the stream was flushed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    """Round and clip float samples (on the int16 scale) to PCM16 little-endian."""
    np.rint(samples, out=samples)
    np.clip(samples, -32768.0, 32767.0, out=samples)
    return samples.astype("<i2").tobytes()


def _check_rates(in_rate: int, out_rate: int) -> None:
    for name, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
        if not 1000 <= rate <= 384_000:
            raise ResampleError(f"{name} must be between 1000 and 384000 Hz, got {rate}")


class StreamResampler:
    """PCM16 mono at `in_rate` → PCM16 mono at `out_rate`, chunk by chunk, one per stream.

    Chunks may split a sample in two (a network read, a TTS callback): the odd byte is
    kept for the next call. Output lags input by the filter delay (see the module doc);
    `flush` returns the held tail at the end of the stream and the resampler is then
    ready for a new stream at the same rates.
    """

    __slots__ = ("_carry", "_in_rate", "_out_rate", "_stream")

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = STREAM_QUALITY) -> None:
        _check_rates(in_rate, out_rate)
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._carry = b""
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality
            )

    @property
    def in_rate(self) -> int:
        return self._in_rate

    @property
    def out_rate(self) -> int:
        return self._out_rate

    @property
    def delay_ms(self) -> float:
        """Audio pushed in but not yet given out, in ms (the latency this stream adds)."""
        if self._stream is None:
            return 0.0
        return float(self._stream.delay()) * 1000.0 / self._out_rate

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk; may return less (or nothing) while the filter fills."""
        if self._carry:
            pcm = self._carry + pcm
            self._carry = b""
        if len(pcm) % 2:
            self._carry = pcm[-1:]
            pcm = pcm[:-1]
        if self._stream is None:
            return pcm
        if not pcm:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        return _to_pcm16(self._stream.resample_chunk(samples))

    def flush(self) -> bytes:
        """The held tail at the end of a stream; the resampler then starts a new stream.

        A dangling half sample is dropped (it cannot be played).
        """
        self._carry = b""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return _to_pcm16(tail)

    def reset(self) -> None:
        """Drop held audio without output (after a barge-in: nothing old may leak out)."""
        self._carry = b""
        if self._stream is not None:
            self._stream.clear()


def resample_once(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole clip of PCM16 mono at high quality, delay-compensated."""
    _check_rates(in_rate, out_rate)
    if len(pcm) % 2:
        raise ResampleError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
    if in_rate == out_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    return _to_pcm16(soxr.resample(samples, in_rate, out_rate, quality=CLIP_QUALITY))
