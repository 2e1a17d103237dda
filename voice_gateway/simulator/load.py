"""Many simulated calls at once, and what they add up to: the gateway's load test.

N calls share one ticker, one HTTP client and one utterance cache; they start staggered
(a burst of N simultaneous webhooks measures the ramp, not the steady state), their
frames leave in `frame_phases` groups spread over each 20 ms (phones are not in step),
and each takes the same caller script. The report gives p50/p95/p99 of response and barge-in
latency over every sample of every call, errors by kind, and CPU: the simulator's own
(its event-loop thread, so a server running in this process on other threads is not
counted against it) and the server's, read from /proc/PID/stat (utime + stime) when its
pid is known; no psutil needed.

With `sustain_s`, each of the N call slots dials a new call as soon as its previous
one ends, until `sustain_s` after the run began: N calls stay up at once, and when the
starts are spread over about one call's length (`stagger_ms`), their turns fall at
every phase instead of all at once, as on a live gateway. Latency samples and CPU are
then taken from the steady stretch only, from the moment the last slot dialled to the
moment the first slot stopped. Errors count everywhere.

The simulator also reports how late its own beats fired. Figures from a simulator that
could not keep its 20 ms pace are not the server's fault, and the report says so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import httpx

from voice_gateway.simulator.audio_source import UtteranceCache
from voice_gateway.simulator.caller import (
    CallError,
    CallOptions,
    CallResult,
    SimulatedCall,
    check_options,
)
from voice_gateway.simulator.script import Script, build_script
from voice_gateway.simulator.ticker import Ticker

#: Default gap between call starts.
DEFAULT_STAGGER_MS: Final = 25.0
#: Phases the calls' 20 ms beats are spread over (see `Ticker`): 5 ms apart, as
#: independent phones would be, rather than every call's frame in one burst.
DEFAULT_FRAME_PHASES: Final = 4
#: More than this share of beats a whole period late: the simulator was overloaded.
_LATE_SHARE_WARNING: Final = 0.01
#: Error examples kept for the report.
_EXAMPLES: Final = 5


class CpuReadError(Exception):
    """A process whose CPU time cannot be read (gone, or not Linux)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise CpuReadError(f"cannot read /proc/{pid}/stat: {exc.strerror or exc}") from None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])
    except (IndexError, ValueError):
        raise CpuReadError(f"/proc/{pid}/stat has an unexpected layout") from None
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, samples: Sequence[float]) -> Percentiles:
        if not samples:
            return cls(0, None, None, None, None)
        ordered = sorted(samples)
        return cls(
            len(ordered),
            percentile(ordered, 0.50),
            percentile(ordered, 0.95),
            percentile(ordered, 0.99),
            ordered[-1],
        )

    def __str__(self) -> str:
        if not self.count:
            return "no samples"
        return (
            f"p50 {self.p50:.0f} ms  p95 {self.p95:.0f} ms  p99 {self.p99:.0f} ms  "
            f"max {self.max:.0f} ms  (n={self.count})"
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile of sorted samples, interpolated linearly between ranks."""
    if not ordered:
        raise ValueError("no samples")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LoadOptions:
    """How a load run dials: per-call options, script and pacing, and what to watch."""

    call: CallOptions = field(default_factory=CallOptions)
    #: The script every call follows; None builds one from `language`, `turns` and
    #: `barge_in_at_ms` (the demo lines, greeting first).
    script: Script | None = None
    language: str = "es"
    barge_in_at_ms: int | None = None
    stagger_ms: float = DEFAULT_STAGGER_MS
    #: How many phases the calls' frame beats are spread over (1: all in one burst).
    frame_phases: int = DEFAULT_FRAME_PHASES
    #: The server process whose CPU to report (None: not reported).
    server_pid: int | None = None
    #: Keep every slot dialling until this many seconds after the first call started
    #: (None: one call per slot); see the module docstring.
    sustain_s: float | None = None
    #: Receives one line per finished call (progress); None keeps quiet.
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True, slots=True)
class LoadReport:
    #: Calls dialled; `results` holds every one of them.
    calls: int
    results: tuple[CallResult, ...]
    response: Percentiles
    barge_in: Percentiles
    errors: Mapping[str, int]
    error_examples: tuple[CallError, ...]
    barge_ins_unanswered: int
    backchannels_resumed: int
    backchannels_derailed: int
    turns_unanswered: int
    wall_s: float
    #: CPU of the simulator's event-loop thread.
    simulator_cpu_s: float
    #: CPU of `server_pid` (or of this process minus the simulator's thread when the
    #: server runs here); None when unknown.
    server_cpu_s: float | None
    server_pid: int | None
    ticker_beats: int
    ticker_max_lag_ms: float
    ticker_late_beats: int
    frames_sent: int
    #: A sustained run's steady stretch on the ticker's clock (ms): the latencies are the
    #: samples taken within it, CPU and wall time are over it. None when the run was not
    #: sustained or never had every slot busy at once.
    steady_ms: tuple[float, float] | None = None

    @property
    def steady_s(self) -> float | None:
        if self.steady_ms is None:
            return None
        return (self.steady_ms[1] - self.steady_ms[0]) / 1000

    @property
    def failed_calls(self) -> int:
        return sum(1 for result in self.results if not result.ok)

    @property
    def ok(self) -> bool:
        return self.failed_calls == 0

    def lines(self) -> list[str]:
        """The report as printed by `voiceagent simulate-call --concurrency N`."""
        wall = self.wall_s or 1e-9
        out = [
            f"calls: {self.calls}  ok: {self.calls - self.failed_calls}  "
            f"failed: {self.failed_calls}  in {self.wall_s:.1f} s",
        ]
        if self.steady_s is not None:
            out.append(
                f"steady: every slot busy for {self.steady_s:.1f} s; latencies and CPU "
                "from that stretch"
            )
        out += [
            f"response latency (end of caller speech → first agent audio): {self.response}",
            f"barge-in latency (caller speech onset → clear): {self.barge_in}",
        ]
        if self.backchannels_resumed:
            gaps = Percentiles.of(
                [ms for result in self.results for ms in result.backchannel_resume_ms]
            )
            out.append(
                f"backchannels the agent paused for and resumed: {self.backchannels_resumed}"
                f" (backchannel end → audio again: {gaps})"
            )
        if self.barge_ins_unanswered or self.backchannels_derailed or self.turns_unanswered:
            out.append(
                f"barge-ins never cleared: {self.barge_ins_unanswered}  "
                f"backchannels that derailed the agent: {self.backchannels_derailed}  "
                f"caller turns left unanswered: {self.turns_unanswered}"
            )
        if self.errors:
            listed = ", ".join(f"{kind} {count}" for kind, count in sorted(self.errors.items()))
            out.append(f"errors: {listed}")
            out.extend(f"  e.g. {error}" for error in self.error_examples)
        else:
            out.append("errors: none")
        out.append(
            f"simulator CPU: {self.simulator_cpu_s:.2f} s "
            f"({100 * self.simulator_cpu_s / wall:.1f} % of one core), "
            f"{self.frames_sent:,} caller frames sent"
        )
        if self.server_cpu_s is not None:
            here = self.server_pid == os.getpid()
            where = "in this process" if here else f"pid {self.server_pid}"
            out.append(
                f"server CPU ({where}): {self.server_cpu_s:.2f} s "
                f"({100 * self.server_cpu_s / wall:.1f} % of one core)"
            )
        lag = (
            f"simulator beat: max {self.ticker_max_lag_ms:.1f} ms late, "
            f"{self.ticker_late_beats} of {self.ticker_beats} beats over 20 ms late"
        )
        if self.ticker_late_beats > _LATE_SHARE_WARNING * max(self.ticker_beats, 1):
            lag += ": the simulator fell behind, so latencies include its own delay"
        out.append(lag)
        return out


async def run_load(
    base_url: str,
    n: int,
    turns: int,
    *,
    options: LoadOptions | None = None,
    audio: UtteranceCache | None = None,
) -> LoadReport:
    """`n` simulated calls of `turns` caller turns each against `base_url`, concurrently.

    Utterances are synthesized before the first call dials; `options.script`, when
    given, is used as it is (`turns` then only names the run). With `save_audio`, the
    first call is recorded. A server at `options.server_pid == os.getpid()` is taken to
    run in this process on other threads.
    """
    options = options or LoadOptions()
    if n < 1 or (options.script is None and turns < 1):
        raise ValueError("a load run needs at least one call and one turn")
    check_options(base_url, options.call)  # a bad URL or number fails here, not N times
    script = options.script or build_script(
        language=options.language, turns=turns, barge_in_at_ms=options.barge_in_at_ms
    )
    audio = audio or UtteranceCache(options.call.tts)
    await audio.warm(script.utterances())
    limits = httpx.Limits(max_connections=min(n, 100), max_keepalive_connections=min(n, 100))
    async with (
        Ticker(phases=options.frame_phases) as ticker,
        httpx.AsyncClient(limits=limits, timeout=options.call.timeout_s) as http,
    ):
        cpu = _CpuWatch(options.server_pid)
        steady = _Steady(n, options.server_pid) if options.sustain_s is not None else None
        results = await _dial_all(base_url, n, script, options, ticker, http, audio, steady)
        wall_s, simulator_s, server_s = cpu.stop()
        beats = (ticker.ticks, ticker.max_lag_ms, ticker.late_ticks)
    window: tuple[float, float] | None = None
    if steady is not None and steady.window is not None:
        window, (wall_s, simulator_s, server_s) = steady.window
    return _report(results, window, wall_s, simulator_s, server_s, options.server_pid, beats)


def in_window(
    samples: Sequence[float], times: Sequence[float], window: tuple[float, float] | None
) -> list[tuple[int, float]]:
    """(index, sample) of the samples taken within `window` (None: all of them); a
    sample without a time (an older result) counts as within."""
    if window is None:
        return list(enumerate(samples))
    low, high = window
    return [
        (index, sample)
        for index, sample in enumerate(samples)
        if index >= len(times) or low <= times[index] <= high
    ]


class _Steady:
    """The steady stretch of a sustained run: from the last slot's first dial to the
    first slot's last hang-up, with CPU read at both ends."""

    def __init__(self, slots: int, server_pid: int | None) -> None:
        self._waiting = slots
        self._server_pid = server_pid
        self._cpu: _CpuWatch | None = None
        self.start: float | None = None
        self.end: float | None = None
        self._figures: tuple[float, float, float | None] | None = None

    def slot_started(self, now: float) -> None:
        self._waiting -= 1
        if self._waiting == 0:
            self.start = now
            self._cpu = _CpuWatch(self._server_pid)

    def slot_done(self, now: float) -> None:
        if self.end is None and self._cpu is not None:
            self.end = now
            self._figures = self._cpu.stop()

    @property
    def window(self) -> tuple[tuple[float, float], tuple[float, float, float | None]] | None:
        """((start, end) in ms, CPU figures over it), or None if no moment had every
        slot busy."""
        if self.start is None or self.end is None or self._figures is None:
            return None
        return (self.start, self.end), self._figures


async def _dial_all(
    base_url: str,
    n: int,
    script: Script,
    options: LoadOptions,
    ticker: Ticker,
    http: httpx.AsyncClient,
    audio: UtteranceCache,
    steady: _Steady | None,
) -> list[CallResult]:
    width = len(str(n))
    clock = ticker.now_ms
    deadline = None if options.sustain_s is None else clock() + 1000 * options.sustain_s

    async def one(index: int) -> list[CallResult]:
        await asyncio.sleep(index * options.stagger_ms / 1000)
        call_options = options.call
        if call_options.echo is not None and n > 1:
            call_options = replace(call_options, label=f"[{index + 1:>{width}}] ")
        done: list[CallResult] = []
        while True:
            if (index or done) and call_options.save_audio is not None:
                call_options = replace(call_options, save_audio=None)  # the first call's only
            started = clock()
            if steady is not None and not done:
                steady.slot_started(started)
            call = SimulatedCall(
                base_url, script, call_options, ticker=ticker, http=http, audio=audio
            )
            result = await call.run()
            done.append(result)
            if options.progress is not None:
                status = "ok" if result.ok else f"{len(result.errors)} errors: {result.errors[0]}"
                options.progress(f"call {index + 1}/{n} {result.call_sid}: {status}")
            if deadline is None or clock() >= deadline:
                break
        if steady is not None:
            steady.slot_done(clock())
        return done

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(index)) for index in range(n)]
    return [call for task in tasks for call in task.result()]


