"""The per-frame savings the load benchmark prompted keep behaviour the same.

- The recorder gathers caller frames and places them in runs: its file is byte for byte
  the one it wrote when every frame was placed on arrival.
- The session joins a TTS's small chunks that are already queued into whole messages.
- The simulator's ticker spreads the calls' 20 ms beats over phases, and a sustained load
  run keeps only the samples of its steady stretch.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from tests.voice.test_session import Caller, greeting_ms, run_call, run_virtual
from voice_gateway.audio.recorder import CallRecorder, RecordingInfo
from voice_gateway.simulator.load import in_window
from voice_gateway.simulator.ticker import Ticker
from voice_gateway.twilio import protocol as tw


def frame(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * 160


def record(path: Path, *, place_each_frame: bool) -> tuple[bytes, RecordingInfo]:
    """A call's worth of audio with every awkward case: a gap Twilio left out, a late
    frame, a repeated one, agent audio and a `clear` between caller frames, a flush."""
    recorder = CallRecorder(path, lag_ms=100, flush_every_ms=200, max_pending_ms=1000)

    def caller(value: int, at_ms: int) -> None:
        recorder.add_caller(frame(value), at_ms)
        if place_each_frame:
            assert recorder.buffered_ms >= 0  # reading it places what is pending

    for i in range(20):
        caller(100 + i, i * 20)
    recorder.add_agent(frame(-7) * 5, 150)
    for i in range(20, 40):
        caller(100 + i, i * 20)
    recorder.clear_agent(700)
    caller(999, 100)  # long written: dropped and counted
    caller(555, 780)  # a repeat of the last frame's time
    for i in range(50, 90):  # after a gap of 200 ms
        caller(100 + i, i * 20)
    recorder.add_agent(frame(-9) * 10, 1500)
    recorder.advance(2500)
    info = recorder.close(2600)
    return path.read_bytes(), info


def test_caller_frames_placed_in_runs_write_the_same_file(tmp_path: Path) -> None:
    batched, batched_info = record(tmp_path / "runs.wav", place_each_frame=False)
    single, single_info = record(tmp_path / "frames.wav", place_each_frame=True)
    assert batched == single
    assert batched_info.late_caller_ms == single_info.late_caller_ms > 0
    assert batched_info.data_bytes == single_info.data_bytes
    assert batched_info.duration_ms == single_info.duration_ms


def test_the_agents_audio_leaves_in_whole_messages() -> None:
    run = run_call(Caller(stop_at=greeting_ms() + 1000))
    segments: list[list[int]] = [[]]
    for _, message in run.twilio.outbound:
        if type(message) is tw.OutboundMedia:
            segments[-1].append(len(message.payload))
        elif type(message) is tw.OutboundMark:
            segments.append([])
    spoken = [sizes for sizes in segments if sizes]
    assert len(spoken) == 2  # the greeting's two sentences
    for sizes in spoken:
        # The fake TTS hands over 20 ms frames; they leave 80 ms at a time.
        assert all(size == 640 for size in sizes[:-1])
        assert 0 < sizes[-1] <= 640


def test_the_ticker_spreads_the_calls_over_its_phases() -> None:
    class Call:
        def __init__(self) -> None:
            self.ticks: list[float] = []

        async def tick(self, now_ms: float) -> None:
            self.ticks.append(now_ms)

    async def main() -> list[list[float]]:
        loop = asyncio.get_running_loop()
        calls = [Call() for _ in range(4)]
        async with Ticker(phases=4, clock=loop.time) as ticker:
            for call in calls:
                ticker.add(call, start_ms=ticker.align(ticker.now_ms()))
            await asyncio.sleep(0.1)
        return [call.ticks for call in calls]

    ticks = run_virtual(main)
    for beats in ticks:
        assert len(beats) >= 4
        assert all(abs(b - a - 20) < 1e-6 for a, b in itertools.pairwise(beats))
    phases = sorted(round(beats[0] % 20, 6) for beats in ticks)
    assert [round(b - a, 6) for a, b in itertools.pairwise(phases)] == [5.0] * 3


def test_streams_take_the_phases_in_turn_half_a_beat_off_each_grid() -> None:
    clock = iter([1.0])
    ticker = Ticker(phases=4, clock=lambda: next(clock))  # origin 1000 ms
    starts = [ticker.align(1234.0) for _ in range(5)]
    offsets = [(start - 1000) % 20 for start in starts]
    assert offsets == [10.0, 15.0, 0.0, 5.0, 10.0]
    assert all(1214.0 < start <= 1234.0 for start in starts)


def test_samples_outside_the_steady_stretch_are_left_out() -> None:
    samples, times = [1.0, 2.0, 3.0], [100.0, 200.0, 300.0]
    assert in_window(samples, times, None) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert in_window(samples, times, (150.0, 300.0)) == [(1, 2.0), (2, 3.0)]
    assert in_window(samples, [], (150.0, 300.0)) == [(0, 1.0), (1, 2.0), (2, 3.0)]
