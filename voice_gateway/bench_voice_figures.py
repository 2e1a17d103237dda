"""The figures of `voiceagent bench voice`, as pure functions and data.

No I/O here: the floor each response is measured against, what the server said about
itself (its stored latency breakdown, its metrics), whether a level holds the issue's
bounds, and the report. The driver (`voice_gateway.bench_voice`) feeds them.

The floor is what the pipeline must wait even on an idle machine, computed from the
configured latencies and one measured figure, the VAD's tail: WebRTC's detector keeps
saying "speech" for a few frames after the voice stops (its hangover), so the endpoint
silence only starts counting then. The STT final runs in parallel with that silence
and only counts when it is the later of the two::

    turn end = max(VAD tail + endpoint silence, STT end-of-speech + STT latency)
    floor    = turn end + LLM first token + TTS first byte

The tail is not the same after every utterance (the detector's state carries over from
turn to turn), so each caller turn of the script has its own floor, and each response
sample is compared with its own turn's.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from voice_gateway.audio import mulaw
from voice_gateway.audio.vad import Vad
from voice_gateway.events import EndReason
from voice_gateway.providers.base import FRAME_MS, FRAME_SAMPLES
from voice_gateway.simulator.audio_source import CallerAudio
from voice_gateway.simulator.caller import CallResult
from voice_gateway.simulator.load import LoadReport, Percentiles, in_window

#: A call's end reasons that are not a failure of the call.
NORMAL_ENDINGS: Final = frozenset(
    {
        EndReason.caller_hung_up.value,
        EndReason.agent_hung_up.value,
        EndReason.opted_out.value,
        EndReason.transferred.value,
    }
)
#: More than this share of the simulator's beats a whole period late: its figures
#: include its own delay, so the level proves nothing either way.
SIMULATOR_LATE_SHARE: Final = 0.01
#: The agent turn's stored latency marks, in pipeline order, and what each stage is.
STAGES: Final = (
    ("speech_end", "endpoint", "turn end"),
    ("endpoint", "llm_first_token", "agent first token"),
    ("llm_first_token", "tts_first_byte", "TTS first byte"),
    ("tts_first_byte", "first_audio_sent", "first audio sent"),
)


class FigureError(ValueError):
    """Figures that cannot be computed (negative latencies, a script without turns)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- what is set -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderLatencies:
    """The fakes' fixed latencies and the endpoint silence the server runs with (ms)."""

    stt_ms: int = 100
    llm_first_token_ms: int = 200
    tts_ms: int = 80
    endpoint_silence_ms: int = 600
    #: Length of the agent's speech per character of text (the fake TTS).
    tts_ms_per_char: int = 60

    def __post_init__(self) -> None:
        for name in ("stt_ms", "llm_first_token_ms", "tts_ms"):
            if getattr(self, name) < 0:
                raise FigureError(f"{name} cannot be negative")
        if self.endpoint_silence_ms <= 0 or self.tts_ms_per_char <= 0:
            raise FigureError("endpoint_silence_ms and tts_ms_per_char must be positive")

    def environment(self) -> dict[str, str]:
        """The server's settings for these latencies (the names `voiceagent serve` reads)."""
        return {
            "FAKE_STT_LATENCY_MS": str(self.stt_ms),
            "FAKE_LLM_LATENCY_MS": str(self.llm_first_token_ms),
            "FAKE_LLM_TOKEN_INTERVAL_MS": "0",
            "FAKE_TTS_LATENCY_MS": str(self.tts_ms),
            "FAKE_TTS_MS_PER_CHAR": str(self.tts_ms_per_char),
            "ENDPOINT_SILENCE_MS": str(self.endpoint_silence_ms),
        }


@dataclass(frozen=True, slots=True)
class Bounds:
    """The issue's aims: what a level must meet to count as held."""

    max_excess_ms: float = 30.0
    max_barge_in_ms: float = 200.0


# -- the floor ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Floor:
    """The least response latency the configured pipeline allows (ms); see the module
    docstring for the formula."""

    vad_tail_ms: int
    endpoint_silence_ms: int
    stt_final_ms: int
    llm_first_token_ms: int
    tts_first_byte_ms: int

    @property
    def turn_end_ms(self) -> int:
        return max(self.vad_tail_ms + self.endpoint_silence_ms, self.stt_final_ms)

    @property
    def total_ms(self) -> int:
        return self.turn_end_ms + self.llm_first_token_ms + self.tts_first_byte_ms

    def describe(self) -> str:
        vad_path = self.vad_tail_ms + self.endpoint_silence_ms
        if vad_path >= self.stt_final_ms:
            turn = (
                f"VAD tail {self.vad_tail_ms} + endpoint silence {self.endpoint_silence_ms}"
                f" (the STT final lands at {self.stt_final_ms}, inside it)"
            )
        else:
            turn = (
                f"STT final {self.stt_final_ms} (later than VAD tail + endpoint silence {vad_path})"
            )
        return (
            f"{self.total_ms} ms = {turn} + LLM first token {self.llm_first_token_ms}"
            f" + TTS first byte {self.tts_first_byte_ms}"
        )


