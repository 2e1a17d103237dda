"""`voiceagent bench voice`: how many concurrent calls one core carries, and how fast.

The issue's speed aims, measured the way a caller feels them: one gateway process on one
core (`bench_voice_server`), fake providers with fixed latencies, and the call simulator
in this process on another core phoning it as Twilio would. First 100 concurrent calls
(the headline), then a ramp (50, 100, 150, …) until a bound breaks. Each level prints
response latency (end of caller speech → first agent audio) against its floor and the
excess over it (aim p95 ≤ 30 ms), barge-in latency (caller speech onset → `clear`, aim
p95 < 200 ms), errors seen by either side, both processes' CPU, and the server's own
latency breakdown; the last line says how many concurrent calls one core held within
the bounds. The floor and the judging are in `bench_voice_figures`.

A level holds N calls up at once for a while, not N calls started together: each of
N slots redials as soon as its call ends, the first calls' starts spread over one
call's length (learnt from a pilot call), so that the calls' turns fall at every phase
as on a live gateway instead of all in the same second. Latency and CPU come from the
steady stretch when every slot is busy (see `simulator.load`); errors count everywhere.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from voice_gateway.bench_voice_figures import (
    BenchReport,
    Bounds,
    FigureError,
    LevelResult,
    MetricKey,
    ProviderLatencies,
    ServerView,
    TurnFloors,
    counter_increase,
    expected_floor,
    judge,
    stage_figures,
    vad_tails,
)
from voice_gateway.bench_voice_server import (
    ServerError,
    ServerProcess,
    agent_breakdowns,
    choose_cores,
    pinned,
    settle,
    start_server,
    stop_server,
    wait_until_ready,
)
from voice_gateway.simulator.audio_source import UtteranceCache
from voice_gateway.simulator.caller import DEFAULT_TO, CallOptions, CallResult
from voice_gateway.simulator.load import LoadOptions, Percentiles, in_window, run_load
from voice_gateway.simulator.script import (
    DEFAULT_LINES,
    BargeIn,
    HangUp,
    Say,
    Script,
    Step,
    Utterance,
    WaitForAgent,
)

#: Calls admitted beyond the largest level, so admission control never refuses one.
_ADMISSION_MARGIN: Final = 50


class BenchError(Exception):
    """The benchmark could not run (a bad option, the server did not start)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ramp:
    """The levels to run: `first` (the headline), then `start`, `start + step`, … up to
    `stop`, skipping levels already run, until one breaks a bound."""

    first: int = 100
    start: int = 50
    step: int = 50
    stop: int = 1000
    enabled: bool = True

    def __post_init__(self) -> None:
        if min(self.first, self.start, self.step, self.stop) < 1:
            raise BenchError("ramp levels and step must be at least 1")

    def levels(self) -> Iterator[int]:
        yield self.first
        if not self.enabled:
            return
        level = self.start
        while level <= self.stop:
            if level != self.first:
                yield level
            level += self.step

    @property
    def largest(self) -> int:
        return max(self.first, self.stop) if self.enabled else self.first


@dataclass(frozen=True)
class BenchOptions:
    latencies: ProviderLatencies = field(default_factory=ProviderLatencies)
    bounds: Bounds = field(default_factory=Bounds)
    ramp: Ramp = field(default_factory=Ramp)
    #: Caller turns per call; every second one barges into the agent's reply.
    turns: int = 4
    #: How far into the agent's reply a barge-in starts (None: no barge-ins).
    barge_in_at_ms: int | None = 400
    language: str = "es"
    #: What the caller says (cycled); None: the simulator's demo lines.
    lines: tuple[str, ...] | None = None
    #: How long each level keeps every slot dialling after the first calls' spread.
    measure_s: float = 45.0
    #: None: a SQLite file in the work directory.
    database_url: str | None = None
    #: None: a temporary directory, removed afterwards unless the server failed.
    work_dir: Path | None = None
    server_core: int = 0
    simulator_core: int = 1
    vad: str = "webrtc"
    #: How long the simulator waits for the server to react before counting an error.
    timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if self.turns < 1:
            raise BenchError("a call needs at least one caller turn")
        if self.language not in DEFAULT_LINES:
            raise BenchError(f"language is one of {', '.join(DEFAULT_LINES)}")
        if self.lines is not None and not any(line.strip() for line in self.lines):
            raise BenchError("the caller needs something to say")
        if self.measure_s <= 0:
            raise BenchError("measure_s must be positive")
        if self.database_url is not None and not self.database_url.startswith(
            ("sqlite", "postgresql")
        ):
            raise BenchError("the database is a sqlite:/// or postgresql:// URL")

    @property
    def expect_barge_ins(self) -> bool:
        return self.barge_in_at_ms is not None and self.turns > 1

    def server_settings(self) -> dict[str, str]:
        return {
            **self.latencies.environment(),
            "VAD": self.vad,
            "MAX_CONCURRENT_CALLS": str(self.ramp.largest + _ADMISSION_MARGIN),
        }


