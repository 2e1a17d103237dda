"""The audio benchmark runs and reports every operation (figures are printed, not judged)."""

from __future__ import annotations

import pytest

from voice_gateway.audio.bench import run_audio_bench
from voice_gateway.audio.vad import find_silero_model


def test_bench_reports_each_operation(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_audio_bench(frames=60, rounds=1)
    names = [name for name, _ in results]
    for expected in (
        "μ-law decode (numpy table)",
        "μ-law encode (numpy table)",
        "resample 8000→16000 (stream)",
        "resample 22050→8000 (stream)",
        "VAD WebRTC",
        "turn policy on_frame",
        "recorder caller frame (incl. file writes)",
    ):
        assert expected in names
    if find_silero_model() is not None:
        assert any(name.startswith("VAD Silero") for name in names)
    assert all(micros > 0 for _, micros in results)
    printed = capsys.readouterr().out
    assert "µs per 20 ms frame" in printed
    assert "VAD WebRTC" in printed
