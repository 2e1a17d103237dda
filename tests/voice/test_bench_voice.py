"""`voiceagent bench voice`: its figures as pure functions, and its machinery at tiny scale.

The figures (floors, excess, judging, the report) are checked on made-up inputs; the
machinery (a gateway child on one core, a pilot call, one sustained level, the server's
own breakdown read back from its database) runs once with two calls and checks that
the report has every part. Nothing here asserts how fast anything was.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from voice_gateway.bench_voice import BenchError, BenchOptions, Ramp, bench_script, run_bench
from voice_gateway.bench_voice_figures import (
    BenchReport,
    Bounds,
    Floor,
    LevelResult,
    ProviderLatencies,
    ServerView,
    TurnFloors,
    calls_held,
    counter_increase,
    expected_floor,
    judge,
    parse_metrics,
    stage_figures,
    vad_tails,
)
from voice_gateway.simulator.audio_source import CallerAudio, b64
from voice_gateway.simulator.caller import CallError, CallResult, EndedBy, ErrorKind
from voice_gateway.simulator.load import LoadReport, Percentiles
from voice_gateway.simulator.script import BargeIn, HangUp, Say, WaitForAgent

LATENCIES = ProviderLatencies(stt_ms=100, llm_first_token_ms=200, tts_ms=80)


def floor_of(tail_ms: int, latencies: ProviderLatencies = LATENCIES) -> Floor:
    return expected_floor(latencies, vad_tail_ms=tail_ms, stt_end_silence_ms=300)


def call(
    response: tuple[float, ...] = (),
    at: tuple[float, ...] = (),
    barge_in: tuple[float, ...] = (),
    errors: tuple[CallError, ...] = (),
    call_id: str = "1",
) -> CallResult:
    return CallResult(
        call_sid="CA" + "0" * 32,
        stream_sid="MZ" + "0" * 32,
        parameters={"call_id": call_id},
        ended_by=EndedBy.caller,
        close_code=1000,
        duration_ms=1000.0,
        response_ms=response,
        barge_in_ms=barge_in,
        barge_ins_unanswered=0,
        backchannels_ignored=0,
        backchannels_resumed=0,
        backchannels_derailed=0,
        backchannel_resume_ms=(),
        turns_unanswered=0,
        caller_speech_ms=0.0,
        agent_played_ms=0.0,
        agent_dropped_ms=0.0,
        max_buffered_ms=0.0,
        marks_echoed=0,
        marks_cleared=0,
        clears=0,
        dtmf_sent=(),
        frames_sent=0,
        errors=errors,
        recording=None,
        response_at_ms=at,
    )


def load_report(results: list[CallResult], **changes: object) -> LoadReport:
    report = LoadReport(
        calls=len(results),
        results=tuple(results),
        response=Percentiles.of([ms for r in results for ms in r.response_ms]),
        barge_in=Percentiles.of([ms for r in results for ms in r.barge_in_ms]),
        errors={},
        error_examples=(),
        barge_ins_unanswered=0,
        backchannels_resumed=0,
        backchannels_derailed=0,
        turns_unanswered=0,
        wall_s=10.0,
        simulator_cpu_s=1.0,
        server_cpu_s=5.0,
        server_pid=1234,
        ticker_beats=500,
        ticker_max_lag_ms=2.0,
        ticker_late_beats=0,
        frames_sent=100,
    )
    return replace(report, **changes)  # type: ignore[arg-type]


def quiet_server(**changes: object) -> ServerView:
    view = ServerView(
        stages=(), total=Percentiles.of([]), errors={}, endings={}, admission_refusals=0
    )
    return replace(view, **changes)  # type: ignore[arg-type]


# -- the script -------------------------------------------------------------------------------


def test_plain_turns_alternate_with_barge_ins() -> None:
    script = bench_script(language="es", turns=4, barge_in_at_ms=400, lines=("uno", "dos"))
    kinds = [type(step) for step in script.steps]
    assert kinds == [WaitForAgent, Say, BargeIn, WaitForAgent, Say, BargeIn, WaitForAgent, HangUp]
    said = [step.utterance.text for step in script.steps if isinstance(step, Say | BargeIn)]
    assert said == ["uno", "dos", "uno", "dos"]
    assert {step.after_ms for step in script.steps if isinstance(step, BargeIn)} == {400}


def test_without_barge_ins_every_turn_waits_for_the_reply() -> None:
    script = bench_script(language="en", turns=2, barge_in_at_ms=None)
    kinds = [type(step) for step in script.steps]
    assert kinds == [WaitForAgent, Say, WaitForAgent, Say, WaitForAgent, HangUp]


def test_the_ramp_starts_with_the_headline_and_skips_it_later() -> None:
    assert list(Ramp(first=100, start=50, step=50, stop=250).levels()) == [100, 50, 150, 200, 250]
    assert list(Ramp(first=100, enabled=False).levels()) == [100]
    assert Ramp(first=100, stop=300).largest == 300
    with pytest.raises(BenchError):
        Ramp(step=0)


def test_options_refuse_what_cannot_run() -> None:
    with pytest.raises(BenchError):
        BenchOptions(turns=0)
    with pytest.raises(BenchError):
        BenchOptions(database_url="mysql://x/y")
    with pytest.raises(BenchError):
        BenchOptions(lines=("  ",))


# -- the floor --------------------------------------------------------------------------------


def test_the_floor_adds_the_vad_tail_endpoint_first_token_and_first_byte() -> None:
    floor = floor_of(100)
    assert floor.turn_end_ms == 700
    assert floor.total_ms == 980
    assert "VAD tail 100 + endpoint silence 600" in floor.describe()


def test_a_late_stt_final_sets_the_end_of_the_turn() -> None:
    slow = ProviderLatencies(stt_ms=500, endpoint_silence_ms=300)
    floor = floor_of(100, slow)
    assert floor.turn_end_ms == 800  # 300 ms STT end of speech + 500 ms latency
    assert floor.total_ms == 800 + 200 + 80
    assert floor.describe().startswith("1080 ms = STT final 800")


class HangoverVad:
    """Speech while loud, then `hangover` more frames of "speech", like WebRTC's."""

    def __init__(self, hangover: int) -> None:
        self.hangover = hangover
        self.left = 0

    def is_speech(self, pcm_frame: bytes) -> bool:
        if any(pcm_frame):
            self.left = self.hangover
            return True
        if self.left:
            self.left -= 1
            return True
        return False


