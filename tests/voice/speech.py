"""Test audio: the speech fixtures in data/ (see data/make_speech.py) and synthetic signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.audio.wav import read_wav

DATA = Path(__file__).parent / "data"
FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16


def speech_pcm(language: str) -> bytes:
    """eSpeak NG speech as Twilio would deliver it, decoded to 8 kHz PCM16."""
    wav = read_wav((DATA / f"speech_{language}.wav").read_bytes())
    assert wav.format.sample_rate == 8000
    assert wav.format.channels == 1
    return mulaw.decode(wav.data)


def noise_pcm(seconds: float, dbfs: float, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    amplitude = 32768 * 10 ** (dbfs / 20)
    samples = rng.standard_normal(int(8000 * seconds)) * amplitude
    return samples.clip(-32768, 32767).astype("<i2").tobytes()


def scaled(pcm: bytes, gain_db: float) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return samples.clip(-32768, 32767).astype("<i2").tobytes()


def frames(pcm: bytes) -> list[bytes]:
    """Whole 20 ms frames (a torn last frame is dropped, as the session does)."""
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]
