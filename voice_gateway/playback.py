"""What the caller has heard: a model of Twilio's playback buffer, on the call clock.

Pure: the session tells it when audio was sent, marks echoed, `clear` sent, and asks
how much is buffered (to pace output) and what each segment's caller actually heard
(to record an interrupted turn truncated to it). Twilio plays audio in order from the
moment it arrives; a `mark` echo after a segment proves it finished playing — except
after `clear`, which echoes every pending mark, so echoes of cleared marks are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BYTES_PER_MS = 8  # μ-law at 8 kHz: one byte per sample


@dataclass
class Segment:
    """One sentence of an agent reply: its text, and its audio as sent so far."""

    seq: int
    text: str
    mark: str
    sent_ms: int = 0  # duration of the audio sent for it
    start_ms: int | None = None  # call-clock time its first audio starts playing
    complete: bool = False  # all of its audio was sent (its mark follows)
    played: bool = False  # its mark was echoed before any clear

    @property
    def end_ms(self) -> int | None:
        return None if self.start_ms is None else self.start_ms + self.sent_ms


@dataclass(frozen=True, slots=True)
class Heard:
    segment: Segment
    heard_ms: int

    @property
    def text(self) -> str:
        return truncate_to_heard(self.segment.text, self.heard_ms, self.segment.sent_ms)


@dataclass
class Playback:
    """Twilio's buffer as we can infer it; times are call-clock milliseconds."""

    play_end_ms: int = 0
    _pending: dict[str, Segment] = field(default_factory=dict)
    _cleared_marks: set[str] = field(default_factory=set)

    def buffered_ms(self, now_ms: int) -> int:
        return max(0, self.play_end_ms - now_ms)

    def audio_sent(self, segment: Segment, nbytes: int, now_ms: int) -> None:
        start = max(now_ms, self.play_end_ms)
        if segment.start_ms is None:
            segment.start_ms = start
        duration = nbytes // BYTES_PER_MS
        segment.sent_ms += duration
        self.play_end_ms = start + duration

    def mark_sent(self, segment: Segment) -> None:
        segment.complete = True
        self._pending[segment.mark] = segment

    def mark_echoed(self, name: str) -> Segment | None:
        """The segment whose playback this echo proves, or None (cleared or unknown)."""
        if name in self._cleared_marks:
            self._cleared_marks.discard(name)
            return None
        segment = self._pending.pop(name, None)
        if segment is not None:
            segment.played = True
        return segment

    def clear(self, segments: list[Segment], now_ms: int) -> list[Heard]:
        """`clear` was sent at `now_ms`: what each unconfirmed segment's caller heard."""
        heard: list[Heard] = []
        for segment in segments:
            if segment.played:
                heard.append(Heard(segment, segment.sent_ms))
                continue
            if segment.start_ms is None:
                heard.append(Heard(segment, 0))
                continue
            played = min(max(0, now_ms - segment.start_ms), segment.sent_ms)
            heard.append(Heard(segment, played))
        self._cleared_marks.update(self._pending)
        self._pending.clear()
        self.play_end_ms = now_ms
        return heard

    @property
    def pending_marks(self) -> int:
        return len(self._pending)


def truncate_to_heard(text: str, heard_ms: int, total_ms: int) -> str:
    """The words of `text` the caller heard, assuming even pacing across its audio."""
    if total_ms <= 0 or heard_ms <= 0:
        return ""
    if heard_ms >= total_ms:
        return text
    words = text.split()
    keep = int(len(words) * heard_ms / total_ms)
    return " ".join(words[:keep])
