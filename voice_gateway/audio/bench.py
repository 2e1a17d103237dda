"""`voiceagent bench audio`: what each per-frame operation costs, in µs per 20 ms frame.

A call is 50 frames a second and a core is 1,000,000 µs a second, so these figures say
how much of a core the audio path of N calls takes. Each operation runs on a realistic
signal (a voiced tone with noise, and the same as μ-law) for a few thousand frames; the
best of several rounds is reported, which is the cost without scheduler noise.
"""

from __future__ import annotations

import importlib
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voice_gateway.audio import mulaw
from voice_gateway.audio.recorder import CallRecorder
from voice_gateway.audio.resample import StreamResampler
from voice_gateway.audio.vad import EchoGate, SileroVad, WebRtcVad, find_silero_model
from voice_gateway.sentences import SentenceSplitter
from voice_gateway.turns import TurnPolicy

FRAMES = 2000
ROUNDS = 5


def _signal(rate: int, frames: int) -> list[bytes]:
    """`frames` 20 ms frames of PCM16 at `rate`: a 180 Hz voice-like tone plus noise."""
    rng = np.random.default_rng(1)
    per_frame = rate // 50
    t = np.arange(per_frame * frames) / rate
    voiced = 6000 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    samples = (voiced + rng.normal(0, 300, t.size)).clip(-32768, 32767).astype("<i2")
    pcm = samples.tobytes()
    size = per_frame * 2
    return [pcm[i * size : (i + 1) * size] for i in range(frames)]


def _time(operation: Callable[[int], object], count: int, rounds: int) -> float:
    """Best-of-rounds µs per call of `operation(i)` for i in range(count)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for i in range(count):
            operation(i)
        best = min(best, (time.perf_counter_ns() - start) / count / 1000)
    return best


def _resampling(in_rate: int, out_rate: int, source: list[bytes]) -> Callable[[int], object]:
    resampler = StreamResampler(in_rate, out_rate)
    return lambda i: resampler.process(source[i])


def run_audio_bench(
    *, show: bool = True, frames: int = FRAMES, rounds: int = ROUNDS
) -> list[tuple[str, float]]:
    """Measure and (unless `show=False`) print µs per 20 ms frame for each operation."""
    pcm8 = _signal(8000, frames)
    ulaw8 = [mulaw.encode(frame) for frame in pcm8]
    results: list[tuple[str, float]] = []

    def add(name: str, operation: Callable[[int], object]) -> None:
        results.append((name, _time(operation, frames, rounds)))

    add("μ-law decode (numpy table)", lambda i: mulaw.decode(ulaw8[i]))
    add("μ-law encode (numpy table)", lambda i: mulaw.encode(pcm8[i]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")
        except ImportError:
            audioop = None
    if audioop is not None:
        add("μ-law decode (stdlib audioop, reference)", lambda i: audioop.ulaw2lin(ulaw8[i], 2))
        add("μ-law encode (stdlib audioop, reference)", lambda i: audioop.lin2ulaw(pcm8[i], 2))

    for in_rate, out_rate in ((8000, 16000), (16000, 8000), (24000, 8000), (22050, 8000)):
        source = pcm8 if in_rate == 8000 else _signal(in_rate, frames)
        add(f"resample {in_rate}→{out_rate} (stream)", _resampling(in_rate, out_rate, source))

    webrtc = WebRtcVad()
    add("VAD WebRTC", lambda i: webrtc.is_speech(pcm8[i]))
    gate = EchoGate(WebRtcVad())
    gate.agent_speaking = True
    add("VAD WebRTC + echo gate (agent speaking)", lambda i: gate.is_speech(pcm8[i]))
    if find_silero_model() is not None:
        silero = SileroVad()
        add("VAD Silero ONNX (per frame, 32 ms windows)", lambda i: silero.is_speech(pcm8[i]))

    policy = TurnPolicy()
    pattern = [i % 50 < 30 for i in range(frames)]  # 600 ms speech, 400 ms pause
    clock = iter(range(0, 10**12, 20))

    def turn_frame(i: int) -> object:
        return policy.on_frame(pattern[i], next(clock))

    add("turn policy on_frame", turn_frame)

    with tempfile.TemporaryDirectory() as folder:
        recorder = CallRecorder(Path(folder) / "bench.wav")
        stamps = iter(range(0, 10**12, 20))
        add(
            "recorder caller frame (incl. file writes)",
            lambda i: recorder.add_caller(pcm8[i], next(stamps)),
        )
        recorder.close()

    tokens = ("Claro, la casa ", "tiene tres ", "dormitorios. ", "¿Le ", "gustaría ", "verla? ")
    splitter = SentenceSplitter()
    add("sentence splitter per LLM token", lambda i: splitter.push(tokens[i % len(tokens)]))

    if show:
        width = max(len(name) for name, _ in results)
        print(f"{'operation':<{width}}  µs per 20 ms frame")
        for name, micros in results:
            print(f"{name:<{width}}  {micros:8.2f}")
    return results


if __name__ == "__main__":
    run_audio_bench()
