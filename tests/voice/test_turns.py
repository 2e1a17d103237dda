"""Turn-taking policy: scripted calls, frame by frame, on an injected clock."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from voice_gateway.config import GatewaySettings
from voice_gateway.turns import (
    AgentInterrupted,
    BackchannelMatcher,
    BargeIn,
    EndOfTurn,
    FalseInterruption,
    MaxCallLength,
    Reprompt,
    ResumeAgent,
    ResumeReason,
    SpeechStarted,
    TurnConfig,
    TurnEndReason,
    TurnError,
    TurnEvent,
    TurnPolicy,
    TurnState,
)

FRAME = 20


@dataclass
class Call:
    """Drives a policy like the session does: one VAD answer per 20 ms frame.

    `ticks_ahead` models the session's timer running ahead of the media (jitter):
    a tick at `frame start + ticks_ahead` follows every frame. `omit_silence` models
    Twilio leaving silent chunks out: silence then arrives as ticks only.
    """

    policy: TurnPolicy = field(default_factory=TurnPolicy)
    t: int = 0
    ticks_ahead: int | None = None
    omit_silence: bool = False
    events: list[TurnEvent] = field(default_factory=list)

    def _frame(self, is_speech: bool) -> None:
        if is_speech or not self.omit_silence:
            self.events += self.policy.on_frame(is_speech, self.t)
        if self.ticks_ahead is not None or (self.omit_silence and not is_speech):
            self.events += self.policy.on_tick(self.t + FRAME + (self.ticks_ahead or 0))
        self.t += FRAME

    def speech(self, ms: int) -> Call:
        for _ in range(ms // FRAME):
            self._frame(True)
        return self

    def silence(self, ms: int) -> Call:
        for _ in range(ms // FRAME):
            self._frame(False)
        return self

    def say(self, text: str, *, final: bool = True) -> Call:
        self.events += self.policy.on_transcript(text, final, self.t)
        return self

    def agent(self, speaking: bool) -> Call:
        self.events += self.policy.on_agent_speaking(speaking, self.t)
        return self

    def tick(self, ms: int) -> Call:
        self.t += ms
        self.events += self.policy.on_tick(self.t)
        return self

    def take(self) -> list[TurnEvent]:
        events, self.events = self.events, []
        return events


def _kinds(events: list[TurnEvent]) -> list[str]:
    return [type(event).__name__ for event in events]


# -- a caller's turn ---------------------------------------------------------------------


def test_plain_turn_ends_on_silence_plus_final() -> None:
    call = Call().silence(200).speech(1000)  # speech 200-1200 ms
    assert call.take() == [SpeechStarted(at_ms=300, onset_ms=200)]  # after min_speech_ms
    call.silence(300).say("Quiero una casa en Ñuñoa.")  # the final at 1500
    assert call.take() == []
    call.silence(400)
    assert call.take() == [
        EndOfTurn(
            at_ms=1800,  # speech end + endpoint_silence_ms, exactly
            text="Quiero una casa en Ñuñoa.",
            reason=TurnEndReason.silence_and_final,
            onset_ms=200,
            speech_end_ms=1200,
        )
    ]
    assert call.policy.state is TurnState.responding


def test_slow_final_ends_the_turn_when_it_arrives() -> None:
    call = Call().speech(800).say("quiero", final=False).silence(1000)
    assert _kinds(call.take()) == ["SpeechStarted"]  # 1000 ms of silence, no final yet
    call.say("Quiero visitar la casa.")
    (event,) = call.take()
    assert isinstance(event, EndOfTurn)
    assert event.at_ms == 1800
    assert event.reason is TurnEndReason.final_after_silence
    assert event.text == "Quiero visitar la casa."


def test_no_final_falls_back_to_the_interim_text() -> None:
    call = Call().speech(800).say("quiero visitar la", final=False).silence(1380)
    assert _kinds(call.take()) == ["SpeechStarted"]
    call.silence(20)  # endpoint 600 + grace 800 after the speech ended at 800
    (event,) = call.take()
    assert isinstance(event, EndOfTurn)
    assert (event.at_ms, event.reason, event.text) == (
        2200,
        TurnEndReason.interim_fallback,
        "quiero visitar la",
    )


def test_speech_without_any_words_is_noise_not_a_turn() -> None:
    call = Call().speech(400).silence(3000)
    assert _kinds(call.take()) == ["SpeechStarted"]
    assert call.policy.state is TurnState.listening
    call.say("", final=True).silence(100)
    assert call.take() == []


def test_a_pause_shorter_than_the_endpoint_keeps_the_turn_going() -> None:
    call = Call().speech(600).say("Quiero una casa").silence(400)
    call.speech(600).silence(200).say("en Providencia").silence(600)
    events = call.take()
    assert _kinds(events) == ["SpeechStarted", "EndOfTurn"]
    end = events[1]
    assert isinstance(end, EndOfTurn)
    assert end.text == "Quiero una casa en Providencia"
    assert (end.onset_ms, end.speech_end_ms, end.at_ms) == (0, 1600, 2200)


def test_a_final_for_the_first_part_does_not_end_a_turn_still_being_transcribed() -> None:
    call = Call().speech(600).silence(400).speech(600)  # 0-600, 1000-1600
    call.say("Quiero una casa")  # the first part's final arrives late, at 1600
    call.say("en Provi", final=False).silence(700)
    assert _kinds(call.take()) == ["SpeechStarted"]  # interim pending: wait
    call.say("en Providencia")
    (end,) = call.take()
    assert isinstance(end, EndOfTurn)
    assert end.text == "Quiero una casa en Providencia"


def test_max_turn_cuts_a_monologue_without_counting_it_as_a_barge_in() -> None:
    config = TurnConfig(max_turn_ms=5000)
    call = Call(TurnPolicy(config)).speech(2000).say("bla bla bla").speech(4000)
    events = call.take()
    assert _kinds(events) == ["SpeechStarted", "EndOfTurn"]
    end = events[1]
    assert isinstance(end, EndOfTurn)
    assert end.reason is TurnEndReason.max_turn
    assert end.at_ms == 5000
    assert end.text == "bla bla bla"
    assert call.policy.state is TurnState.responding  # still talking: no BargeIn


def test_noise_bursts_shorter_than_min_speech_are_ignored() -> None:
    call = Call()
    for _ in range(20):
        call.speech(80).silence(100)  # 80 ms clicks, never 100 ms of speech in a run
    call.silence(2000)
    assert call.take() == []
    call.agent(True)
    for _ in range(20):
        call.speech(80).silence(100)
    assert call.take() == []
    assert call.policy.state is TurnState.agent_speaking


def test_short_gaps_inside_a_word_do_not_break_a_run() -> None:
    call = Call().speech(60).silence(40).speech(40)  # 100 ms of speech around a 40 ms dip
    assert call.take() == [SpeechStarted(at_ms=140, onset_ms=0)]


def test_words_the_vad_missed_still_make_a_turn() -> None:
    call = Call().silence(1000).say("hola")
    assert call.take() == [SpeechStarted(at_ms=1000, onset_ms=1000)]
    call.silence(600)
    (end,) = call.take()
    assert isinstance(end, EndOfTurn)
    assert end.text == "hola"
    assert end.at_ms == 1600


# -- barge-in ----------------------------------------------------------------------------


def _agent_talking() -> Call:
    call = Call().speech(500).say("Hola").silence(600)
    call.agent(True)
    assert _kinds(call.take()) == ["SpeechStarted", "EndOfTurn"]
    call.silence(1000)  # the reply plays from 1100
    return call


@pytest.mark.parametrize("ticks_ahead", [None, 0, 40, 80])
def test_barge_in_fires_at_onset_plus_minimum_without_waiting_for_text(
    ticks_ahead: int | None,
) -> None:
    call = _agent_talking()
    call.ticks_ahead = ticks_ahead
    onset = call.t  # 2100
    call.speech(100)
    assert call.take() == []
    call.speech(20)
    assert call.take() == [BargeIn(at_ms=onset + 120, onset_ms=onset, agent_audible=True)]
    assert call.policy.state is TurnState.interrupted
    assert not call.policy.agent_speaking


def test_backchannel_resumes_the_agent() -> None:
    call = _agent_talking()
    call.speech(300)  # "sí"
    call.silence(200).say("Sí.")
    assert _kinds(call.take()) == ["BargeIn"]
    call.silence(180)
    assert call.take() == []
    call.silence(20)  # resume_after_silence_ms (400) after the speech ended
    assert call.take() == [ResumeAgent(at_ms=2800, reason=ResumeReason.backchannel, text="Sí.")]
    assert call.policy.state is TurnState.agent_speaking
    assert call.policy.agent_speaking
    call.agent(True).silence(2000)  # the session resumes playback: no new turn
    assert call.take() == []


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("es", "ajá"),
        ("es", "Sí, sí, claro."),
        ("es", "vale"),
        ("es", "Mmm, ya veo"),
        ("en", "mm-hmm"),
        ("en", "Uh-huh, okay."),
        ("en", "yeah"),
        ("en", "OK, got it"),
    ],
)
def test_backchannels_in_both_languages(language: str, said: str) -> None:
    call = Call(TurnPolicy(language=language)).agent(True).silence(500)
    call.speech(400).silence(100).say(said).silence(400)
    events = call.take()
    assert _kinds(events) == ["BargeIn", "ResumeAgent"]
    assert isinstance(events[1], FalseInterruption)
    assert events[1].reason is ResumeReason.backchannel


def test_a_cough_with_no_words_resumes_after_the_grace() -> None:
    call = _agent_talking()
    call.speech(200)
    assert _kinds(call.take()) == ["BargeIn"]
    speech_end = call.t
    call.silence(1380)
    assert call.take() == []  # a short "stop" may still be on its way from STT
    call.silence(20)
    assert call.take() == [ResumeAgent(at_ms=speech_end + 1400, reason=ResumeReason.noise)]


@pytest.mark.parametrize(
    ("language", "said"), [("es", "Espera, espera."), ("en", "Wait, wait."), ("es", "no")]
)
def test_real_interruption_starts_a_new_turn(language: str, said: str) -> None:
    call = Call(TurnPolicy(language=language))
    call.speech(500).say("Hola").silence(600).agent(True).silence(1000)
    call.take()
    onset = call.t
    call.speech(700)
    call.say(said.lower().rstrip("."), final=False).silence(400)
    events = call.take()
    assert events == [
        BargeIn(at_ms=onset + 120, onset_ms=onset, agent_audible=True),
        AgentInterrupted(at_ms=onset + 1100, onset_ms=onset, text=said.lower().rstrip(".")),
    ]
    assert call.policy.state is TurnState.caller_turn
    call.say(said).silence(200)
    (end,) = call.take()
    assert isinstance(end, EndOfTurn)
    assert end.barged_in
    assert end.text == said
    assert end.onset_ms == onset
    assert end.at_ms == onset + 700 + 600


def test_interrupting_the_reply_before_it_plays() -> None:
    call = Call().speech(500).say("Hola").silence(600)
    assert call.policy.state is TurnState.responding
    call.speech(200)
    events = call.take()
    assert events[-1] == BargeIn(at_ms=1220, onset_ms=1100, agent_audible=False)
    call.silence(100).say("ok").silence(300)
    assert call.take() == [ResumeAgent(at_ms=1700, reason=ResumeReason.backchannel, text="ok")]
    assert call.policy.state is TurnState.responding  # the reply is still coming
    assert not call.policy.agent_speaking


def test_a_long_interruption_is_real_even_without_words() -> None:
    call = Call(TurnPolicy(TurnConfig(max_turn_ms=3000))).agent(True).silence(100)
    call.speech(3100)
    events = call.take()
    assert _kinds(events) == ["BargeIn", "AgentInterrupted"]
    assert events[1].at_ms == 3100


def test_speech_that_outlasts_the_agent_becomes_a_normal_turn() -> None:
    call = Call().agent(True).silence(100)
    call.speech(60).agent(False).speech(100)
    assert call.take() == [SpeechStarted(at_ms=200, onset_ms=100)]
    assert call.policy.state is TurnState.caller_turn


def test_words_with_no_voice_under_them_do_not_interrupt() -> None:
    call = _agent_talking()
    call.say("Hola, le llamo de la inmobiliaria")  # our own voice, transcribed from echo
    call.say("Hola").silence(2000)
    assert call.take() == []
    assert call.policy.state is TurnState.agent_speaking
    assert call.policy.snapshot().dropped_transcripts == 2


# -- timers ------------------------------------------------------------------------------


def test_reprompt_after_silence_once_the_agent_has_finished() -> None:
    call = Call(TurnPolicy(TurnConfig(reprompt_after_ms=5000))).agent(True).silence(2000)
    call.agent(False)  # greeting over at 2000
    call.silence(4980)
    assert call.take() == []
    call.silence(20)
    assert call.take() == [Reprompt(at_ms=7000, count=1)]
    call.agent(True).silence(1000).agent(False).silence(5000)
    assert call.take() == [Reprompt(at_ms=13000, count=2)]
    call.speech(300).silence(100).say("perdón, sí").silence(600)  # the caller answers
    call.agent(True).silence(500).agent(False).silence(5000)
    assert _kinds(call.take()) == ["SpeechStarted", "EndOfTurn", "Reprompt"]
    assert call.policy.snapshot().reprompts == 1


def test_noise_does_not_reset_the_reprompt_count() -> None:
    call = Call(TurnPolicy(TurnConfig(reprompt_after_ms=3000))).silence(3000)
    call.speech(300).silence(3000)  # noise: no words
    call.silence(1600)
    assert _kinds(call.take()) == ["Reprompt", "SpeechStarted", "Reprompt"]
    assert call.policy.snapshot().reprompts == 2


def test_silence_left_out_by_twilio_still_ends_the_turn_on_time() -> None:
    call = Call(omit_silence=True).speech(1000).say("Hola")
    call.silence(600)
    events = call.take()
    assert _kinds(events) == ["SpeechStarted", "EndOfTurn"]
    assert events[1].at_ms == 1600


def test_max_call_length_ends_turn_taking() -> None:
    policy = TurnPolicy(TurnConfig(max_call_ms=60_000, reprompt_after_ms=100_000))
    call = Call(policy).agent(True).silence(10_000).agent(False)
    call.tick(49_980)
    assert call.take() == []
    call.tick(20)
    assert call.take() == [MaxCallLength(at_ms=60_000)]
    assert policy.state is TurnState.ended
    call.speech(1000).say("hola").silence(1000).tick(100_000)
    assert call.take() == []  # nothing more is decided
    call.agent(True)  # the goodbye
    assert policy.agent_speaking
    assert call.take() == []


def test_max_call_length_is_checked_on_frames_too() -> None:
    call = Call(TurnPolicy(TurnConfig(max_call_ms=1000))).speech(1100)
    assert _kinds(call.take()) == ["SpeechStarted", "MaxCallLength"]


def test_config_from_gateway_settings() -> None:
    settings = GatewaySettings(
        _env_file=None, ENDPOINT_SILENCE_MS=800, BARGE_IN_MIN_MS=160, MAX_CALL_SECONDS=120
    )
    config = TurnConfig.from_settings(settings)
    assert config.endpoint_silence_ms == 800
    assert config.min_barge_in_ms == 160
    assert config.max_call_ms == 120_000
    assert TurnConfig.from_settings(settings, min_barge_in_ms=200).min_barge_in_ms == 200
    assert TurnConfig.from_settings(GatewaySettings(_env_file=None)) == TurnConfig()


# -- whole calls, whole and with jitter ----------------------------------------------------


def _script(call: Call) -> list[TurnEvent]:
    """Greeting, a question, an answer, a backchannel, a real interruption, goodbye."""
    call.agent(True).silence(2000).agent(False).silence(700)
    call.speech(1200).silence(300).say("Busco un departamento.").silence(400)
    call.agent(True).silence(1500)
    call.speech(260).silence(250).say("ajá").silence(300)
    call.agent(True).silence(1000)
    call.speech(900).say("espera", final=False).silence(400).say("Espera, ¿cuánto cuesta?")
    call.silence(700).agent(True).silence(1500).agent(False).silence(500)
    return call.take()


def _shape(events: list[TurnEvent]) -> list[tuple[str, str]]:
    return [
        (type(event).__name__, getattr(event, "text", "") or str(getattr(event, "reason", "")))
        for event in events
    ]


def test_a_whole_call() -> None:
    events = _script(Call())
    assert _shape(events) == [
        ("SpeechStarted", ""),
        ("EndOfTurn", "Busco un departamento."),
        ("BargeIn", ""),
        ("ResumeAgent", "ajá"),
        ("BargeIn", ""),
        ("AgentInterrupted", "espera"),
        ("EndOfTurn", "Espera, ¿cuánto cuesta?"),
    ]


@pytest.mark.parametrize("ticks_ahead", [0, 20, 60, 99])
def test_a_whole_call_with_the_timer_running_ahead(ticks_ahead: int) -> None:
    assert _script(Call(ticks_ahead=ticks_ahead)) == _script(Call())


def test_a_whole_call_with_silence_left_out() -> None:
    assert _shape(_script(Call(omit_silence=True))) == _shape(_script(Call()))


def test_random_jitter_never_breaks_the_rules() -> None:
    rng = random.Random(4)
    for _ in range(30):
        policy = TurnPolicy()
        events: list[TurnEvent] = []
        t = 0
        for _ in range(800):
            t += FRAME
            events += policy.on_frame(rng.random() < 0.3, t)
            if rng.random() < 0.3:
                events += policy.on_tick(t + rng.randint(0, 150))
            if rng.random() < 0.02:
                events += policy.on_transcript(
                    rng.choice(["sí", "casa", ""]), rng.random() < 0.5, t
                )
            if rng.random() < 0.02 and policy.state in (TurnState.listening, TurnState.responding):
                events += policy.on_agent_speaking(True, t)
            elif rng.random() < 0.02:
                events += policy.on_agent_speaking(False, t)
        times = [event.at_ms for event in events]
        assert times == sorted(times)
        for before, after in itertools.pairwise(events):
            if isinstance(after, (ResumeAgent, AgentInterrupted)):
                assert isinstance(before, BargeIn)


# -- misuse leaves the state unchanged (h11 style) ------------------------------------------


def test_frames_must_move_forward() -> None:
    call = Call().speech(200)
    before = call.policy.snapshot()
    for stamp in (call.t - FRAME, call.t - 2 * FRAME):
        with pytest.raises(TurnError, match="does not follow"):
            call.policy.on_frame(True, stamp)
        assert call.policy.snapshot() == before


def test_time_before_the_call_is_refused() -> None:
    policy = TurnPolicy(start_ms=1000)
    before = policy.snapshot()
    with pytest.raises(TurnError, match="before the call started"):
        policy.on_tick(999)
    assert policy.snapshot() == before


def test_agent_cannot_start_over_a_caller_turn_or_an_interruption() -> None:
    call = Call().speech(300)
    before = call.policy.snapshot()
    with pytest.raises(TurnError, match="caller's turn is in progress") as caught:
        call.policy.on_agent_speaking(True, call.t)
    assert "caller_turn" in caught.value.reason
    assert call.policy.snapshot() == before

    call = _agent_talking()
    call.speech(200)
    before = call.policy.snapshot()
    with pytest.raises(TurnError, match="caller is interrupting"):
        call.policy.on_agent_speaking(True, call.t)
    assert call.policy.snapshot() == before
    call.agent(False)  # marks echoing after the clear: harmless
    assert call.policy.state is TurnState.interrupted


def test_unknown_language_is_refused() -> None:
    with pytest.raises(TurnError, match="no backchannel words for language 'fr'"):
        TurnPolicy(language="fr")


@pytest.mark.parametrize(
    "options",
    [
        {"endpoint_silence_ms": 0},
        {"min_barge_in_ms": -1},
        {"final_grace_ms": -1},
        {"resume_after_silence_ms": 700},
        {"speech_gap_ms": 400},
    ],
)
def test_config_is_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="_ms"):
        TurnConfig(**options)


def test_events_are_validated_on_construction() -> None:
    with pytest.raises(ValueError, match="caller's words"):
        EndOfTurn(at_ms=10, text="  ", reason=TurnEndReason.max_turn, onset_ms=0, speech_end_ms=5)
    with pytest.raises(ValueError, match="onset_ms"):
        SpeechStarted(at_ms=10, onset_ms=20)
    with pytest.raises(ValueError, match="negative"):
        MaxCallLength(at_ms=-1)
    with pytest.raises(ValueError, match="count"):
        Reprompt(at_ms=0, count=0)


# -- backchannel matching ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("es", "sí", True),
        ("es", "Si.", True),
        ("es", "¡Sí, sí, claro!", True),
        ("es", "ajá", True),
        ("es", "Mmmmm", True),
        ("es", "de acuerdo", True),
        ("es", "está bien, vale", True),
        ("es", "sí pero", False),
        ("es", "no", False),
        ("es", "espera", False),
        ("es", "de", False),
        ("es", "", False),
        ("en", "mm-hmm", True),
        ("en", "uh huh", True),
        ("en", "Yeah, right.", True),
        ("en", "all right", True),
        ("en", "I see", True),
        ("en", "I", False),
        ("en", "wait", False),
        ("en", "yeah but how much", False),
    ],
)
def test_backchannel_matching(language: str, text: str, expected: bool) -> None:
    assert TurnPolicy(language=language).is_backchannel(text) is expected


def test_custom_backchannels() -> None:
    matcher = BackchannelMatcher(["ouais", "d'accord"])
    assert matcher("Ouais, d'accord")
    assert not matcher("non")
    config = TurnConfig(backchannels={"fr": frozenset({"ouais"})})
    assert TurnPolicy(config, language="fr").is_backchannel("ouais ouais")
