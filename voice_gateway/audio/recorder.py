"""The call recording: a stereo WAV, caller on the left, agent on the right, on one clock.

Recordings go wrong in two ways in other frameworks: tracks drift apart (each side's
audio is appended as it comes, so every silence Twilio leaves out and every gap between
replies shifts one track against the other), and the agent track holds audio the caller
never heard (what was sent just before a barge-in). Here both tracks are placed by time:

* caller audio at its Twilio media timestamp; what is missing stays silent (Twilio may
  omit silent chunks, so gaps are real time, never skipped). Frames are gathered into
  runs and placed when the recording next needs them (a write, agent audio, a `clear`):
  one copy per second of audio instead of one per 20 ms frame;
* agent audio where it plays: at the call-clock time it was sent, or when the audio
  sent before it ends, whichever is later (Twilio plays its buffer in order);
* `clear_agent(at_ms)` erases agent audio scheduled after the `clear`, as the caller's
  phone never played it.

The file is written as the call goes: audio older than `lag_ms` behind the newest time
seen is final (a `clear` cannot reach into the past, late caller frames are dropped and
counted) and is appended about once a second, with the RIFF and data sizes rewritten
each time. A crash mid-call leaves a valid WAV up to the last write; memory stays at
`lag_ms` plus whatever agent audio is queued ahead, capped at `max_pending_ms` (beyond
that the oldest audio is written out even if a later `clear` could have trimmed it).

Writing is plain blocking file I/O of ~32 KB a second per call, microseconds per write;
a session on a slow disk can run `add_*`/`close` in a thread.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from voice_gateway.audio.wav import wav_header
from voice_gateway.providers.base import SAMPLE_RATE

CALLER = 0  # left channel
AGENT = 1  # right channel
_CHANNELS = 2
_FRAME_BYTES = 2 * _CHANNELS  # one stereo PCM16 sample frame
_ZEROS = bytes(_FRAME_BYTES * 8000)  # written in pieces for long silences


class RecorderError(Exception):
    """Misuse of a recorder (writing after close, odd PCM, negative time) or a disk error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Run:
    """Contiguous caller frames not placed yet (sample indexes on the call clock)."""

    start: int
    end: int
    chunks: list[bytes]


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    path: Path
    duration_ms: int
    data_bytes: int
    #: Caller audio that arrived after its moment had been written (dropped), in ms.
    late_caller_ms: int
    #: Agent audio a `clear` should have removed but that was already written, in ms.
    uncleared_agent_ms: int


