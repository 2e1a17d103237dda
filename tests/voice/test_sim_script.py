"""Caller scripts: the text form, the command line's script, and their checks."""

from pathlib import Path

import pytest

from voice_gateway.simulator.script import (
    DEFAULT_LINES,
    DEFAULT_WAIT_PAUSE_MS,
    BargeIn,
    Dtmf,
    HangUp,
    Pause,
    Say,
    Script,
    ScriptError,
    TimedDtmf,
    Utterance,
    WaitForAgent,
    build_script,
    load_script,
    parse_dtmf_at,
    parse_script,
)

EXAMPLE = """\
# A caller who interrupts the agent's second answer.
language es
wait                      # the greeting
say Hola, busco un piso en Chamberí.
wait 500
barge-in 400 Perdone, ¿tiene garaje?
backchannel 600 sí
language en
say @audio/budget.wav
dtmf 1#
dtmf 5 @ 4000
pause 300
hang-up
"""


def es(text: str) -> Utterance:
    return Utterance(text=text, language="es")


def test_the_documented_example_parses_step_by_step():
    script = parse_script(EXAMPLE, base_dir=Path("/scripts"))
    assert script.steps == (
        WaitForAgent(DEFAULT_WAIT_PAUSE_MS),
        Say(es("Hola, busco un piso en Chamberí.")),
        WaitForAgent(500),
        BargeIn(es("Perdone, ¿tiene garaje?"), 400, expect_clear=True),
        BargeIn(es("sí"), 600, expect_clear=False),
        Say(Utterance(wav=Path("/scripts/audio/budget.wav"), language="en")),
        Dtmf("1#"),
        Pause(300),
        HangUp(),
    )
    assert script.timed_dtmf == (TimedDtmf("5", 4000),)
    assert script.caller_turns == 4


def test_script_file_paths_are_relative_to_its_folder(tmp_path: Path):
    (tmp_path / "call.txt").write_text("say @hello.wav\n", encoding="utf-8")
    script = load_script(tmp_path / "call.txt", language="en")
    assert script.steps == (Say(Utterance(wav=tmp_path / "hello.wav", language="en")),)


def test_absolute_wav_paths_stay_as_written():
    script = parse_script("say @/data/a.wav", base_dir=Path("/scripts"))
    assert script.steps == (Say(Utterance(wav=Path("/data/a.wav"))),)


def test_comments_need_a_space_after_the_hash_so_the_hash_key_survives():
    script = parse_script("dtmf #\ndtmf 12# # press pound\n  # a whole-line comment\n\n")
    assert script.steps == (Dtmf("#"), Dtmf("12#"))


def test_a_text_may_contain_a_hash_without_spaces():
    script = parse_script("say Piso #3, por favor")
    assert script.steps == (Say(es("Piso #3, por favor")),)


def test_missing_script_file_is_a_script_error(tmp_path: Path):
    with pytest.raises(ScriptError, match="cannot read script"):
        load_script(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("wait\nsing la la", 2, "unknown step 'sing'"),
        ("pause soon", 1, "expected milliseconds, got 'soon'"),
        ("pause -5", 1, "expected milliseconds"),
        ("pause 9999999", 1, "a pause must be 0–600000 ms"),
        ("say", 1, "say what?"),
        ("barge-in 300", 1, "say what?"),
        ("barge-in soon hola", 1, "expected milliseconds"),
        ("dtmf 1x", 1, "DTMF needs keys among 0-9 * #"),
        ("dtmf", 1, "DTMF needs keys"),
        ("dtmf 12 @ 100", 1, "DTMF needs one key"),
        ("language fr", 1, "language must be one of es, en"),
        ("hang-up now", 1, "hang-up takes nothing"),
        ("wait 1.5", 1, "expected milliseconds"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(text: str, line: int, reason: str):
    with pytest.raises(ScriptError) as caught:
        parse_script(text)
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"line {line}: ")


def test_nothing_may_follow_a_hang_up():
    with pytest.raises(ScriptError, match="nothing can follow hang-up"):
        parse_script("hang-up\nsay hola")


def test_utterances_are_text_or_wav_never_both_or_neither():
    with pytest.raises(ScriptError):
        Utterance()
    with pytest.raises(ScriptError):
        Utterance(text="hola", wav=Path("a.wav"))
    with pytest.raises(ScriptError):
        Utterance(text="   ")
    with pytest.raises(ScriptError):
        Utterance(text="bonjour", language="fr")
    assert Utterance(wav=Path("/x/hello.wav")).label == "[hello.wav]"


def test_utterances_lists_each_once_in_order():
    script = Script(
        (
            Say(es("uno")),
            BargeIn(es("dos"), 100),
            Say(es("uno")),
            Say(Utterance(text="uno", language="en")),
        )
    )
    assert script.utterances() == [es("uno"), es("dos"), Utterance(text="uno", language="en")]


# -- the command line's script -----------------------------------------------------------


def test_default_script_hears_the_greeting_says_the_demo_lines_and_hangs_up():
    script = build_script(language="en")
    lines = DEFAULT_LINES["en"][:3]
    assert script.steps == (
        WaitForAgent(DEFAULT_WAIT_PAUSE_MS),
        *(Say(Utterance(text=line, language="en")) for line in lines),
        WaitForAgent(DEFAULT_WAIT_PAUSE_MS),
        HangUp(),
    )


def test_turns_repeat_the_utterances():
    script = build_script(says=["uno", "dos"], turns=5)
    said = [step.utterance.text for step in script.steps if isinstance(step, Say)]
    assert said == ["uno", "dos", "uno", "dos", "uno"]


def test_says_come_before_wavs():
    script = build_script(says=["hola"], wavs=[Path("a.wav")])
    assert [step for step in script.steps if isinstance(step, Say)] == [
        Say(es("hola")),
        Say(Utterance(wav=Path("a.wav"))),
    ]


def test_barge_in_makes_every_turn_after_the_first_cut_into_the_previous_reply():
    script = build_script(says=["uno", "dos", "tres"], barge_in_at_ms=250)
    assert script.steps == (
        WaitForAgent(DEFAULT_WAIT_PAUSE_MS),
        Say(es("uno")),
        BargeIn(es("dos"), 250),
        BargeIn(es("tres"), 250),
        WaitForAgent(DEFAULT_WAIT_PAUSE_MS),
        HangUp(),
    )


def test_timed_dtmf_from_the_command_line():
    assert parse_dtmf_at("5@1200") == TimedDtmf("5", 1200)
    assert parse_dtmf_at(" # @ 0 ") == TimedDtmf("#", 0)
    script = build_script(dtmf_at=[TimedDtmf("1", 10)])
    assert script.timed_dtmf == (TimedDtmf("1", 10),)
    for bad in ("5", "5@", "55@10", "x@10", "5@-1"):
        with pytest.raises(ScriptError):
            parse_dtmf_at(bad)


def test_a_call_needs_a_turn():
    with pytest.raises(ScriptError, match="at least one caller turn"):
        build_script(says=["hola"], turns=0)
    with pytest.raises(ScriptError, match="language"):
        build_script(language="de")
