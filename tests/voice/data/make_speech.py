"""Regenerate the speech fixtures in this folder (run by hand; tests only read the WAVs).

    .venv/bin/python tests/voice/data/make_speech.py

eSpeak NG (the `espeakng-loader` wheel, through ctypes) speaks a phrase in English and
one in Spanish at 22.05 kHz; the gateway's own resampler and μ-law encoder turn them
into what Twilio sends: 8 kHz μ-law, here wrapped in a WAV so any player opens them.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import espeakng_loader  # type: ignore[import-untyped]  # no stubs
import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.audio.resample import resample_once
from voice_gateway.audio.wav import WavEncoding, wav_bytes

HERE = Path(__file__).parent
PHRASES = {
    "speech_en.wav": ("en-us", "I would like to visit the house."),
    "speech_es.wav": ("es", "Quisiera visitar la casa."),
}
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def synthesize(voice: str, text: str) -> tuple[bytes, int]:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
    )
    chunks: list[bytes] = []

    def collect(wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if count > 0:
            chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    callback = _CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"eSpeak NG has no voice {voice}")
    data = text.encode()
    lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    return b"".join(chunks), rate


def main() -> None:
    for name, (voice, text) in PHRASES.items():
        pcm, rate = synthesize(voice, text)
        samples = np.frombuffer(resample_once(pcm, rate, 8000), dtype="<i2")
        # Trim eSpeak's leading/trailing silence so the fixtures stay a few KB.
        loud = np.flatnonzero(np.abs(samples) > 300)
        samples = samples[max(0, loud[0] - 80) : loud[-1] + 80]
        body = mulaw.encode_array(samples)
        (HERE / name).write_bytes(wav_bytes(body, 8000, 1, encoding=WavEncoding.MULAW))
        print(f"{name}: {len(samples) / 8000:.2f} s, {len(body)} bytes of μ-law")


if __name__ == "__main__":
    main()
