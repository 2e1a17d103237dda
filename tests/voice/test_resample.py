"""Streaming resampler: seamless across chunks, correct length, delay and filtering."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from voice_gateway.audio.resample import ResampleError, StreamResampler, resample_once

RATE_PAIRS = [(8000, 16000), (16000, 8000), (24000, 8000), (22050, 8000)]


def _tones(rate: int, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    signal = 8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * 1200 * t)
    samples: npt.NDArray[np.int16] = signal.astype("<i2")
    return samples.tobytes()


def _array(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _stream(resampler: StreamResampler, pcm: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(pcm):
        size = sizes[i % len(sizes)]
        out.append(resampler.process(pcm[pos : pos + size]))
        pos, i = pos + size, i + 1
    out.append(resampler.flush())
    return b"".join(out)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_stream_gives_every_sample_after_flush(in_rate: int, out_rate: int) -> None:
    pcm = _tones(in_rate)
    out = _stream(StreamResampler(in_rate, out_rate), pcm, [in_rate * 2 // 50])
    assert len(out) == out_rate * 2  # one second in, one second out


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_stream_matches_the_whole_clip_without_clicks(in_rate: int, out_rate: int) -> None:
    pcm = _tones(in_rate)
    streamed = _array(_stream(StreamResampler(in_rate, out_rate), pcm, [in_rate * 2 // 50]))
    whole = _array(resample_once(pcm, in_rate, out_rate))
    inner = slice(200, -200)  # the clip's own edges ring differently
    noise = np.sum((whole[inner] - streamed[inner]) ** 2)
    snr_db = 10 * np.log10(np.sum(whole[inner] ** 2) / noise)
    assert snr_db > 60  # a click at any frame edge would pull this far down


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_chunking_does_not_change_the_output(in_rate: int, out_rate: int) -> None:
    pcm = _tones(in_rate)
    frames = _array(_stream(StreamResampler(in_rate, out_rate), pcm, [in_rate * 2 // 50]))
    # Odd sizes split samples in half; the resampler must carry the odd byte over.
    ragged = _array(_stream(StreamResampler(in_rate, out_rate), pcm, [1, 7, 333, 2, 901]))
    assert len(frames) == len(ragged)
    assert np.max(np.abs(frames - ragged)) <= 1  # float rounding only


def test_tone_keeps_its_pitch_and_level() -> None:
    rate = 8000
    t = np.arange(rate) / rate
    pcm = (10000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    out = _array(_stream(StreamResampler(rate, 16000), pcm, [320]))[1600:-1600]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert abs(peak_hz - 1000) < 5
    assert abs(np.sqrt(np.mean(out**2)) - 10000 / np.sqrt(2)) < 200


def test_downsampling_filters_what_would_alias() -> None:
    rate = 24000
    t = np.arange(rate) / rate
    pcm = (10000 * np.sin(2 * np.pi * 6000 * t)).astype("<i2").tobytes()  # above 4 kHz
    out = _array(_stream(StreamResampler(rate, 8000), pcm, [960]))[800:-800]
    level_db = 20 * np.log10(np.sqrt(np.mean(out**2)) / (10000 / np.sqrt(2)) + 1e-12)
    assert level_db < -50


def test_delay_is_low_for_telephony() -> None:
    resampler = StreamResampler(8000, 16000)
    frame = _tones(8000, 0.02)
    produced, held = 0, []
    for count in range(1, 201):
        produced += len(resampler.process(frame))
        held.append(count * 20 - produced / 2 / 16)  # ms pushed in but not yet out
        assert abs(resampler.delay_ms - held[-1]) < 1
    assert max(held[20:]) <= 65  # soxr HQ would hold up to 115 ms
    assert sum(held[20:]) / len(held[20:]) <= 40


def test_same_rate_passes_through() -> None:
    resampler = StreamResampler(8000, 8000)
    assert resampler.process(b"\x01\x02\x03") == b"\x01\x02"
    assert resampler.process(b"\x04") == b"\x03\x04"
    assert resampler.flush() == b""
    assert resampler.delay_ms == 0.0
    assert resample_once(b"\x01\x02", 8000, 8000) == b"\x01\x02"


def test_flush_starts_a_new_stream() -> None:
    resampler = StreamResampler(8000, 16000)
    pcm = _tones(8000, 0.5)
    first = _stream(resampler, pcm, [320])
    second = _stream(resampler, pcm, [320])
    assert len(first) == 16000
    assert first == second


def test_output_is_reproducible() -> None:
    # soxr's int16 mode dithers randomly; ours must give the same bytes every time.
    pcm = _tones(22050)
    runs = {_stream(StreamResampler(22050, 8000), pcm, [882]) for _ in range(3)}
    assert len(runs) == 1
    assert len({resample_once(pcm, 22050, 8000) for _ in range(3)}) == 1


def test_loud_input_is_clipped_not_wrapped() -> None:
    square = np.tile(np.array([32767] * 20 + [-32768] * 20, dtype="<i2"), 400).tobytes()
    out = np.frombuffer(_stream(StreamResampler(8000, 16000), square, [320]), dtype="<i2")
    # Ringing overshoots full scale; it must saturate at the rails, never flip sign.
    assert out.max() == 32767
    assert out.min() == -32768
    assert np.all(np.abs(np.diff(out.astype(np.int32))) < 40000)


def test_reset_drops_held_audio() -> None:
    resampler = StreamResampler(8000, 16000)
    for _ in range(10):
        resampler.process(_tones(8000, 0.02))
    resampler.reset()
    assert resampler.delay_ms == 0.0
    assert resampler.flush() == b""


@pytest.mark.parametrize(("in_rate", "out_rate"), [(0, 8000), (8000, -1), (8000, 10**6)])
def test_bad_rates_are_refused(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ResampleError, match="between 1000 and 384000"):
        StreamResampler(in_rate, out_rate)
    with pytest.raises(ResampleError):
        resample_once(b"", in_rate, out_rate)


def test_whole_clip_needs_whole_samples() -> None:
    with pytest.raises(ResampleError, match="even number of bytes"):
        resample_once(b"\x00\x00\x00", 22050, 8000)
    assert resample_once(b"", 22050, 8000) == b""
