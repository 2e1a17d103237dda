"""Who has the floor: the turn-taking policy of one call, as a pure state machine.

The call session feeds it what it observes, each with the call-clock time in ms (the
Twilio media timestamp for frames; for everything else the media clock plus the wall
time elapsed since the last frame):

* `on_frame(is_speech, now_ms)` once per 20 ms frame of caller audio (the VAD's answer;
  `now_ms` is the frame's start),
* `on_transcript(text, is_final, now_ms)` for every STT result,
* `on_agent_speaking(speaking, now_ms)` when our audio starts playing (first media of a
  reply, greeting or reprompt) and when it has finished (its last mark came back),
* `on_tick(now_ms)` regularly (every 20-100 ms), because Twilio may stop sending silent
  audio altogether and silence must still end turns.

Each returns the `TurnEvent`s it caused, in order; nothing blocks, nothing sleeps, and
the state is plain data (`state`, `snapshot()`), so tests script whole calls in
microseconds. Calls that make no sense (time running backwards, the agent starting to
talk over a caller whose turn is in progress) raise `TurnError` and change nothing.

The rules:

* Speech: VAD frames are debounced into runs. A run starts at a speech frame and dies
  after `speech_gap_ms` without one; it counts as speech once it holds `min_speech_ms`
  of speech frames, so clicks and short noise bursts are ignored.
* End of turn = silence (no counted speech) for `endpoint_silence_ms` AND an STT final
  that covers the last speech (arrived after it ended, nothing interim pending after
  it). If the final is late, the turn ends when it arrives; if it never comes, after
  `final_grace_ms` more silence the interim text is used; a turn with no text at all
  was noise and is dropped. A turn longer than `max_turn_ms` ends anyway.
* Barge-in: while the agent holds the floor (a reply is being prepared or played), a
  run of `min_barge_in_ms` of speech emits `BargeIn` at once - at onset + min, never
  waiting for STT text - so the session sends `clear` and holds the reply. When the
  caller's speech then ends (`resume_after_silence_ms`), the transcript decides: real
  words → `AgentInterrupted` and the caller's turn goes on as usual; only backchannels
  ("sí", "ajá", "vale", "ok", "mm-hmm", "yeah"…) or no words at all (a cough, noise) →
  `ResumeAgent`, and the held reply continues from where it was cut.
* Reprompt after `reprompt_after_ms` of silence once the agent has finished talking;
  `MaxCallLength` once the call reaches `max_call_ms`, after which the policy only
  tracks whether the agent is speaking (the goodbye).

Echo (the bot interrupting itself): Twilio's inbound track carries only the caller's
microphone, but a speakerphone plays our voice back into it. Three layers keep that
from cutting the agent off: a barge-in needs `min_barge_in_ms` of speech, not a frame;
the session can wrap its VAD in `audio.vad.EchoGate`, which while the agent talks only
counts frames loud enough to be the caller's own voice (echo arrives attenuated); and
an echo that still gets through is transcribed as our own words or nothing, and a
barge-in with no words resumes the reply instead of abandoning it.

Time: ticks may run slightly ahead of the media (network jitter). Time only moves past
the last frame on ticks and transcripts once no frame has come for `frame_slack_ms`
(Twilio has stopped sending silence); within that slack the frames are the clock.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable


class TurnError(Exception):
    """Our own misuse of the policy (the state is left unchanged)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TurnState(StrEnum):
    listening = "listening"  # nobody has the floor
    caller_turn = "caller_turn"  # the caller is speaking or pausing within a turn
    responding = "responding"  # the caller's turn ended; the reply is being prepared
    agent_speaking = "agent_speaking"  # our audio is playing
    interrupted = "interrupted"  # caller barged in; deciding: real turn or backchannel
    ended = "ended"  # the call reached its maximum length


class TurnEndReason(StrEnum):
    silence_and_final = "silence+final"  # the final was there when the silence was long enough
    final_after_silence = "final_after_silence"  # silence first; the turn ended on the final
    interim_fallback = "interim_fallback"  # no final in time; the interim text was used
    max_turn = "max_turn"  # the caller talked for max_turn_ms


class ResumeReason(StrEnum):
    backchannel = "backchannel"
    noise = "noise"


# -- events ----------------------------------------------------------------------------