def expected_floor(
    latencies: ProviderLatencies, *, vad_tail_ms: int, stt_end_silence_ms: int
) -> Floor:
    """The floor for `latencies`; `stt_end_silence_ms` is the silence after which the
    STT closes an utterance (the fake's segmenter), its latency counted from there."""
    return Floor(
        vad_tail_ms=vad_tail_ms,
        endpoint_silence_ms=latencies.endpoint_silence_ms,
        stt_final_ms=stt_end_silence_ms + latencies.stt_ms,
        llm_first_token_ms=latencies.llm_first_token_ms,
        tts_first_byte_ms=latencies.tts_ms,
    )


def vad_tails(
    vad: Vad, utterances: Sequence[CallerAudio], *, gap_frames: int = 100
) -> tuple[int, ...]:
    """How long after each utterance `vad` still says "speech" (its hangover), in ms.

    The utterances go through one detector in the order a call says them, with silence
    between, as the server's per-call VAD hears them: its state carries over from turn to
    turn, and so does its tail (WebRTC's is 100 ms after most turns, 120 after some).
    """
    silence = mulaw.decode(mulaw.silence(FRAME_SAMPLES))
    for _ in range(gap_frames):
        vad.is_speech(silence)
    tails: list[int] = []
    for utterance in utterances:
        for payload in utterance.payloads:
            vad.is_speech(mulaw.decode(_unb64(payload)))
        frames = 0
        while frames < gap_frames and vad.is_speech(silence):
            frames += 1
        tails.append(frames * FRAME_MS)
        for _ in range(gap_frames - frames):
            vad.is_speech(silence)
    return tuple(tails)


@dataclass(frozen=True, slots=True)
class TurnFloors:
    """The floor of each caller turn of the script, in the order the turns are said."""

    floors: tuple[Floor, ...]

    def __post_init__(self) -> None:
        if not self.floors:
            raise FigureError("a script without caller turns has no floor")

    @property
    def lowest(self) -> Floor:
        return min(self.floors, key=lambda floor: floor.total_ms)

    @property
    def lowest_ms(self) -> int:
        return self.lowest.total_ms

    @property
    def highest_ms(self) -> int:
        return max(floor.total_ms for floor in self.floors)

    def span(self) -> str:
        low, high = self.lowest_ms, self.highest_ms
        return f"{low}" if low == high else f"{low}-{high}"

    def describe(self) -> str:
        text = self.lowest.describe()
        if self.lowest_ms == self.highest_ms:
            return text
        tails = ", ".join(str(floor.vad_tail_ms) for floor in self.floors)
        return (
            f"{self.span()} ms by turn, as the VAD tail is {tails} ms turn by turn; "
            f"the lowest: {text}"
        )

    def excess(
        self, results: Sequence[CallResult], window: tuple[float, float] | None
    ) -> list[float]:
        """Each response sample taken within `window` (None: all) minus its own turn's
        floor. A call that missed a reply cannot say which sample is which turn's, so its
        samples take the lowest floor."""
        found: list[float] = []
        for result in results:
            samples = result.response_ms
            whole = len(samples) == len(self.floors)
            for turn, ms in in_window(samples, result.response_at_ms, window):
                floor = self.floors[turn].total_ms if whole else self.lowest_ms
                found.append(ms - floor)
        return found


def _unb64(payload: str) -> bytes:
    return binascii.a2b_base64(payload)


# -- what the server says about itself ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageFigures:
    name: str
    expected_ms: int | None
    latency: Percentiles


@dataclass(frozen=True, slots=True)
class ServerView:
    """What the server recorded during a level: its own latency breakdown (from the
    CRM's agent turns) and its error counters and call endings (from /metrics)."""

    stages: tuple[StageFigures, ...]
    total: Percentiles
    errors: Mapping[str, int]
    endings: Mapping[str, int]
    admission_refusals: int

    @property
    def abnormal_endings(self) -> dict[str, int]:
        return {k: v for k, v in self.endings.items() if k not in NORMAL_ENDINGS and v}


