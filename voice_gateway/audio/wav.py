"""WAV (RIFF) reading and writing, by walking chunks rather than trusting 44 bytes.

Twilio plays header bytes as noise, so every provider that answers with a WAV (Google
TTS does, even for MULAW) must be stripped to its `data` chunk. The canonical header is
44 bytes only when `fmt ` is the 16-byte PCM form and nothing else precedes `data`;
real files carry `LIST`/`fact` chunks, 18- or 40-byte `fmt ` chunks (μ-law, extensible)
and streaming writers put 0 or 0xFFFFFFFF in the size fields. So: walk the chunks,
honour the pad byte after odd-sized chunks, and take the data size from the file when
the header's is a placeholder or runs past the end.

`wav_bytes` and `wav_header` write the two encodings the gateway uses: PCM16 (what the
recorder writes) and μ-law (format 7, with the `fact` chunk non-PCM formats require).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

_RIFF = b"RIFF"
_WAVE = b"WAVE"
_FMT = b"fmt "
_DATA = b"data"
_FACT = b"fact"
_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
#: A header longer than this is not a header (bounds the streaming stripper's buffer).
MAX_HEADER_BYTES = 64 * 1024


class WavEncoding(IntEnum):
    """The WAVE format tags we read and write (others are reported by number)."""

    PCM = 1
    MULAW = 7


class WavError(ValueError):
    """Bytes that are not a WAV we can use, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WavFormat:
    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int

    @property
    def encoding(self) -> WavEncoding | None:
        try:
            return WavEncoding(self.format_tag)
        except ValueError:
            return None

    @property
    def block_align(self) -> int:
        return self.channels * max(1, self.bits_per_sample // 8)


@dataclass(frozen=True, slots=True)
class Wav:
    format: WavFormat
    data: bytes
    #: Byte offset of the audio inside the file (tests and tools; not 44 in general).
    data_offset: int


def _parse_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise WavError(f"fmt chunk is {len(body)} bytes, needs at least 16")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack_from("<H", body, 24)[0]  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise WavError(f"fmt chunk has {channels} channels at {rate} Hz")
    return WavFormat(tag, channels, rate, bits)


def _walk(data: bytes) -> tuple[WavFormat | None, int, int] | None:
    """(format, data offset, data length), or None while the header is incomplete.

    Raises `WavError` for bytes that can never become a WAV.
    """
    if len(data) < 12:
        if not _RIFF.startswith(data[:4]) or (len(data) > 8 and not _WAVE.startswith(data[8:])):
            raise WavError("not a RIFF/WAVE file")
        return None
    if data[:4] != _RIFF or data[8:12] != _WAVE:
        raise WavError("not a RIFF/WAVE file")
    fmt: WavFormat | None = None
    offset = 12
    while True:
        if offset + 8 > len(data):
            return None
        chunk_id = data[offset : offset + 4]
        size = struct.unpack_from("<I", data, offset + 4)[0]
        body_start = offset + 8
        if chunk_id == _DATA:
            available = len(data) - body_start
            length = available if size in _UNKNOWN_SIZES or size > available else size
            return fmt, body_start, length
        if not chunk_id.isascii():
            raise WavError(f"garbage where a chunk id should be at byte {offset}")
        if body_start + size > len(data):
            if body_start + size > MAX_HEADER_BYTES:
                raise WavError(f"{chunk_id!r} chunk of {size} bytes before any audio")
            return None
        if chunk_id == _FMT:
            fmt = _parse_fmt(data[body_start : body_start + size])
        offset = body_start + size + (size & 1)  # chunks are padded to even sizes


def read_wav(data: bytes) -> Wav:
    """Parse a whole WAV file held in memory."""
    walked = _walk(data)
    if walked is None:
        raise WavError("truncated before the data chunk")
    fmt, offset, length = walked
    if fmt is None:
        raise WavError("no fmt chunk before the data chunk")
    length -= length % fmt.block_align  # a torn last sample frame cannot be played
    return Wav(fmt, data[offset : offset + length], offset)


def strip_wav(data: bytes) -> bytes:
    """The audio bytes of a WAV file: the body of its `data` chunk, wherever it starts."""
    walked = _walk(data)
    if walked is None:
        raise WavError("truncated before the data chunk")
    _fmt, offset, length = walked
    return data[offset : offset + length]


class WavStreamStripper:
    """Strips the header off a WAV that arrives in pieces (a streaming TTS response).

    Buffers until the `data` chunk starts (at most `MAX_HEADER_BYTES`), then passes
    every byte straight through. `format` is known once audio has started.
    """

    __slots__ = ("_buffer", "_format", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._started = False
        self._format: WavFormat | None = None

    @property
    def format(self) -> WavFormat | None:
        return self._format

    def push(self, chunk: bytes) -> bytes:
        if self._started:
            return chunk
        self._buffer += chunk
        walked = _walk(self._buffer)
        if walked is None:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise WavError(f"no data chunk in the first {MAX_HEADER_BYTES} bytes")
            return b""
        self._format, offset, _length = walked
        audio = self._buffer[offset:]
        self._buffer = b""
        self._started = True
        return audio

    def finish(self) -> None:
        """Raise if the stream ended before its audio began."""
        if not self._started:
            raise WavError("stream ended before the data chunk")


def wav_header(
    data_bytes: int,
    rate: int,
    channels: int,
    *,
    encoding: WavEncoding = WavEncoding.PCM,
) -> bytes:
    """The header for `data_bytes` of audio; the last 4 bytes are the data size field."""
    if channels < 1 or rate < 1:
        raise WavError(f"cannot describe {channels} channels at {rate} Hz")
    if not 0 <= data_bytes <= 0xFFFFFFFF - 58:
        raise WavError(f"{data_bytes} bytes do not fit in a WAV file")
    width = 2 if encoding is WavEncoding.PCM else 1
    align = channels * width
    fmt = struct.pack("<HHIIHH", encoding, channels, rate, rate * align, align, width * 8)
    extra = b""
    if encoding is not WavEncoding.PCM:
        fmt += struct.pack("<H", 0)  # cbSize: non-PCM fmt chunks are 18 bytes
        extra = _FACT + struct.pack("<II", 4, data_bytes // align)
    chunks = _FMT + struct.pack("<I", len(fmt)) + fmt + extra
    riff_size = 4 + len(chunks) + 8 + data_bytes + (data_bytes & 1)
    return (
        _RIFF
        + struct.pack("<I", riff_size)
        + _WAVE
        + chunks
        + _DATA
        + struct.pack("<I", data_bytes)
    )


def wav_bytes(
    pcm: bytes,
    rate: int,
    channels: int,
    *,
    encoding: WavEncoding = WavEncoding.PCM,
) -> bytes:
    """A complete WAV file around `pcm` (interleaved; PCM16 LE or μ-law bytes)."""
    width = 2 if encoding is WavEncoding.PCM else 1
    if len(pcm) % (width * channels):
        raise WavError(f"{len(pcm)} bytes is not a whole number of {channels}-channel frames")
    pad = b"\x00" if len(pcm) & 1 else b""
    return wav_header(len(pcm), rate, channels, encoding=encoding) + pcm + pad