def _check_times(at_ms: int, onset_ms: int | None = None) -> None:
    if at_ms < 0:
        raise ValueError(f"at_ms cannot be negative: {at_ms}")
    if onset_ms is not None and not 0 <= onset_ms <= at_ms:
        raise ValueError(f"onset_ms must be between 0 and at_ms ({at_ms}): {onset_ms}")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started a turn (speech counted at `at_ms`, begun at `onset_ms`)."""

    at_ms: int
    onset_ms: int

    def __post_init__(self) -> None:
        _check_times(self.at_ms, self.onset_ms)


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    """The caller's turn is over: hand `text` to the agent."""

    at_ms: int
    text: str
    reason: TurnEndReason
    onset_ms: int
    #: End of the last speech the VAD heard (the latency clock starts here).
    speech_end_ms: int
    #: The turn began by interrupting the agent.
    barged_in: bool = False

    def __post_init__(self) -> None:
        _check_times(self.at_ms, self.onset_ms)
        if not self.text.strip():
            raise ValueError("an EndOfTurn carries the caller's words")


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller spoke over the agent: `clear` now and hold the reply where it was cut."""

    at_ms: int
    onset_ms: int
    #: Our audio was playing (False: the reply was still being prepared).
    agent_audible: bool

    def __post_init__(self) -> None:
        _check_times(self.at_ms, self.onset_ms)


@dataclass(frozen=True, slots=True)
class AgentInterrupted:
    """The barge-in was real: drop the held reply (record it as interrupted); the
    caller's turn goes on and will end with an `EndOfTurn(barged_in=True)`."""

    at_ms: int
    onset_ms: int
    text: str

    def __post_init__(self) -> None:
        _check_times(self.at_ms, self.onset_ms)


@dataclass(frozen=True, slots=True)
class ResumeAgent:
    """The barge-in was a backchannel or noise: resume the held reply where it was cut."""

    at_ms: int
    reason: ResumeReason
    text: str = ""

    def __post_init__(self) -> None:
        _check_times(self.at_ms)


#: LiveKit's name for the same thing.
FalseInterruption = ResumeAgent


@dataclass(frozen=True, slots=True)
class Reprompt:
    """Silence since the agent finished: ask again (`count` since the caller last spoke)."""

    at_ms: int
    count: int

    def __post_init__(self) -> None:
        _check_times(self.at_ms)
        if self.count < 1:
            raise ValueError(f"count starts at 1: {self.count}")


@dataclass(frozen=True, slots=True)
class MaxCallLength:
    """The call is as long as it may be: say goodbye and hang up."""

    at_ms: int

    def __post_init__(self) -> None:
        _check_times(self.at_ms)


TurnEvent = (
    SpeechStarted | EndOfTurn | BargeIn | AgentInterrupted | ResumeAgent | Reprompt | MaxCallLength
)


# -- configuration ---------------------------------------------------------------------

DEFAULT_BACKCHANNELS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "es": frozenset(
            {
                "sí", "si", "ajá", "aja", "ajam", "mhm", "mm", "hmm", "hm", "uhum", "ok",
                "okay", "okey", "vale", "claro", "ya", "bueno", "dale", "perfecto",
                "entiendo", "exacto", "de acuerdo", "ya veo", "está bien", "eh", "ah", "oh",
                "sí señor", "sí señora", "correcto", "bien", "okey dokey",
            }
        ),
        "en": frozenset(
            {
                "yes", "yeah", "yep", "yup", "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm",
                "hm", "ok", "okay", "right", "sure", "i see", "got it", "alright", "all right",
                "cool", "great", "oh", "ah", "uh", "um", "huh", "yes sir", "sounds good",
                "exactly", "correct",
            }
        ),
    }
)  # fmt: skip