def stage_figures(
    breakdowns: Sequence[Mapping[str, int]], floor: Floor
) -> tuple[tuple[StageFigures, ...], Percentiles]:
    """Per-stage percentiles of the agent turns' latency marks (call-clock ms), each
    with what its stage is set to take. The server dates the end of speech by its VAD,
    so its turn end is what follows the VAD tail: the endpoint silence."""
    expected = {
        "endpoint": floor.endpoint_silence_ms,
        "llm_first_token": floor.llm_first_token_ms,
        "tts_first_byte": floor.tts_first_byte_ms,
        "first_audio_sent": 0,
    }
    stages = []
    for start, end, name in STAGES:
        samples = [float(b[end] - b[start]) for b in breakdowns if start in b and end in b]
        stages.append(StageFigures(name, expected[end], Percentiles.of(samples)))
    totals = [
        float(b["first_audio_sent"] - b["speech_end"])
        for b in breakdowns
        if "first_audio_sent" in b and "speech_end" in b
    ]
    return tuple(stages), Percentiles.of(totals)


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return values


def counter_increase(
    before: Mapping[MetricKey, float], after: Mapping[MetricKey, float], name: str, label: str
) -> dict[str, int]:
    """How much each `label` value of counter `name` grew between two scrapes."""
    grown: dict[str, int] = {}
    for (sample, labels), value in after.items():
        if sample != name:
            continue
        key = dict(labels).get(label, "")
        delta = round(value - before.get((sample, labels), 0.0))
        if delta:
            grown[key] = grown.get(key, 0) + delta
    return grown


# -- one level, judged -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelResult:
    calls: int
    report: LoadReport
    floors: TurnFloors
    #: Each response sample minus its turn's floor.
    excess: Percentiles
    server: ServerView | None
    #: Why the level breaks the bounds (empty: it holds).
    problems: tuple[str, ...]

    @property
    def holds(self) -> bool:
        return not self.problems

    @property
    def excess_p95_ms(self) -> float | None:
        return self.excess.p95

    @property
    def server_cpu_percent(self) -> float | None:
        cpu = self.report.server_cpu_s
        return None if cpu is None else 100.0 * cpu / max(self.report.wall_s, 1e-9)

    @property
    def simulator_cpu_percent(self) -> float:
        return 100.0 * self.report.simulator_cpu_s / max(self.report.wall_s, 1e-9)

    def lines(self) -> list[str]:
        report = self.report
        response = report.response
        out = [f"-- {self.calls} concurrent calls: {'within bounds' if self.holds else 'BROKEN'}"]
        if response.count:
            assert response.p50 is not None
            assert response.p95 is not None
            assert response.p99 is not None
            out.append(
                f"response latency  p50 {response.p50:.0f}  p95 {response.p95:.0f}  "
                f"p99 {response.p99:.0f} ms  (n={response.count}); floor {self.floors.span()} ms;"
                f" excess over the floor p95 {self.excess_p95_ms:+.0f} ms"
            )
        else:
            out.append("response latency  no samples")
        out.append(f"barge-in latency  {report.barge_in}")
        if report.steady_s is not None:
            out.append(
                f"steady: {self.calls} calls up at once for {report.steady_s:.1f} s "
                f"({report.calls} dialled); latencies and CPU from that stretch"
            )
        else:
            out.append("steady: never every call up at once; latencies from all calls")
        errors = sum(report.errors.values())
        failed = f"errors: {errors} in {report.failed_calls} of {report.calls} calls"
        if report.errors:
            failed += " (" + ", ".join(f"{k} {v}" for k, v in sorted(report.errors.items())) + ")"
        out.append(failed)
        out.extend(f"  e.g. {error}" for error in report.error_examples[:3])
        server_cpu = self.server_cpu_percent
        out.append(
            "CPU: server "
            + (f"{server_cpu:.1f} %" if server_cpu is not None else "unknown")
            + f", simulator {self.simulator_cpu_percent:.1f} % of one core, over "
            f"{report.wall_s:.1f} s; simulator beat max {report.ticker_max_lag_ms:.1f} ms "
            f"late, {report.ticker_late_beats} of {report.ticker_beats} beats over 20 ms late"
        )
        if self.server is not None:
            parts = []
            for stage in self.server.stages:
                if stage.latency.count:
                    assert stage.latency.p50 is not None
                    assert stage.latency.p95 is not None
                    parts.append(
                        f"{stage.name} {stage.latency.p50:.0f}/{stage.latency.p95:.0f}"
                        + (f" (set {stage.expected_ms})" if stage.expected_ms is not None else "")
                    )
            if parts:
                out.append("server's own breakdown, p50/p95 ms: " + "; ".join(parts))
        out.extend(f"  ! {problem}" for problem in self.problems)
        return out


