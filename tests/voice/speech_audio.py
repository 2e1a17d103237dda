"""Test audio for the speech-to-text tests: tones, silence and real synthetic speech.

English speech comes from libespeak-ng as shipped by the `espeakng-loader` wheel,
driven through ctypes (synchronous mode, a synth callback), then put through the phone
path: 22.05 kHz → 8 kHz → μ-law, exactly what a Twilio call delivers.

The recognition tests read a committed μ-law WAV (`data/stt_en_conversation.wav`)
rather than synthesising at test time: libespeak-ng keeps global state (parameters set
by whoever used the library last in the process, and pitch-flutter phases that nothing
resets), so the same text comes out differently depending on which tests ran before.
Regenerate the file with `.venv/bin/python -m tests.voice.speech_audio`.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import espeakng_loader  # type: ignore[import-untyped]
import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.audio.resample import resample_once
from voice_gateway.audio.wav import WavEncoding, read_wav, wav_bytes
from voice_gateway.providers.base import FRAME_SAMPLES, SAMPLE_RATE, AudioFrame
from voice_gateway.providers.tts_espeak import EspeakVoice, render_pcm

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1  # espeak_PARAMETER: espeakRATE
CONVERSATION_WAV = Path(__file__).parent / "data" / "stt_en_conversation.wav"
#: What the fixture says, sentence by sentence (0.7 s of silence after each).
CONVERSATION = (
    "i am looking for an apartment",
    "we need three bedrooms and two bathrooms",
    "i would like to visit on saturday morning",
)
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_lock = threading.Lock()
_engine: tuple[ctypes.CDLL, int] | None = None
_chunks: list[bytes] = []


def _collect_samples(
    wav: ctypes._Pointer[ctypes.c_short] | None, count: int, _events: int | None
) -> int:
    if wav and count > 0:
        _chunks.append(ctypes.string_at(wav, count * 2))
    return 0


_collect = _CALLBACK(_collect_samples)  # kept referenced: libespeak-ng calls it


def _espeak() -> tuple[ctypes.CDLL, int]:
    global _engine
    if _engine is None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_dir = str(Path(espeakng_loader.get_data_path()).parent).encode()
        rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, data_dir, 0)
        if rate <= 0:
            raise RuntimeError("libespeak-ng failed to initialise")
        lib.espeak_SetSynthCallback(_collect)
        _engine = (lib, rate)
    return _engine


def speak(text: str, *, voice: str = "en-us", words_per_minute: int = 150) -> bytes:
    """`text` spoken by eSpeak NG, as 8 kHz PCM16 that went through μ-law.

    Synthesized on the TTS provider's one engine thread: libespeak-ng has one global
    callback and voice, so a second driver in the same test process would garble both.
    """
    pcm, rate = render_pcm(text, EspeakVoice(voice, rate_wpm=words_per_minute))
    return phone_path(resample_once(pcm, rate, SAMPLE_RATE))


def conversation() -> bytes:
    """The committed fixture: `CONVERSATION` spoken with pauses, 8 kHz PCM16 via μ-law."""
    wav = read_wav(CONVERSATION_WAV.read_bytes())
    assert wav.format.encoding is WavEncoding.MULAW
    assert wav.format.sample_rate == SAMPLE_RATE
    return mulaw.decode(wav.data)


def make_conversation() -> bytes:
    parts = [silence(400)]
    for sentence in CONVERSATION:
        parts += [speak(sentence, words_per_minute=130), silence(700)]
    return mulaw.encode(b"".join(parts))


def phone_path(pcm: bytes) -> bytes:
    """What is left of 8 kHz PCM16 after Twilio's μ-law."""
    return mulaw.decode(mulaw.encode(pcm))


def tone(ms: int, *, hz: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine burst: loud enough for any energy detector, 8 kHz PCM16."""
    t = np.arange(ms * SAMPLE_RATE // 1000) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms * SAMPLE_RATE // 1000 * 2)


def frames(pcm: bytes, *, start_ms: int = 0) -> list[AudioFrame]:
    """Cut 8 kHz PCM16 into 20 ms AudioFrames as the media stream delivers them."""
    size = FRAME_SAMPLES * 2
    pcm = pcm + bytes(-len(pcm) % size)
    out = []
    for index, offset in enumerate(range(0, len(pcm), size)):
        chunk = pcm[offset : offset + size]
        out.append(AudioFrame(mulaw.encode(chunk), chunk, start_ms + index * 20))
    return out


if __name__ == "__main__":
    body = make_conversation()
    CONVERSATION_WAV.write_bytes(wav_bytes(body, SAMPLE_RATE, 1, encoding=WavEncoding.MULAW))
    print(f"{CONVERSATION_WAV.name}: {len(body) / SAMPLE_RATE:.1f} s, {len(body)} bytes of μ-law")