def test_the_vad_tail_is_measured_after_each_utterance_in_turn() -> None:
    loud = CallerAudio("loud", tuple(b64(b"\x10" * 160) for _ in range(10)))
    assert vad_tails(HangoverVad(5), [loud, loud]) == (100, 100)
    assert vad_tails(HangoverVad(0), [loud]) == (0,)


def test_each_sample_is_compared_with_its_own_turns_floor() -> None:
    floors = TurnFloors((floor_of(100), floor_of(120)))
    assert floors.span() == "980-1000"
    whole = call(response=(990.0, 1010.0), at=(1.0, 2.0))
    assert floors.excess([whole], None) == [10.0, 10.0]
    # A call that missed a reply cannot say which turn a sample is: the lowest floor.
    short = call(response=(1010.0,), at=(1.0,))
    assert floors.excess([short], None) == [30.0]
    # Only the samples taken within the window count.
    assert floors.excess([whole], (1.5, 3.0)) == [10.0]


# -- what the server says ---------------------------------------------------------------------


def test_stage_figures_split_the_servers_own_breakdown() -> None:
    marks = {
        "speech_end": 1000,
        "endpoint": 1600,
        "llm_first_token": 1805,
        "tts_first_byte": 1886,
        "first_audio_sent": 1887,
    }
    stages, total = stage_figures([marks, marks], floor_of(100))
    assert [(s.name, s.latency.p50, s.expected_ms) for s in stages] == [
        ("turn end", 600.0, 600),
        ("agent first token", 205.0, 200),
        ("TTS first byte", 81.0, 80),
        ("first audio sent", 1.0, 0),
    ]
    assert total.p50 == 887.0


def test_counters_are_read_as_increases_between_scrapes() -> None:
    before = parse_metrics(
        'voiceagent_errors_total{kind="stt"} 1.0\nvoiceagent_errors_total{kind="tts"} 0.0\n'
    )
    after = parse_metrics(
        'voiceagent_errors_total{kind="stt"} 3.0\nvoiceagent_errors_total{kind="tts"} 0.0\n'
        'voiceagent_errors_total{kind="agent"} 1.0\n'
    )
    assert counter_increase(before, after, "voiceagent_errors_total", "kind") == {
        "stt": 2,
        "agent": 1,
    }


# -- judging a level --------------------------------------------------------------------------


def excess(*values: float) -> Percentiles:
    return Percentiles.of(list(values))


def test_a_clean_level_within_the_aims_holds() -> None:
    report = load_report([call(response=(990.0,), barge_in=(110.0,))])
    problems = judge(report, excess(10.0), Bounds(), server=quiet_server(), expect_barge_ins=True)
    assert problems == ()