class _CpuWatch:
    """CPU time from now: this thread's, the whole process's, and the server's."""

    def __init__(self, server_pid: int | None) -> None:
        self._server_pid = server_pid
        self._wall = time.perf_counter()
        self._thread = time.thread_time()
        self._process = time.process_time()
        self._server = self._read_server()

    def _read_server(self) -> float | None:
        if self._server_pid is None or self._server_pid == os.getpid():
            return None
        try:
            return process_cpu_s(self._server_pid)
        except CpuReadError:
            return None

    def stop(self) -> tuple[float, float, float | None]:
        wall = time.perf_counter() - self._wall
        thread = time.thread_time() - self._thread
        server: float | None = None
        if self._server_pid is not None and self._server_pid == os.getpid():
            server = max(0.0, time.process_time() - self._process - thread)
        elif self._server is not None:
            after = self._read_server()
            server = after - self._server if after is not None else None
        return wall, thread, server


def _report(
    results: list[CallResult],
    window: tuple[float, float] | None,
    wall_s: float,
    simulator_s: float,
    server_s: float | None,
    server_pid: int | None,
    beats: tuple[int, float, int],
) -> LoadReport:
    errors = [error for result in results for error in result.errors]
    response = [
        ms
        for result in results
        for _, ms in in_window(result.response_ms, result.response_at_ms, window)
    ]
    barge_in = [
        ms
        for result in results
        for _, ms in in_window(result.barge_in_ms, result.barge_in_at_ms, window)
    ]
    return LoadReport(
        calls=len(results),
        results=tuple(results),
        response=Percentiles.of(response),
        barge_in=Percentiles.of(barge_in),
        errors=dict(Counter(error.kind.value for error in errors)),
        error_examples=tuple(errors[:_EXAMPLES]),
        barge_ins_unanswered=sum(result.barge_ins_unanswered for result in results),
        backchannels_resumed=sum(result.backchannels_resumed for result in results),
        backchannels_derailed=sum(result.backchannels_derailed for result in results),
        turns_unanswered=sum(result.turns_unanswered for result in results),
        wall_s=wall_s,
        simulator_cpu_s=simulator_s,
        server_cpu_s=server_s,
        server_pid=server_pid,
        ticker_beats=beats[0],
        ticker_max_lag_ms=beats[1],
        ticker_late_beats=beats[2],
        frames_sent=sum(result.frames_sent for result in results),
        steady_ms=window,
    )
