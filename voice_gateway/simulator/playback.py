"""Twilio's side of the agent's audio: a playback buffer the simulator plays "by ear".

Twilio buffers every `media` payload the server sends and plays it in order at 8 kHz
from the moment it arrives; a `mark` is echoed when the audio sent before it has
finished playing, or at once when nothing is buffered; `clear` drops what has not been
played yet and echoes every pending mark immediately. The server's barge-in logic and
its record of "what the caller heard" depend on exactly these rules, so the simulator
models them rather than echoing marks on receipt.

Pure and synchronous (h11's "ask, don't block"): every method takes the caller's clock
reading in milliseconds and returns the events that happened up to then, in time order.
Nothing here sleeps or reads a clock, so the tests pin every timing exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: μ-law at 8 kHz: one byte is one sample, eight samples a millisecond.
BYTES_PER_MS = 8
#: The μ-law code of silence, used to fill gaps in the recording of what was played.
MULAW_SILENCE = 0xFF


@dataclass(frozen=True, slots=True)
class PlaybackStarted:
    """The agent became audible: audio arrived while nothing was playing."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """The buffer ran dry: everything since `PlaybackStarted` was played to the end."""

    at_ms: float
    played_ms: float


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    """Twilio echoes `name`. `played` is False when `clear` forced the echo: the audio
    before the mark was dropped, not heard."""

    name: str
    at_ms: float
    played: bool


@dataclass(frozen=True, slots=True)
class Cleared:
    """`clear` arrived: playback stopped after `played_ms` and `dropped_ms` went unheard."""

    at_ms: float
    played_ms: float
    dropped_ms: float
    #: Marks echoed by this `clear` (each also appears as a `MarkEchoed(played=False)`).
    marks: int


PlaybackEvent = PlaybackStarted | PlaybackFinished | MarkEchoed | Cleared


class PlaybackBuffer:
    """The audio Twilio holds for one call, on the simulator's clock (ms, float).

    With `record=True` it also keeps the agent's μ-law audio exactly as it was played:
    on the call's timeline from `origin_ms`, silence where nothing played, and cut where
    `clear` dropped the rest.
    """

    __slots__ = (
        "_burst_start",
        "_now",
        "_origin",
        "_pending",
        "_play_end",
        "_playing",
        "_recording",
        "dropped_ms",
        "max_buffered_ms",
        "played_ms",
    )

    def __init__(self, *, origin_ms: float = 0.0, record: bool = False) -> None:
        self._origin = origin_ms
        self._now = origin_ms
        self._play_end = origin_ms
        self._playing = False
        self._burst_start = origin_ms
        #: (due time, name) in the order sent; due times never decrease.
        self._pending: deque[tuple[float, str]] = deque()
        self._recording: bytearray | None = bytearray() if record else None
        #: Totals for the whole call: agent audio heard, dropped by `clear`, and the most
        #: audio ever queued ahead of the playhead (how far the server ran ahead).
        self.played_ms = 0.0
        self.dropped_ms = 0.0
        self.max_buffered_ms = 0.0

    # -- questions --------------------------------------------------------------------

    def playing(self, now_ms: float) -> bool:
        """Whether the caller hears the agent at `now_ms` (as of the last input)."""
        return self._playing and now_ms < self._play_end

    def buffered_ms(self, now_ms: float) -> float:
        return max(0.0, self._play_end - now_ms) if self._playing else 0.0

    @property
    def burst_started_ms(self) -> float | None:
        """When the audio now playing became audible, or None when silent."""
        return self._burst_start if self._playing else None

    @property
    def pending_marks(self) -> int:
        return len(self._pending)

    def next_due_ms(self) -> float | None:
        """The next time something happens without input (a mark echo, a dry buffer)."""
        if self._pending:
            return self._pending[0][0]
        return self._play_end if self._playing else None

    def recording(self) -> bytes:
        """What was played so far, as μ-law 8 kHz from `origin_ms` (needs `record=True`).

        Audio queued but not played yet is left out, so a recording taken mid-call is
        what the caller has heard up to the last input.
        """
        if self._recording is None:
            raise ValueError("this buffer was created without record=True")
        heard = len(self._recording)
        if self._playing and self._play_end > self._now:
            heard -= round((self._play_end - self._now) * BYTES_PER_MS)
        return bytes(self._recording[: max(0, heard)])

    # -- inputs -----------------------------------------------------------------------

    def advance(self, now_ms: float) -> list[PlaybackEvent]:
        """Let time run to `now_ms`: echo the marks whose audio has played, note a dry
        buffer. Time never runs backwards; an earlier reading is taken as the last one."""
        events: list[PlaybackEvent] = []
        now = max(now_ms, self._now)
        self._now = now
        pending = self._pending
        while pending and pending[0][0] <= now:
            due, name = pending.popleft()
            events.append(MarkEchoed(name, due, True))
        if self._playing and self._play_end <= now:
            self._playing = False
            played = self._play_end - self._burst_start
            self.played_ms += played
            events.append(PlaybackFinished(self._play_end, played))
        return events

    def media(self, now_ms: float, payload: bytes) -> list[PlaybackEvent]:
        """The server sent `payload` (μ-law) at `now_ms`: it plays after what is queued."""
        events = self.advance(now_ms)
        if not payload:
            return events
        now = self._now
        if not self._playing:
            self._playing = True
            self._burst_start = now
            self._play_end = now
            events.append(PlaybackStarted(now))
            if self._recording is not None:
                gap = round((now - self._origin) * BYTES_PER_MS) - len(self._recording)
                if gap > 0:
                    self._recording.extend(bytes((MULAW_SILENCE,)) * gap)
        self._play_end += len(payload) / BYTES_PER_MS
        if self._recording is not None:
            self._recording.extend(payload)
        buffered = self._play_end - now
        if buffered > self.max_buffered_ms:
            self.max_buffered_ms = buffered
        return events

    def mark(self, now_ms: float, name: str) -> list[PlaybackEvent]:
        """The server sent a mark: echoed when the audio before it has played."""
        events = self.advance(now_ms)
        if self._playing:
            self._pending.append((self._play_end, name))
        else:
            events.append(MarkEchoed(name, self._now, True))
        return events

    def clear(self, now_ms: float) -> list[PlaybackEvent]:
        """The server sent `clear`: stop now, drop the rest, echo every pending mark."""
        events = self.advance(now_ms)
        now = self._now
        marks = len(self._pending)
        for _due, name in self._pending:
            events.append(MarkEchoed(name, now, False))
        self._pending.clear()
        played = dropped = 0.0
        if self._playing:
            played = now - self._burst_start
            dropped = self._play_end - now
            self.played_ms += played
            self.dropped_ms += dropped
            self._playing = False
            self._play_end = now
            if self._recording is not None:
                del self._recording[len(self._recording) - round(dropped * BYTES_PER_MS) :]
        events.append(Cleared(now, played, dropped, marks))
        return events