class _SettingsLike(Protocol):
    endpoint_silence_ms: int
    barge_in_min_ms: int
    max_call_seconds: int


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Per-call turn-taking knobs (all ms). Validated on construction."""

    endpoint_silence_ms: int = 600
    min_speech_ms: int = 100
    #: Low enough that clear reaches Twilio within 200 ms of speech onset; a backchannel
    #: that trips it is undone by ResumeAgent.
    min_barge_in_ms: int = 120
    speech_gap_ms: int = 60
    final_grace_ms: int = 800
    #: A final that beats the VAD's end of speech by this much still covers it.
    final_tolerance_ms: int = 200
    resume_after_silence_ms: int = 400
    max_turn_ms: int = 30_000
    reprompt_after_ms: int = 8_000
    max_call_ms: int = 900_000
    frame_ms: int = 20
    frame_slack_ms: int = 100
    backchannels: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: DEFAULT_BACKCHANNELS, hash=False, compare=False
    )

    def __post_init__(self) -> None:
        for name in (
            "endpoint_silence_ms",
            "min_speech_ms",
            "min_barge_in_ms",
            "speech_gap_ms",
            "max_turn_ms",
            "reprompt_after_ms",
            "max_call_ms",
            "frame_ms",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("final_grace_ms", "final_tolerance_ms", "frame_slack_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        if not 0 < self.resume_after_silence_ms <= self.endpoint_silence_ms:
            raise ValueError("resume_after_silence_ms must be in (0, endpoint_silence_ms]")
        if self.speech_gap_ms >= self.resume_after_silence_ms:
            raise ValueError("speech_gap_ms must be shorter than resume_after_silence_ms")

    @classmethod
    def from_settings(cls, settings: _SettingsLike, **overrides: Any) -> TurnConfig:
        """Defaults from `GatewaySettings` (endpoint silence, barge-in, max call length)."""
        config = cls(
            endpoint_silence_ms=settings.endpoint_silence_ms,
            min_barge_in_ms=settings.barge_in_min_ms,
            max_call_ms=settings.max_call_seconds * 1000,
            # A short ENDPOINT_SILENCE_MS also shortens the wait that tells a backchannel.
            resume_after_silence_ms=min(
                cls().resume_after_silence_ms, settings.endpoint_silence_ms
            ),
        )
        return replace(config, **overrides)


# -- backchannels ----------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w\s]|_")
_REPEATS = re.compile(r"(\w)\1+")


def _words(text: str) -> list[str]:
    """Lower-case, accents and punctuation off, letter runs squeezed ("mmmm" → "m")."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _REPEATS.sub(r"\1", _NON_WORD.sub(" ", plain)).split()


class BackchannelMatcher:
    """Whether a transcript is nothing but backchannels ("sí, sí, claro", "mm-hmm ok")."""

    __slots__ = ("_longest", "_phrases")

    def __init__(self, phrases: Iterable[str]) -> None:
        self._phrases = frozenset(tuple(_words(phrase)) for phrase in phrases) - {()}
        self._longest = max((len(p) for p in self._phrases), default=0)

    def __call__(self, text: str) -> bool:
        words = _words(text)
        if not words:
            return False
        # reachable[i]: words[:i] splits into known phrases.
        reachable = [True] + [False] * len(words)
        for end in range(1, len(words) + 1):
            for size in range(1, min(self._longest, end) + 1):
                if reachable[end - size] and tuple(words[end - size : end]) in self._phrases:
                    reachable[end] = True
                    break
        return reachable[-1]


# -- the policy ------------------------------------------------------------------------

# Every legal (state, trigger) pair; anything else is a TurnError. Reaching the maximum
# call length moves any state to `ended`, so that one is not listed per state.
_TRANSITIONS: Mapping[tuple[TurnState, str], TurnState] = MappingProxyType(
    {
        (TurnState.listening, "speech"): TurnState.caller_turn,
        (TurnState.listening, "agent_on"): TurnState.agent_speaking,
        (TurnState.listening, "agent_off"): TurnState.listening,
        (TurnState.caller_turn, "end_of_turn"): TurnState.responding,
        (TurnState.caller_turn, "discard"): TurnState.listening,
        (TurnState.caller_turn, "agent_off"): TurnState.caller_turn,
        (TurnState.responding, "agent_on"): TurnState.agent_speaking,
        (TurnState.responding, "agent_off"): TurnState.listening,
        (TurnState.responding, "barge_in"): TurnState.interrupted,
        (TurnState.agent_speaking, "agent_on"): TurnState.agent_speaking,
        (TurnState.agent_speaking, "agent_off"): TurnState.listening,
        (TurnState.agent_speaking, "barge_in"): TurnState.interrupted,
        (TurnState.interrupted, "agent_off"): TurnState.interrupted,
        (TurnState.interrupted, "resume_responding"): TurnState.responding,
        (TurnState.interrupted, "resume_speaking"): TurnState.agent_speaking,
        (TurnState.interrupted, "confirm"): TurnState.caller_turn,
        (TurnState.ended, "agent_on"): TurnState.ended,
        (TurnState.ended, "agent_off"): TurnState.ended,
    }
)
_FLOOR_HELD = frozenset({TurnState.responding, TurnState.agent_speaking})


