"""μ-law tables: bit-exact with audioop over every input, and sane without it."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

import numpy as np
import pytest

from voice_gateway.audio import mulaw
from voice_gateway.audio.mulaw import MulawError

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2")


def _audioop() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop is gone (Python 3.13+): nothing to compare against")


def test_every_code_decodes_like_audioop() -> None:
    assert mulaw.decode(ALL_CODES) == _audioop().ulaw2lin(ALL_CODES, 2)


def test_every_sample_encodes_like_audioop() -> None:
    pcm = ALL_SAMPLES.tobytes()
    assert mulaw.encode(pcm) == _audioop().lin2ulaw(pcm, 2)


def test_array_variants_match_the_byte_variants() -> None:
    decoded = mulaw.decode_array(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tobytes() == mulaw.decode(ALL_CODES)
    assert mulaw.encode_array(ALL_SAMPLES) == mulaw.encode(ALL_SAMPLES.tobytes())


def test_codes_survive_a_round_trip() -> None:
    # 0x7F and 0xFF are both zero; zero encodes as 0xFF, the silence byte.
    again = mulaw.encode(mulaw.decode(ALL_CODES))
    assert [c for c in range(256) if again[c] != c] == [0x7F]
    assert again[0x7F] == mulaw.SILENCE_BYTE


def test_g711_landmarks() -> None:
    table = mulaw.decode_array(ALL_CODES)
    assert table[mulaw.SILENCE_BYTE] == 0
    assert table[0x00] == -32124
    assert table[0x80] == 32124
    # Monotonic within each half: louder codes are further from zero.
    assert np.all(np.diff(table[:128].astype(int)) > 0)
    assert np.all(np.diff(table[128:].astype(int)) < 0)
    assert mulaw.encode((32767).to_bytes(2, "little", signed=True)) == b"\x80"
    assert mulaw.encode((-32768).to_bytes(2, "little", signed=True)) == b"\x00"


def test_silence_helper() -> None:
    assert mulaw.silence(160) == b"\xff" * 160
    assert mulaw.decode(mulaw.silence(3)) == b"\x00" * 6


def test_wider_integers_are_clipped_not_wrapped() -> None:
    wide = np.array([-100_000, -32768, 0, 32767, 100_000], dtype=np.int32)
    clipped = np.array([-32768, -32768, 0, 32767, 32767], dtype=np.int16)
    assert mulaw.encode_array(wide) == mulaw.encode_array(clipped)


def test_floats_are_refused() -> None:
    with pytest.raises(MulawError, match="integer PCM") as caught:
        mulaw.encode_array(np.zeros(4, dtype=np.float32))
    assert "float32" in caught.value.reason


def test_odd_pcm_is_refused() -> None:
    with pytest.raises(MulawError, match="even number of bytes"):
        mulaw.encode(b"\x00\x01\x02")


def test_empty_input() -> None:
    assert mulaw.decode(b"") == b""
    assert mulaw.encode(b"") == b""
    assert mulaw.decode_array(b"").size == 0