class CallRecorder:
    """Writes one call's stereo recording to `path` as it happens."""

    def __init__(
        self,
        path: str | Path,
        *,
        sample_rate: int = SAMPLE_RATE,
        lag_ms: int = 1000,
        flush_every_ms: int = 1000,
        max_pending_ms: int = 60_000,
    ) -> None:
        if sample_rate < 1000 or sample_rate % 1000:
            raise RecorderError(f"sample_rate must be a whole number of kHz, got {sample_rate}")
        if lag_ms < 0 or flush_every_ms <= 0 or max_pending_ms <= lag_ms + flush_every_ms:
            raise RecorderError("need lag_ms >= 0, flush_every_ms > 0 and a larger max_pending_ms")
        self.path = Path(path)
        self._per_ms = sample_rate // 1000
        self._rate = sample_rate
        self._lag = lag_ms * self._per_ms
        self._flush_every = flush_every_ms * self._per_ms
        self._max_pending = max_pending_ms * self._per_ms
        initial = self._lag + self._flush_every + sample_rate
        self._buf: npt.NDArray[np.int16] = np.zeros((initial, _CHANNELS), dtype="<i2")
        self._base = 0  # sample index of _buf[0]: everything before it is in the file
        self._end = 0  # one past the last sample placed on either track
        self._clock = 0  # newest call-clock sample index anyone reported
        self._agent_cursor = 0  # where the next agent audio starts playing, at the earliest
        self._caller_end = 0  # one past the last caller sample placed
        self._caller_runs: list[_Run] = []  # caller audio received, not placed yet
        self._late_caller = 0
        self._uncleared_agent = 0
        self._info: RecordingInfo | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._file.write(wav_header(0, sample_rate, _CHANNELS))
            self._header_bytes = self._file.tell()
            self._file.flush()
        except OSError as exc:
            raise RecorderError(f"cannot create {self.path}: {exc}") from exc

    # -- what the session calls --------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._info is not None

    @property
    def agent_playing_until_ms(self) -> int:
        """When the agent audio queued so far finishes playing (call clock)."""
        return self._agent_cursor // self._per_ms

    @property
    def buffered_ms(self) -> int:
        """Audio held in memory, not yet in the file (bounded by `max_pending_ms`)."""
        self._place_caller()
        return (self._end - self._base) // self._per_ms

    def add_caller(self, pcm: bytes, timestamp_ms: int) -> None:
        """Caller audio (8 kHz PCM16) that Twilio stamped `timestamp_ms`."""
        self._check_open()
        if timestamp_ms < 0:
            raise RecorderError(f"time cannot be negative: {timestamp_ms}")
        if len(pcm) % 2:
            raise RecorderError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
        start = timestamp_ms * self._per_ms
        end = start + len(pcm) // 2
        if end > self._clock:
            self._clock = end
        runs = self._caller_runs
        if runs and runs[-1].end == start:
            run = runs[-1]
            run.chunks.append(pcm)
            run.end = end
        else:
            runs.append(_Run(start, end, [pcm]))
        if self._clock - self._lag - self._base >= self._flush_every:
            self._maybe_flush()

    def add_agent(self, pcm: bytes, sent_at_ms: int) -> None:
        """Agent audio (PCM16 at the recording rate) sent to Twilio at `sent_at_ms`."""
        self._place_caller()
        samples = self._samples(pcm, sent_at_ms)
        sent = sent_at_ms * self._per_ms
        self._tick(sent)
        start = max(sent, self._agent_cursor, self._base)
        self._agent_cursor = start + len(samples)
        self._place(AGENT, start, samples)
        self._maybe_flush()

    def clear_agent(self, at_ms: int) -> None:
        """A `clear` was sent at `at_ms`: the agent audio after it was never heard."""
        self._check_open()
        if at_ms < 0:
            raise RecorderError(f"time cannot be negative: {at_ms}")
        cut = at_ms * self._per_ms
        self._tick(cut)
        self._place_caller()
        if self._agent_cursor <= cut:
            return
        if cut < self._base:
            self._uncleared_agent += self._base - cut
        first = max(cut, self._base) - self._base
        last = self._agent_cursor - self._base
        self._buf[first:last, AGENT] = 0
        self._agent_cursor = max(cut, self._base)
        self._end = max(self._agent_cursor, self._caller_end, self._base)

    def advance(self, now_ms: int) -> None:
        """Time passed with no audio (Twilio left silence out): lets old audio be written."""
        self._check_open()
        self._tick(now_ms * self._per_ms)
        self._maybe_flush()

    def close(self, end_ms: int | None = None) -> RecordingInfo:
        """Write the rest and fix the header; `end_ms` cuts audio queued past the hang-up.

        Closing twice returns the same info.
        """
        if self._info is not None:
            return self._info
        self._place_caller()
        # Audio queued past the hang-up was never heard; silence before it is padded.
        end = self._end if end_ms is None else max(0, end_ms) * self._per_ms
        try:
            if end > self._base:
                self._write(end - self._base)
            self._write_sizes()
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise RecorderError(f"cannot finish {self.path}: {exc}") from exc
        finally:
            self._file.close()
        self._info = RecordingInfo(
            path=self.path,
            duration_ms=self._base // self._per_ms,
            data_bytes=self._base * _FRAME_BYTES,
            late_caller_ms=self._late_caller // self._per_ms,
            uncleared_agent_ms=self._uncleared_agent // self._per_ms,
        )
        return self._info

    def __enter__(self) -> CallRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._info is not None:
            raise RecorderError(f"recording {self.path} is closed")

    def _samples(self, pcm: bytes, at_ms: int) -> npt.NDArray[np.int16]:
        self._check_open()
        if at_ms < 0:
            raise RecorderError(f"time cannot be negative: {at_ms}")
        if len(pcm) % 2:
            raise RecorderError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
        return np.frombuffer(pcm, dtype="<i2")

    def _tick(self, sample: int) -> None:
        self._clock = max(self._clock, sample)

    def _place_caller(self) -> None:
        """Put the caller audio received so far in the buffer, a run at a time; what
        arrives after its moment was written is dropped and counted."""
        if not self._caller_runs:
            return
        runs, self._caller_runs = self._caller_runs, []
        for run in runs:
            pcm = run.chunks[0] if len(run.chunks) == 1 else b"".join(run.chunks)
            samples: npt.NDArray[np.int16] = np.frombuffer(pcm, dtype="<i2")
            start = run.start
            late = max(0, self._base - start)
            if late:
                self._late_caller += min(late, len(samples))
                samples, start = samples[late:], start + late
            self._place(CALLER, start, samples)
            self._caller_end = max(self._caller_end, start + len(samples))

    def _place(self, channel: int, start: int, samples: npt.NDArray[np.int16]) -> None:
        if not len(samples):
            return
        end = start + len(samples)
        if end - self._base > self._max_pending:
            # Bounded memory: write out the oldest audio even though it is not final.
            self._write(end - self._max_pending - self._base)
            if start < self._base:
                skipped = self._base - start
                samples, start = samples[skipped:], self._base
        self._reserve(end - self._base)
        self._buf[start - self._base : end - self._base, channel] = samples
        self._end = max(self._end, end)

    def _reserve(self, length: int) -> None:
        if length <= len(self._buf):
            return
        size = len(self._buf)
        while size < length:
            size *= 2
        grown: npt.NDArray[np.int16] = np.zeros((size, _CHANNELS), dtype="<i2")
        used = self._end - self._base
        grown[:used] = self._buf[:used]
        self._buf = grown

    def _maybe_flush(self) -> None:
        safe = self._clock - self._lag  # older audio is final; beyond _end it is silence
        if safe - self._base >= self._flush_every:
            self._place_caller()  # may write (bounded memory), so the base is read after
            try:
                self._write(safe - self._base)
                self._write_sizes()
                self._file.flush()
            except OSError as exc:
                raise RecorderError(f"cannot write {self.path}: {exc}") from exc

    def _write(self, count: int) -> None:
        """Append the first `count` buffered sample frames to the file and drop them."""
        if count <= 0:
            return
        self._place_caller()
        used = self._end - self._base
        take = min(count, used)
        if take > 0:
            self._file.write(self._buf[:take].tobytes())
            remaining = used - take
            self._buf[:remaining] = self._buf[take:used]
            self._buf[remaining:used] = 0
        silence = (count - take) * _FRAME_BYTES  # past the last audio: a gap left out
        while silence > 0:
            piece = min(silence, len(_ZEROS))
            self._file.write(_ZEROS[:piece])
            silence -= piece
        self._base += count
        self._end = max(self._end, self._base)
        self._agent_cursor = max(self._agent_cursor, self._base)

    def _write_sizes(self) -> None:
        data_bytes = self._base * _FRAME_BYTES
        if data_bytes > 0xFFFFFFFF - self._header_bytes:
            raise RecorderError(f"recording {self.path} is past the 4 GiB WAV limit")
        position = self._file.tell()
        self._file.seek(4)
        self._file.write(struct.pack("<I", self._header_bytes - 8 + data_bytes))
        self._file.seek(self._header_bytes - 4)
        self._file.write(struct.pack("<I", data_bytes))
        self._file.seek(position)