def judge(
    report: LoadReport,
    excess: Percentiles,
    bounds: Bounds,
    *,
    server: ServerView | None,
    expect_barge_ins: bool,
) -> tuple[str, ...]:
    """Every way `report` misses the bounds, in words (empty: the level holds)."""
    problems: list[str] = []
    errors = sum(report.errors.values())
    if errors or report.failed_calls:
        problems.append(f"{errors} simulator-side errors in {report.failed_calls} calls")
    if report.turns_unanswered:
        problems.append(f"{report.turns_unanswered} caller turns never answered")
    if report.barge_ins_unanswered:
        problems.append(f"{report.barge_ins_unanswered} barge-ins never cleared")
    if report.backchannels_derailed:
        problems.append(f"{report.backchannels_derailed} backchannels derailed the agent")
    over = excess.p95
    if over is None:
        problems.append("no response latency samples")
    elif over > bounds.max_excess_ms:
        problems.append(
            f"response latency p95 is {over:.0f} ms over the floor "
            f"(aim ≤ {bounds.max_excess_ms:g} ms)"
        )
    barge = report.barge_in.p95
    if expect_barge_ins and barge is None:
        problems.append("no barge-in latency samples")
    elif barge is not None and barge >= bounds.max_barge_in_ms:
        problems.append(
            f"barge-in p95 {barge:.0f} ms (aim < {bounds.max_barge_in_ms:g} ms from speech onset)"
        )
    if server is not None:
        if server.errors:
            listed = ", ".join(f"{k} {v}" for k, v in sorted(server.errors.items()))
            problems.append(f"server-side errors: {listed}")
        if server.abnormal_endings:
            listed = ", ".join(f"{k} {v}" for k, v in sorted(server.abnormal_endings.items()))
            problems.append(f"calls the server ended abnormally: {listed}")
        if server.admission_refusals:
            problems.append(f"{server.admission_refusals} calls refused by admission control")
    if report.ticker_late_beats > SIMULATOR_LATE_SHARE * max(report.ticker_beats, 1):
        problems.append(
            "the simulator fell behind its 20 ms beat: its figures include its own delay"
        )
    return tuple(problems)


def calls_held(levels: Sequence[LevelResult]) -> int | None:
    """The most concurrent calls that held, counting only levels below the first that
    broke (a lucky level above a broken one proves nothing)."""
    held: int | None = None
    for level in sorted(levels, key=lambda result: result.calls):
        if not level.holds:
            break
        held = level.calls
    return held


@dataclass(frozen=True, slots=True)
class BenchReport:
    floors: TurnFloors
    levels: tuple[LevelResult, ...]
    #: The ramp ran out of levels without a bound breaking.
    exhausted: bool

    @property
    def held(self) -> int | None:
        return calls_held(self.levels)

    def table(self) -> list[str]:
        header = (
            f"{'calls':>6} {'resp p50':>9} {'p95':>6} {'p99':>6} {'floor':>9} {'excess':>7} "
            f"{'barge p95':>9} {'errors':>6} {'server':>7} {'sim':>6}  verdict"
        )
        rows = [header]
        for level in sorted(self.levels, key=lambda result: result.calls):
            r = level.report
            cpu = level.server_cpu_percent
            excess = level.excess_p95_ms
            rows.append(
                f"{level.calls:>6} {_ms(r.response.p50):>9} {_ms(r.response.p95):>6} "
                f"{_ms(r.response.p99):>6} {level.floors.span():>9} "
                f"{'-' if excess is None else f'{excess:+.0f}':>7} {_ms(r.barge_in.p95):>9} "
                f"{sum(r.errors.values()):>6} "
                f"{'-' if cpu is None else f'{cpu:.0f}%':>7} "
                f"{level.simulator_cpu_percent:>5.0f}%  "
                f"{'ok' if level.holds else 'broken'}"
            )
        return rows

    def verdict(self) -> str:
        held = self.held
        if held is None:
            return "one core holds no tested level within bounds"
        more = " (the ramp ended before a bound broke: at least that)" if self.exhausted else ""
        return f"one core holds {held} concurrent calls within bounds{more}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
