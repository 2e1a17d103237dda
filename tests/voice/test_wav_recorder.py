"""WAV chunk walking, WAV writing, and the stereo call recorder on the call clock."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from voice_gateway.audio.recorder import CallRecorder, RecorderError
from voice_gateway.audio.wav import (
    MAX_HEADER_BYTES,
    WavEncoding,
    WavError,
    WavStreamStripper,
    read_wav,
    strip_wav,
    wav_bytes,
    wav_header,
)

AUDIO = bytes(range(256)) * 4  # 1,024 bytes: 512 PCM16 samples or 1,024 μ-law ones


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", len(body)) + body + pad


def _fmt(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# -- reading -----------------------------------------------------------------------------


def test_canonical_pcm_round_trip() -> None:
    data = wav_bytes(AUDIO, 8000, 1)
    assert len(data) == 44 + len(AUDIO)
    wav = read_wav(data)
    assert wav.format.encoding is WavEncoding.PCM
    assert (wav.format.sample_rate, wav.format.channels, wav.format.bits_per_sample) == (
        8000,
        1,
        16,
    )
    assert wav.data == AUDIO
    assert wav.data_offset == 44
    assert strip_wav(data) == AUDIO


def test_mulaw_wav_has_the_fmt_and_fact_chunks_non_pcm_needs() -> None:
    data = wav_bytes(AUDIO, 8000, 1, encoding=WavEncoding.MULAW)
    assert data[12:16] == b"fmt "
    assert struct.unpack_from("<I", data, 16)[0] == 18
    assert data[38:42] == b"fact"
    assert struct.unpack_from("<I", data, 46)[0] == len(AUDIO)
    wav = read_wav(data)
    assert wav.format.encoding is WavEncoding.MULAW
    assert wav.format.bits_per_sample == 8
    assert wav.data == AUDIO
    assert wav.data_offset == 58


def test_python_wave_module_reads_what_we_write() -> None:
    stereo = np.arange(400, dtype="<i2").tobytes()
    with wave.open(io.BytesIO(wav_bytes(stereo, 16000, 2)), "rb") as reader:
        assert reader.getnchannels() == 2
        assert reader.getframerate() == 16000
        assert reader.readframes(1000) == stereo


def test_chunks_before_data_are_walked_not_assumed() -> None:
    data = _riff(
        _chunk(b"fmt ", _fmt(tag=7, bits=8) + b"\x00\x00"),
        _chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00Lavf\x00"),  # odd size: padded
        _chunk(b"fact", struct.pack("<I", len(AUDIO))),
        _chunk(b"data", AUDIO),
    )
    assert strip_wav(data) == AUDIO
    wav = read_wav(data)
    assert wav.format.encoding is WavEncoding.MULAW
    assert wav.data_offset > 44


def test_extensible_format_reports_its_sub_format() -> None:
    extension = struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1) + b"\x00" * 14
    data = _riff(_chunk(b"fmt ", _fmt(tag=0xFFFE) + extension), _chunk(b"data", AUDIO))
    assert read_wav(data).format.encoding is WavEncoding.PCM


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF, 10**6])
def test_placeholder_or_overlong_data_sizes_mean_to_the_end(size: int) -> None:
    header = _riff(_chunk(b"fmt ", _fmt())) + b"data" + struct.pack("<I", size)
    assert strip_wav(header + AUDIO) == AUDIO


def test_a_torn_last_sample_is_not_returned_as_audio() -> None:
    data = _riff(_chunk(b"fmt ", _fmt(channels=2)), _chunk(b"data", AUDIO[:-1]))
    assert len(read_wav(data).data) == len(AUDIO) - 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated before the data chunk"),
        (b"ID3\x04" + b"\x00" * 40, "not a RIFF/WAVE file"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "not a RIFF/WAVE file"),
        (_riff(_chunk(b"fmt ", _fmt())), "truncated before the data chunk"),
        (_riff(_chunk(b"fmt ", _fmt())) + b"\xff\xfe\x00\x01\x00\x00\x00\x00", "garbage"),
        (_riff(_chunk(b"fmt ", _fmt()[:10]), _chunk(b"data", AUDIO)), "needs at least 16"),
    ],
)
def test_bad_files_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(WavError, match=reason):
        read_wav(data)


def test_read_wav_needs_a_fmt_chunk_but_strip_does_not() -> None:
    data = _riff(_chunk(b"data", AUDIO))
    assert strip_wav(data) == AUDIO
    with pytest.raises(WavError, match="no fmt chunk"):
        read_wav(data)


def test_stream_stripper_byte_by_byte() -> None:
    data = _riff(
        _chunk(b"fmt ", _fmt(tag=7, bits=8) + b"\x00\x00"),
        _chunk(b"LIST", b"x" * 33),
        b"data" + struct.pack("<I", 0xFFFFFFFF),  # streaming: size unknown
    )
    stripper = WavStreamStripper()
    out = b"".join(stripper.push(data[i : i + 1]) for i in range(len(data)))
    out += b"".join(stripper.push(AUDIO[i : i + 100]) for i in range(0, len(AUDIO), 100))
    stripper.finish()
    assert out == AUDIO
    assert stripper.format is not None
    assert stripper.format.encoding is WavEncoding.MULAW


def test_stream_stripper_failures() -> None:
    stripper = WavStreamStripper()
    assert stripper.push(b"RIFF") == b""
    with pytest.raises(WavError, match="before the data chunk"):
        stripper.finish()
    with pytest.raises(WavError, match="not a RIFF/WAVE file"):
        WavStreamStripper().push(b"OggS\x00\x02")
    huge = _riff() + b"junk" + struct.pack("<I", MAX_HEADER_BYTES * 2)
    with pytest.raises(WavError, match="before any audio"):
        WavStreamStripper().push(huge)


def test_writer_refuses_what_it_cannot_describe() -> None:
    with pytest.raises(WavError, match="whole number of 2-channel frames"):
        wav_bytes(b"\x00" * 6, 8000, 2)
    with pytest.raises(WavError, match="channels"):
        wav_header(0, 8000, 0)
    with pytest.raises(WavError, match="do not fit"):
        wav_header(2**32, 8000, 1)


# -- recording ---------------------------------------------------------------------------

RATE = 8000


def _tone(ms: int, value: int) -> bytes:
    return np.full(ms * 8, value, dtype="<i2").tobytes()


def _channels(path: Path) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    wav = read_wav(path.read_bytes())
    assert wav.format.channels == 2
    assert wav.format.sample_rate == RATE
    samples = np.frombuffer(wav.data, dtype="<i2").reshape(-1, 2)
    return samples[:, 0], samples[:, 1]


def _at(ms: int) -> int:
    return ms * 8


def test_caller_frames_land_on_their_timestamps_and_gaps_stay_silent(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    with CallRecorder(path) as recorder:
        recorder.add_caller(_tone(20, 100), 0)
        recorder.add_caller(_tone(20, 200), 20)
        recorder.add_caller(_tone(20, 300), 500)  # Twilio left 460 ms of silence out
    caller, agent = _channels(path)
    assert len(caller) == _at(520)
    assert np.all(caller[: _at(20)] == 100)
    assert np.all(caller[_at(20) : _at(40)] == 200)
    assert np.all(caller[_at(40) : _at(500)] == 0)
    assert np.all(caller[_at(500) :] == 300)
    assert not agent.any()


def test_agent_audio_plays_back_to_back_and_aligns_with_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    with CallRecorder(path) as recorder:
        recorder.add_caller(_tone(20, 7), 1000)
        recorder.add_agent(_tone(100, 1), 1000)  # sent at 1000: plays 1000-1100
        recorder.add_agent(_tone(100, 2), 1010)  # sent early: queued after, 1100-1200
        assert recorder.agent_playing_until_ms == 1200
        recorder.add_agent(_tone(50, 3), 2000)  # sent after a pause: plays at 2000
    caller, agent = _channels(path)
    assert caller[_at(1000)] == 7
    assert agent[_at(1000)] == 1
    assert not agent[: _at(1000)].any()
    assert np.all(agent[_at(1000) : _at(1100)] == 1)
    assert np.all(agent[_at(1100) : _at(1200)] == 2)
    assert not agent[_at(1200) : _at(2000)].any()
    assert np.all(agent[_at(2000) : _at(2050)] == 3)


def test_clear_removes_what_the_caller_never_heard(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    with CallRecorder(path) as recorder:
        recorder.add_agent(_tone(3000, 5), 0)  # a 3 s reply sent at once
        recorder.add_caller(_tone(20, 9), 1200)  # the caller barges in
        recorder.clear_agent(1250)
        recorder.add_agent(_tone(100, 6), 2000)  # the next reply starts fresh
    _caller, agent = _channels(path)
    assert np.all(agent[: _at(1250)] == 5)
    assert not agent[_at(1250) : _at(2000)].any()
    assert np.all(agent[_at(2000) : _at(2100)] == 6)
    assert len(agent) == _at(2100)


def test_the_file_is_valid_while_the_call_is_still_going(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    recorder = CallRecorder(path, lag_ms=500, flush_every_ms=1000)
    for i in range(250):  # 5 s of caller audio
        recorder.add_caller(_tone(20, i % 100 + 1), i * 20)
    # No close: this is what a crash would leave behind.
    with wave.open(str(path), "rb") as reader:
        frames = reader.getnframes()
        data = np.frombuffer(reader.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert _at(3000) <= frames <= _at(4500)  # written up to ~lag behind the newest frame
    assert np.array_equal(data[: _at(20), 0], np.full(_at(20), 1))
    info = recorder.close()
    assert info.duration_ms == 5000


def test_close_pads_to_the_hang_up_and_cuts_what_was_queued_past_it(tmp_path: Path) -> None:
    padded = CallRecorder(tmp_path / "padded.wav")
    padded.add_caller(_tone(20, 1), 0)
    assert padded.close(end_ms=3000).duration_ms == 3000
    cut = CallRecorder(tmp_path / "cut.wav")
    cut.add_agent(_tone(5000, 4), 0)
    info = cut.close(end_ms=1500)
    assert info.duration_ms == 1500
    _caller, agent = _channels(tmp_path / "cut.wav")
    assert len(agent) == _at(1500)
    assert np.all(agent == 4)


def test_late_caller_audio_is_dropped_and_counted(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "call.wav", lag_ms=200, flush_every_ms=200)
    for i in range(100):
        recorder.add_caller(_tone(20, 1), i * 20)
    recorder.add_caller(_tone(20, 2), 100)  # long written already
    info = recorder.close()
    assert info.late_caller_ms == 20
    caller, _agent = _channels(tmp_path / "call.wav")
    assert not (caller == 2).any()


def test_a_clear_reaching_into_written_audio_is_counted(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "call.wav", lag_ms=200, flush_every_ms=200)
    recorder.add_agent(_tone(2000, 3), 0)
    recorder.advance(1500)  # 0-1300 ms is final and written
    recorder.clear_agent(1000)
    info = recorder.close()
    assert info.uncleared_agent_ms == 300
    _caller, agent = _channels(tmp_path / "call.wav")
    assert len(agent) == _at(1300)


def test_memory_stays_bounded_when_the_agent_queues_minutes(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "call.wav", max_pending_ms=10_000)
    for second in range(120):  # two minutes of agent audio, all sent at the start
        recorder.add_agent(_tone(1000, second + 1), 0)
        assert recorder.buffered_ms <= 10_000
    info = recorder.close()
    assert info.duration_ms == 120_000
    _caller, agent = _channels(tmp_path / "call.wav")
    assert agent[0] == 1
    assert agent[-1] == 120


def test_long_silences_are_written_without_buffering_them(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "call.wav")
    recorder.add_caller(_tone(20, 1), 0)
    recorder.advance(600_000)  # ten minutes in which Twilio sent nothing
    assert recorder.buffered_ms <= 2_000
    recorder.add_caller(_tone(20, 2), 600_000)
    info = recorder.close()
    assert info.duration_ms == 600_020
    caller, _agent = _channels(tmp_path / "call.wav")
    assert caller[0] == 1
    assert caller[-1] == 2
    assert not caller[_at(20) : _at(600_000)].any()


def test_misuse_is_refused(tmp_path: Path) -> None:
    recorder = CallRecorder(tmp_path / "nested" / "dir" / "call.wav")
    with pytest.raises(RecorderError, match="even number of bytes"):
        recorder.add_caller(b"\x00", 0)
    with pytest.raises(RecorderError, match="negative"):
        recorder.add_agent(b"", -1)
    with pytest.raises(RecorderError, match="negative"):
        recorder.clear_agent(-5)
    first = recorder.close()
    assert recorder.close() is first
    assert recorder.closed
    with pytest.raises(RecorderError, match="closed"):
        recorder.add_caller(b"\x00\x00", 0)
    with pytest.raises(RecorderError, match="lag_ms"):
        CallRecorder(tmp_path / "x.wav", lag_ms=1000, flush_every_ms=1000, max_pending_ms=1500)
    with pytest.raises(RecorderError, match="cannot create"):
        CallRecorder(tmp_path)  # a directory
