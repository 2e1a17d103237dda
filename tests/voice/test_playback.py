from __future__ import annotations

from voice_gateway.playback import Playback, Segment, truncate_to_heard


def test_audio_queues_behind_what_is_already_buffered() -> None:
    p = Playback()
    a, b = Segment(1, "uno dos", "seg-1"), Segment(2, "tres cuatro", "seg-2")
    p.audio_sent(a, 800, now_ms=0)  # 100 ms
    p.audio_sent(b, 1600, now_ms=20)  # 200 ms, starts when a ends
    assert a.start_ms == 0
    assert b.start_ms == 100
    assert p.buffered_ms(20) == 280
    assert p.buffered_ms(400) == 0
    p.audio_sent(a, 80, now_ms=1000)  # after a gap: plays at once
    assert p.play_end_ms == 1010


def test_mark_echo_proves_playback_but_not_after_clear() -> None:
    p = Playback()
    a, b = Segment(1, "hola", "seg-1"), Segment(2, "qué tal", "seg-2")
    p.audio_sent(a, 800, 0)
    p.mark_sent(a)
    p.audio_sent(b, 800, 0)
    p.mark_sent(b)
    assert p.mark_echoed("seg-1") is a
    assert a.played
    heard = p.clear([a, b], now_ms=150)
    assert [h.heard_ms for h in heard] == [100, 50]
    assert p.mark_echoed("seg-2") is None  # the echo clear provokes
    assert not b.played
    assert p.buffered_ms(150) == 0
    assert p.mark_echoed("unknown") is None


def test_heard_text_is_truncated_proportionally() -> None:
    assert truncate_to_heard("uno dos tres cuatro", 500, 1000) == "uno dos"
    assert truncate_to_heard("uno dos tres cuatro", 0, 1000) == ""
    assert truncate_to_heard("uno dos", 2000, 1000) == "uno dos"
    assert truncate_to_heard("uno", 10, 0) == ""


def test_segment_never_sent_was_not_heard() -> None:
    p = Playback()
    s = Segment(1, "nunca", "seg-1")
    [h] = p.clear([s], now_ms=10)
    assert h.heard_ms == 0
    assert h.text == ""