@dataclass(frozen=True, slots=True)
class TurnSnapshot:
    """Everything the policy knows, as data (tests compare these; logs print them)."""

    state: TurnState
    now_ms: int
    agent_speaking: bool
    run_onset_ms: int | None
    run_speech_ms: int
    run_counted: bool
    last_speech_end_ms: int | None
    turn_onset_ms: int | None
    finals: tuple[str, ...]
    interim: str
    final_at_ms: int | None
    barge_in_onset_ms: int | None
    reprompts: int
    idle_since_ms: int
    dropped_transcripts: int


class TurnPolicy:
    """The turn-taking policy of one call (see the module docstring for the rules)."""

    def __init__(
        self, config: TurnConfig | None = None, *, language: str = "es", start_ms: int = 0
    ) -> None:
        self.config = config or TurnConfig()
        words = self.config.backchannels.get(language)
        if words is None:
            known = ", ".join(sorted(self.config.backchannels))
            raise TurnError(f"no backchannel words for language {language!r} (have {known})")
        self.language = language
        self._is_backchannel = BackchannelMatcher(words)
        self._start = start_ms
        self._state = TurnState.listening
        self._agent_speaking = False
        self._clock = start_ms  # the latest time anyone told us
        self._frame_clock = start_ms  # the end of the latest frame
        self._last_frame_start: int | None = None
        self._now = start_ms  # the time decisions are made at (see "Time" above)
        # the current run of VAD speech
        self._run_onset: int | None = None
        self._run_speech = 0
        self._run_end = 0  # end of the run's latest speech frame
        self._run_counted = False  # reached min_speech_ms
        self._run_used = False  # already ended a turn or barged in
        # the caller's turn (or interruption) in progress
        self._last_speech_end: int | None = None
        self._turn_onset: int | None = None
        self._turn_barged_in = False
        self._finals: list[str] = []
        self._interim = ""
        self._final_at: int | None = None
        # barge-in bookkeeping
        self._barge_onset: int | None = None
        self._resume_trigger = "resume_speaking"
        # reprompts
        self._idle_since = start_ms
        self._reprompts = 0
        self._dropped_transcripts = 0

    # -- what the session reads --------------------------------------------------------

    @property
    def state(self) -> TurnState:
        return self._state

    @property
    def agent_speaking(self) -> bool:
        return self._agent_speaking

    @property
    def now_ms(self) -> int:
        return self._now

    def is_backchannel(self, text: str) -> bool:
        return self._is_backchannel(text)

    def snapshot(self) -> TurnSnapshot:
        return TurnSnapshot(
            state=self._state,
            now_ms=self._now,
            agent_speaking=self._agent_speaking,
            run_onset_ms=self._run_onset,
            run_speech_ms=self._run_speech,
            run_counted=self._run_counted,
            last_speech_end_ms=self._last_speech_end,
            turn_onset_ms=self._turn_onset,
            finals=tuple(self._finals),
            interim=self._interim,
            final_at_ms=self._final_at,
            barge_in_onset_ms=self._barge_onset,
            reprompts=self._reprompts,
            idle_since_ms=self._idle_since,
            dropped_transcripts=self._dropped_transcripts,
        )

    # -- inputs ------------------------------------------------------------------------

    def on_frame(self, is_speech: bool, now_ms: int) -> list[TurnEvent]:
        """One 20 ms frame of caller audio starting at `now_ms` (its media timestamp)."""
        self._check_time(now_ms)
        if self._last_frame_start is not None and now_ms <= self._last_frame_start:
            raise TurnError(
                f"frame at {now_ms} ms does not follow the frame at {self._last_frame_start} ms"
            )
        self._last_frame_start = now_ms
        frame_end = now_ms + self.config.frame_ms
        self._frame_clock = max(self._frame_clock, frame_end)
        self._advance(frame_end)
        if self._state is TurnState.ended:
            return []
        if is_speech:
            self._add_speech(now_ms, frame_end)
        return self._evaluate()

    def on_transcript(self, text: str, is_final: bool, now_ms: int) -> list[TurnEvent]:
        """An STT result (interim results replace each other; finals accumulate)."""
        self._check_time(now_ms)
        self._advance(now_ms)
        if self._state is TurnState.ended:
            return []
        text = " ".join(text.split())
        events: list[TurnEvent] = []
        if self._state is TurnState.listening:
            if not text:
                return self._evaluate()
            # Speech the VAD missed (a quiet caller): the words start a turn.
            self._start_turn(self._now, events)
            self._last_speech_end = self._now
        elif self._state in _FLOOR_HELD and not self._run_alive():
            # The previous turn's straggler, or words with no voice under them (echo of
            # our own audio transcribed): not the caller taking the floor.
            self._dropped_transcripts += 1
            return self._evaluate()
        if is_final:
            if text:
                self._finals.append(text)
            self._interim = ""
            self._final_at = max(now_ms, self._final_at or 0)
        else:
            self._interim = text
        return events + self._evaluate()

    def on_agent_speaking(self, speaking: bool, now_ms: int) -> list[TurnEvent]:
        """Our audio started (first media of a reply/greeting) or finished playing."""
        self._check_time(now_ms)
        trigger = "agent_on" if speaking else "agent_off"
        if (self._state, trigger) not in _TRANSITIONS:
            if self._state is TurnState.caller_turn:
                why = "the caller's turn is in progress; wait for EndOfTurn"
            else:
                why = "the caller is interrupting; wait for ResumeAgent or AgentInterrupted"
            raise TurnError(f"agent audio cannot start in state {self._state}: {why}")
        self._advance(now_ms)
        previous = self._state
        self._transition(trigger)
        self._agent_speaking = speaking
        if self._state is TurnState.ended:
            return []
        if self._state is TurnState.listening and previous is not TurnState.listening:
            self._idle_since = self._now
        return self._evaluate()

    def on_tick(self, now_ms: int) -> list[TurnEvent]:
        """Let time pass (timers: end of turn in silence, reprompt, maximum call length)."""
        self._check_time(now_ms)
        self._advance(now_ms)
        if self._state is TurnState.ended:
            return []
        return self._evaluate()

    # -- internals ---------------------------------------------------------------------

    def _check_time(self, now_ms: int) -> None:
        if now_ms < self._start:
            raise TurnError(f"time {now_ms} ms is before the call started ({self._start} ms)")

    def _advance(self, now_ms: int) -> None:
        self._clock = max(self._clock, now_ms)
        lead = self._clock - self._frame_clock
        effective = self._frame_clock if lead < self.config.frame_slack_ms else self._clock
        self._now = max(self._now, effective)

    def _transition(self, trigger: str) -> None:
        try:
            self._state = _TRANSITIONS[self._state, trigger]
        except KeyError:
            raise TurnError(f"{trigger} is not possible in state {self._state}") from None

    def _run_alive(self) -> bool:
        return self._run_onset is not None and self._now - self._run_end < self.config.speech_gap_ms

    def _add_speech(self, start: int, end: int) -> None:
        config = self.config
        if self._run_onset is not None and start - self._run_end >= config.speech_gap_ms:
            self._end_run()
        if self._run_onset is None:
            self._run_onset = start
            self._run_speech = 0
        self._run_speech += config.frame_ms
        self._run_end = end
        if self._run_speech >= config.min_speech_ms:
            self._run_counted = True
        if self._run_counted:
            self._last_speech_end = end

    def _end_run(self) -> None:
        self._run_onset = None
        self._run_speech = 0
        self._run_counted = False
        self._run_used = False

    def _clear_words(self) -> None:
        self._finals = []
        self._interim = ""
        self._final_at = None

    def _text(self) -> str:
        return " ".join([*self._finals, self._interim]).strip()

    def _final_covers(self) -> bool:
        if self._final_at is None or self._interim:
            return False
        last = self._last_speech_end if self._last_speech_end is not None else self._now
        return self._final_at >= last - self.config.final_tolerance_ms

    def _silence(self) -> int:
        """How long nothing counted as speech, or -1 while a run is still undecided."""
        if self._run_alive():
            if not self._run_counted:
                return -1  # a run that may yet count: decide nothing until it does or dies
            return self._now - self._run_end
        last = self._last_speech_end if self._last_speech_end is not None else self._now
        return self._now - last

    def _start_turn(self, onset: int, events: list[TurnEvent]) -> None:
        self._transition("speech")
        self._turn_onset = onset
        self._turn_barged_in = False
        events.append(SpeechStarted(at_ms=self._now, onset_ms=onset))

    def _finish_turn(self, reason: TurnEndReason, events: list[TurnEvent]) -> None:
        text = self._text()
        onset = self._turn_onset if self._turn_onset is not None else self._now
        speech_end = self._last_speech_end if self._last_speech_end is not None else onset
        if text:
            self._transition("end_of_turn")
            self._reprompts = 0  # the caller answered; noise does not reset the count
            events.append(
                EndOfTurn(
                    at_ms=self._now,
                    text=text,
                    reason=reason,
                    onset_ms=onset,
                    speech_end_ms=min(max(speech_end, onset), self._now),
                    barged_in=self._turn_barged_in,
                )
            )
        else:
            # Speech with no words at all: noise, not a turn.
            self._transition("discard")
            self._idle_since = self._now
        if self._run_alive():
            self._run_used = True  # max_turn cut the caller off mid-run
        self._clear_words()
        self._turn_onset = None
        self._turn_barged_in = False

    def _evaluate(self) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        config = self.config
        if self._now - self._start >= config.max_call_ms:
            self._state = TurnState.ended
            events.append(MaxCallLength(at_ms=self._now))
            return events
        if self._run_onset is not None and not self._run_alive():
            self._end_run()
        while True:
            state = self._state
            if state is TurnState.listening:
                self._evaluate_listening(events)
            elif state in _FLOOR_HELD:
                self._evaluate_floor_held(events)
            elif state is TurnState.interrupted:
                self._evaluate_interrupted(events)
            elif state is TurnState.caller_turn:
                self._evaluate_caller_turn(events)
            if self._state is state:
                return events

    def _evaluate_listening(self, events: list[TurnEvent]) -> None:
        if self._run_alive():
            if self._run_counted and not self._run_used and self._run_onset is not None:
                self._clear_words()
                self._start_turn(self._run_onset, events)
            return
        if self._now - self._idle_since >= self.config.reprompt_after_ms:
            self._reprompts += 1
            self._idle_since = self._now
            events.append(Reprompt(at_ms=self._now, count=self._reprompts))

    def _evaluate_floor_held(self, events: list[TurnEvent]) -> None:
        if not self._run_alive():
            self._clear_words()  # words without a live run were dropped on arrival
            return
        if self._run_used or self._run_speech < self.config.min_barge_in_ms:
            return
        assert self._run_onset is not None
        self._run_used = True
        self._run_counted = True
        self._last_speech_end = self._run_end
        self._barge_onset = self._run_onset
        self._resume_trigger = (
            "resume_speaking" if self._state is TurnState.agent_speaking else "resume_responding"
        )
        audible = self._state is TurnState.agent_speaking
        self._transition("barge_in")
        self._agent_speaking = False
        events.append(BargeIn(at_ms=self._now, onset_ms=self._run_onset, agent_audible=audible))

    def _evaluate_interrupted(self, events: list[TurnEvent]) -> None:
        config = self.config
        onset = self._barge_onset if self._barge_onset is not None else self._now
        text = self._text()
        silence = self._silence()
        too_long = self._now - onset >= config.max_turn_ms
        if not too_long and silence < config.resume_after_silence_ms:
            return
        if too_long or (text and not self._is_backchannel(text)):
            self._transition("confirm")
            self._turn_onset = onset
            self._turn_barged_in = True
            self._reprompts = 0
            events.append(AgentInterrupted(at_ms=self._now, onset_ms=onset, text=text))
            return
        if self._final_covers() or silence >= config.endpoint_silence_ms + config.final_grace_ms:
            reason = ResumeReason.backchannel if text else ResumeReason.noise
            self._transition(self._resume_trigger)
            self._agent_speaking = self._state is TurnState.agent_speaking
            self._clear_words()
            self._barge_onset = None
            events.append(ResumeAgent(at_ms=self._now, reason=reason, text=text))

    def _evaluate_caller_turn(self, events: list[TurnEvent]) -> None:
        config = self.config
        onset = self._turn_onset if self._turn_onset is not None else self._now
        if self._now - onset >= config.max_turn_ms:
            self._finish_turn(TurnEndReason.max_turn, events)
            return
        silence = self._silence()
        if silence < config.endpoint_silence_ms:
            return
        if self._final_covers():
            assert self._final_at is not None
            last = self._last_speech_end if self._last_speech_end is not None else onset
            on_time = self._final_at <= last + config.endpoint_silence_ms
            reason = (
                TurnEndReason.silence_and_final if on_time else TurnEndReason.final_after_silence
            )
            self._finish_turn(reason, events)
        elif silence >= config.endpoint_silence_ms + config.final_grace_ms:
            self._finish_turn(TurnEndReason.interim_fallback, events)