def test_each_way_of_missing_the_aims_is_named() -> None:
    failing = call(
        response=(1200.0,),
        barge_in=(250.0,),
        errors=(CallError(ErrorKind.timeout, "no reply"),),
    )
    report = load_report(
        [failing],
        errors={"timeout": 1},
        turns_unanswered=1,
        barge_ins_unanswered=2,
        ticker_late_beats=50,
    )
    server = quiet_server(
        errors={"stt": 1}, endings={"caller_hung_up": 3, "internal_error": 1}, admission_refusals=4
    )
    problems = judge(report, excess(220.0), Bounds(), server=server, expect_barge_ins=True)
    text = "\n".join(problems)
    for expected in (
        "1 simulator-side errors in 1 calls",
        "1 caller turns never answered",
        "2 barge-ins never cleared",
        "220 ms over the floor",
        "barge-in p95 250 ms",
        "server-side errors: stt 1",
        "ended abnormally: internal_error 1",
        "4 calls refused",
        "fell behind",
    ):
        assert expected in text


def test_missing_samples_break_a_level() -> None:
    report = load_report([call()])
    problems = judge(report, excess(), Bounds(), server=None, expect_barge_ins=True)
    assert problems == ("no response latency samples", "no barge-in latency samples")


def level(calls: int, *, holds: bool) -> LevelResult:
    report = load_report([call(response=(990.0,), at=(1.0,))])
    floors = TurnFloors((floor_of(100),))
    return LevelResult(calls, report, floors, excess(10.0), None, () if holds else ("too slow",))


def test_the_calls_held_stop_at_the_first_level_that_broke() -> None:
    levels = [level(100, holds=True), level(50, holds=True), level(150, holds=False)]
    assert calls_held(levels) == 100
    assert calls_held([level(50, holds=False), level(100, holds=True)]) is None
    assert calls_held([]) is None


def test_the_report_has_a_row_per_level_and_a_verdict() -> None:
    floors = TurnFloors((floor_of(100),))
    report = BenchReport(floors, (level(100, holds=True), level(150, holds=False)), False)
    table = report.table()
    assert table[0].split()[:2] == ["calls", "resp"]
    assert [row.split()[0] for row in table[1:]] == ["100", "150"]
    assert table[2].endswith("broken")
    assert report.verdict() == "one core holds 100 concurrent calls within bounds"
    exhausted = BenchReport(floors, (level(100, holds=True),), True)
    assert "at least" in exhausted.verdict()
    lines = level(100, holds=False).lines()
    assert lines[0] == "-- 100 concurrent calls: BROKEN"
    assert lines[-1] == "  ! too slow"


# -- the machinery, two calls -----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux affinity")
async def test_the_benchmark_runs_end_to_end_at_tiny_scale(tmp_path: Path) -> None:
    lines: list[str] = []
    options = BenchOptions(
        latencies=ProviderLatencies(
            stt_ms=20, llm_first_token_ms=30, tts_ms=20, endpoint_silence_ms=200, tts_ms_per_char=8
        ),
        ramp=Ramp(first=2, enabled=False),
        turns=2,
        barge_in_at_ms=150,
        lines=("Hola, buenas tardes.", "Perdone, una cosa."),
        measure_s=1.0,
        work_dir=tmp_path,
        server_core=0,
        simulator_core=1 if len(os.sched_getaffinity(0)) > 1 else 0,
    )
    affinity = os.sched_getaffinity(0)
    report = await run_bench(options, out=lines.append)
    assert os.sched_getaffinity(0) == affinity  # the simulator's pinning is undone

    assert [lv.calls for lv in report.levels] == [2]
    measured = report.levels[0]
    assert measured.report.calls >= 2
    assert not measured.report.errors, measured.report.error_examples
    assert measured.report.response.count >= 1
    assert measured.excess.count == measured.report.response.count
    assert measured.server is not None
    assert measured.server.stages[0].name == "turn end"
    assert measured.server.stages[0].latency.count >= 1  # read back from the CRM
    assert measured.report.server_cpu_s is not None
    assert len(report.floors.floors) == 2
    text = "\n".join(lines)
    for part in (
        "response floor:",
        "pilot call:",
        "-- 2 concurrent calls:",
        "response latency",
        "barge-in latency",
        "server's own breakdown",
        "one core holds",
    ):
        assert part in text
    assert (tmp_path / "server.log").is_file()