def bench_script(
    *,
    language: str,
    turns: int,
    barge_in_at_ms: int | None,
    lines: Sequence[str] | None = None,
) -> Script:
    """Hear the greeting, then `turns` caller turns: plain turns alternate with turns that
    cut into the agent's reply `barge_in_at_ms` after it starts, so every call yields
    response samples after both kinds of turn and barge-in samples in between."""
    texts = [line for line in (lines or DEFAULT_LINES[language]) if line.strip()]
    steps: list[Step] = [WaitForAgent()]
    for index, text in enumerate(itertools.islice(itertools.cycle(texts), turns)):
        utterance = Utterance(text=text, language=language)
        if barge_in_at_ms is not None and index % 2 == 1:
            steps.append(BargeIn(utterance, barge_in_at_ms))
            continue
        if index:
            steps.append(WaitForAgent())
        steps.append(Say(utterance))
    steps += [WaitForAgent(), HangUp()]
    return Script(tuple(steps))


async def run_bench(options: BenchOptions, out: Callable[[str], None] = print) -> BenchReport:
    """Start the server, measure each level of the ramp, stop the server (see the module
    docstring); `out` receives the report line by line as it is measured."""
    try:
        server_core, simulator_core, warning = choose_cores(
            options.server_core, options.simulator_core
        )
    except ServerError as exc:
        raise BenchError(exc.reason) from None
    if warning:
        out(f"warning: {warning}")
    owned = options.work_dir is None
    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="voiceagent-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(
        options.server_settings(),
        work_dir,
        database_url=options.database_url,
        core=server_core,
    )
    keep = True
    try:
        with pinned(simulator_core):
            report = await _measure(options, server, out)
        keep = not owned
        return report
    except (ServerError, FigureError) as exc:
        raise BenchError(exc.reason) from None
    finally:
        stop_server(server)
        if keep:
            out(f"server log and data kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


async def _measure(
    options: BenchOptions, server: ServerProcess, out: Callable[[str], None]
) -> BenchReport:
    script = bench_script(
        language=options.language,
        turns=options.turns,
        barge_in_at_ms=options.barge_in_at_ms,
        lines=options.lines,
    )
    audio = UtteranceCache()
    floors = await _floors(options, script, audio)
    _describe(options, server, floors, out)
    call = CallOptions(
        to_number=DEFAULT_TO,
        public_host=server.public_host,
        auth_token=server.auth_token,
        timeout_s=options.timeout_s,
    )
    async with httpx.AsyncClient() as http:
        await wait_until_ready(server, http)
        call_ms = await _pilot(server, call, script, audio)
        out(f"pilot call: {call_ms / 1000:.1f} s; first calls of each level spread over that")
        metrics = await settle(server, http)
        levels: list[LevelResult] = []
        for calls in options.ramp.levels():
            if any(not done.holds and done.calls <= calls for done in levels):
                break  # a smaller level already broke: more calls cannot hold
            level, metrics = await _level(
                options, server, http, call, script, audio, floors, calls, call_ms, metrics
            )
            levels.append(level)
            for line in level.lines():
                out(line)
    report = BenchReport(floors, tuple(levels), all(level.holds for level in levels))
    out("")
    for line in report.table():
        out(line)
    out(report.verdict())
    return report


async def _floors(options: BenchOptions, script: Script, audio: UtteranceCache) -> TurnFloors:
    """Each caller turn's floor, with the VAD tail the server's detector will have."""
    from voice_gateway.audio.vad import make_vad
    from voice_gateway.providers.stt_fake import SegmenterConfig

    await audio.warm(script.utterances())
    said = [step.utterance for step in script.steps if isinstance(step, Say | BargeIn)]
    tails = vad_tails(make_vad(options.vad), [await audio.get(u) for u in said])
    stt_end = SegmenterConfig().end_silence_ms
    return TurnFloors(
        tuple(
            expected_floor(options.latencies, vad_tail_ms=tail, stt_end_silence_ms=stt_end)
            for tail in tails
        )
    )


def _describe(
    options: BenchOptions, server: ServerProcess, floors: TurnFloors, out: Callable[[str], None]
) -> None:
    lat = options.latencies
    database = _redacted(server.database_url)
    if server.database_url.startswith("postgresql"):
        database += " (its own CPU, in PostgreSQL's processes, is not counted)"
    out(
        f"gateway pid {server.pid} on core {options.server_core}, simulator on core "
        f"{options.simulator_core}; database {database}"
    )
    out(
        f"fake providers: STT {lat.stt_ms} ms, LLM first token {lat.llm_first_token_ms} ms, "
        f"TTS first byte {lat.tts_ms} ms; endpoint silence {lat.endpoint_silence_ms} ms; "
        f"VAD {options.vad}"
    )
    out(f"response floor: {floors.describe()}")
    barge = (
        f", every second one barging in {options.barge_in_at_ms} ms into the reply"
        if options.expect_barge_ins
        else ""
    )
    out(
        f"each call: greeting, then {options.turns} caller turns{barge}; each level keeps "
        f"its calls up for {options.measure_s:g} s after their starts are spread"
    )


async def _pilot(
    server: ServerProcess, call: CallOptions, script: Script, audio: UtteranceCache
) -> float:
    """One unmeasured call: it warms the server up and tells how long a call lasts."""
    report = await run_load(
        server.base_url, 1, 1, options=LoadOptions(call=call, script=script), audio=audio
    )
    result = report.results[0]
    if not result.ok:
        listed = "; ".join(str(error) for error in result.errors[:3])
        raise BenchError(f"the pilot call failed: {listed}\n{server.log_tail()}")
    return result.duration_ms


async def _level(
    options: BenchOptions,
    server: ServerProcess,
    http: httpx.AsyncClient,
    call: CallOptions,
    script: Script,
    audio: UtteranceCache,
    floors: TurnFloors,
    calls: int,
    call_ms: float,
    before: dict[MetricKey, float],
) -> tuple[LevelResult, dict[MetricKey, float]]:
    load = LoadOptions(
        call=call,
        script=script,
        stagger_ms=call_ms / calls,
        server_pid=server.pid,
        sustain_s=call_ms / 1000 + options.measure_s,
    )
    report = await run_load(server.base_url, calls, options.turns, options=load, audio=audio)
    after = await settle(server, http)
    window = report.steady_ms
    measured = [
        result
        for result in report.results
        if in_window(result.response_ms, result.response_at_ms, window)
    ]
    breakdowns = agent_breakdowns(server.database_url, _server_call_ids(measured))
    stages, total = stage_figures(breakdowns, floors.lowest)
    refusals = counter_increase(before, after, "voiceagent_admission_refusals_total", "")
    view = ServerView(
        stages=stages,
        total=total,
        errors=counter_increase(before, after, "voiceagent_errors_total", "kind"),
        endings=counter_increase(before, after, "voiceagent_calls_ended_total", "reason"),
        admission_refusals=sum(refusals.values()),
    )
    excess = Percentiles.of(floors.excess(report.results, window))
    problems = judge(
        report, excess, options.bounds, server=view, expect_barge_ins=options.expect_barge_ins
    )
    return LevelResult(calls, report, floors, excess, view, problems), after


def _server_call_ids(results: Sequence[CallResult]) -> set[int]:
    """The server's ids of these calls (the TwiML's `call_id` parameter)."""
    ids = set()
    for result in results:
        value = result.parameters.get("call_id", "")
        if value.isdigit():
            ids.add(int(value))
    return ids


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
