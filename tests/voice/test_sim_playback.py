"""The simulator's model of Twilio's playback buffer, on an explicit clock (ms)."""

import pytest

from voice_gateway.audio import mulaw
from voice_gateway.simulator.playback import (
    Cleared,
    MarkEchoed,
    PlaybackBuffer,
    PlaybackFinished,
    PlaybackStarted,
)

MS = 8  # μ-law bytes per millisecond at 8 kHz


def audio(ms: int, byte: int = 0x20) -> bytes:
    return bytes([byte]) * (ms * MS)


# -- marks are echoed when the audio before them has played ----------------------------


def test_audio_arriving_while_idle_starts_playing_at_once():
    buffer = PlaybackBuffer()
    assert buffer.media(100, audio(20)) == [PlaybackStarted(100)]
    assert buffer.playing(100)
    assert buffer.playing(119.9)
    assert not buffer.playing(120)
    assert buffer.buffered_ms(105) == 15
    assert buffer.burst_started_ms == 100


def test_mark_is_echoed_when_the_audio_before_it_finishes():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(100))
    assert buffer.mark(10, "seg-1") == []
    assert buffer.next_due_ms() == 100
    assert buffer.advance(99.9) == []
    assert buffer.advance(100) == [MarkEchoed("seg-1", 100, True), PlaybackFinished(100, 100)]
    assert buffer.advance(500) == []


def test_mark_with_nothing_buffered_is_echoed_at_once():
    buffer = PlaybackBuffer()
    assert buffer.mark(42, "alone") == [MarkEchoed("alone", 42, True)]
    buffer.media(50, audio(20))
    buffer.advance(70)
    # The buffer ran dry at 70; a mark at 80 has nothing before it.
    assert buffer.mark(80, "after") == [MarkEchoed("after", 80, True)]


def test_audio_queues_behind_what_is_buffered():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(20))
    assert buffer.mark(0, "a") == []
    assert buffer.media(5, audio(20)) == []  # still playing: appended, no new start
    assert buffer.mark(5, "b") == []
    assert buffer.advance(20) == [MarkEchoed("a", 20, True)]
    assert buffer.advance(60) == [MarkEchoed("b", 40, True), PlaybackFinished(40, 40)]


def test_events_that_fell_due_before_an_input_come_first_in_time_order():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(20))
    buffer.mark(0, "first")
    # Nobody advanced the clock; new audio at 50 reports the earlier echo and gap first.
    assert buffer.media(50, audio(20)) == [
        MarkEchoed("first", 20, True),
        PlaybackFinished(20, 20),
        PlaybackStarted(50),
    ]


def test_audio_sent_whole_or_in_pieces_plays_the_same():
    whole, pieces = PlaybackBuffer(), PlaybackBuffer()
    whole.media(0, audio(100))
    whole.mark(0, "m")
    for _ in range(5):
        pieces.media(0, audio(20))
    pieces.mark(0, "m")
    assert whole.advance(1000) == pieces.advance(1000)


def test_time_never_runs_backwards():
    buffer = PlaybackBuffer()
    buffer.advance(50)
    assert buffer.media(40, audio(20)) == [PlaybackStarted(50)]
    assert buffer.next_due_ms() == 70


def test_most_audio_buffered_ahead_is_tracked():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(300))
    buffer.media(100, audio(300))  # 200 left + 300 more
    assert buffer.max_buffered_ms == 500


# -- clear -------------------------------------------------------------------------------


def test_clear_drops_unplayed_audio_and_echoes_every_pending_mark_at_once():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(100))
    buffer.mark(0, "seg-1")
    buffer.media(0, audio(100))
    buffer.mark(0, "seg-2")
    buffer.media(0, audio(100))
    buffer.mark(0, "seg-3")
    events = buffer.clear(130)
    assert events == [
        MarkEchoed("seg-1", 100, True),  # really played before the clear
        MarkEchoed("seg-2", 130, False),
        MarkEchoed("seg-3", 130, False),
        Cleared(130, played_ms=130, dropped_ms=170, marks=2),
    ]
    assert not buffer.playing(130)
    assert buffer.pending_marks == 0
    assert buffer.next_due_ms() is None
    assert buffer.advance(1000) == []
    assert (buffer.played_ms, buffer.dropped_ms) == (130, 170)


def test_clear_with_nothing_playing_only_reports_itself():
    buffer = PlaybackBuffer()
    assert buffer.clear(10) == [Cleared(10, 0, 0, 0)]


def test_after_a_clear_new_audio_starts_a_new_burst():
    buffer = PlaybackBuffer()
    buffer.media(0, audio(100))
    buffer.clear(40)
    assert buffer.media(45, audio(20)) == [PlaybackStarted(45)]
    assert buffer.mark(45, "new") == []
    assert buffer.advance(65) == [MarkEchoed("new", 65, True), PlaybackFinished(65, 20)]
    assert buffer.played_ms == 60


# -- what the caller heard -----------------------------------------------------------------


def test_recording_is_the_played_audio_on_the_call_timeline():
    buffer = PlaybackBuffer(origin_ms=1000, record=True)
    buffer.media(1010, audio(20, 0x20))
    buffer.advance(1030)
    buffer.media(1050, audio(10, 0x30))
    buffer.advance(2000)
    silence = bytes([mulaw.SILENCE_BYTE])
    assert buffer.recording() == (
        silence * (10 * MS) + audio(20, 0x20) + silence * (20 * MS) + audio(10, 0x30)
    )


def test_recording_is_truncated_where_clear_cut_the_audio():
    buffer = PlaybackBuffer(record=True)
    buffer.media(0, audio(100, 0x20))
    buffer.media(0, audio(100, 0x30))
    buffer.clear(150)
    assert buffer.recording() == audio(100, 0x20) + audio(50, 0x30)
    buffer.media(200, audio(10, 0x40))
    buffer.advance(300)
    silence = bytes([mulaw.SILENCE_BYTE])
    assert buffer.recording() == (
        audio(100, 0x20) + audio(50, 0x30) + silence * (50 * MS) + audio(10, 0x40)
    )


def test_recording_mid_call_leaves_out_what_has_not_played_yet():
    buffer = PlaybackBuffer(record=True)
    buffer.media(0, audio(100))
    buffer.advance(25)
    assert buffer.recording() == audio(25)


def test_recording_needs_to_be_asked_for():
    with pytest.raises(ValueError, match="record=True"):
        PlaybackBuffer().recording()
