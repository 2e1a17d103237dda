"""What a simulated caller does, step by step: the caller script and its text form.

A script is data (frozen dataclasses), so the same one drives one demo call or 200 load
calls, and its utterances can be synthesized once up front. Steps run in order; DTMF
may also be timed on the stream's clock, independent of the steps, as a caller presses
keys whenever they like.

The text form, one step a line (a line starting with `#`, or ` # ` on a line, starts a
comment)::

    language es                      # the language of the text utterances that follow
    wait                             # the agent's reply (here the greeting) plays out,
                                     # then 700 ms of quiet; `wait 1200` waits 1200 ms
    say Hola, busco un piso en Chamberí.
    say @audio/budget.wav            # a WAV file, relative to the script's folder
    barge-in 400 Perdone, ¿tiene garaje?   # speak 400 ms after the agent starts talking
    backchannel 600 sí               # the same, but the agent is expected to go on
    pause 300                        # stay quiet 300 ms
    dtmf 1#                          # press keys, one event per key
    dtmf 5 @ 4000                    # press 5 at 4000 ms on the stream's clock
    hang-up                          # send `stop` and close (implied at the end)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Keys Twilio reports in `dtmf` events.
DTMF_KEYS: Final = frozenset("0123456789*#")
LANGUAGES: Final = ("es", "en")
#: Quiet after the agent's reply before the caller speaks: people pause before answering.
DEFAULT_WAIT_PAUSE_MS: Final = 700
#: Spacing of consecutive keys in one `dtmf` step, like a person pressing them.
DTMF_SPACING_MS: Final = 150
_LONGEST_MS: Final = 600_000


class ScriptError(ValueError):
    """A script that cannot run; `line` is 1-based when it came from text."""

    def __init__(self, reason: str, *, line: int | None = None) -> None:
        super().__init__(reason if line is None else f"line {line}: {reason}")
        self.reason = reason
        self.line = line


@dataclass(frozen=True, slots=True)
class Utterance:
    """One thing the caller says: text (synthesized offline) or a recorded WAV file."""

    text: str | None = None
    wav: Path | None = None
    language: str = "es"

    def __post_init__(self) -> None:
        if (self.text is None) == (self.wav is None):
            raise ScriptError("an utterance is either text or a WAV file")
        if self.text is not None and not self.text.strip():
            raise ScriptError("an utterance needs some text")
        if self.language not in LANGUAGES:
            raise ScriptError(f"language must be one of {', '.join(LANGUAGES)}")

    @property
    def label(self) -> str:
        """How the conversation log shows it."""
        if self.text is not None:
            return self.text
        assert self.wav is not None
        return f"[{self.wav.name}]"


@dataclass(frozen=True, slots=True)
class Say:
    utterance: Utterance


@dataclass(frozen=True, slots=True)
class WaitForAgent:
    """Until the agent has spoken and then been quiet for `pause_ms`."""

    pause_ms: int = DEFAULT_WAIT_PAUSE_MS

    def __post_init__(self) -> None:
        _check_ms(self.pause_ms, "a wait")


@dataclass(frozen=True, slots=True)
class Pause:
    ms: int

    def __post_init__(self) -> None:
        _check_ms(self.ms, "a pause")


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Start `utterance` `after_ms` after the agent's audio starts, over it.

    `expect_clear` False makes it a backchannel ("sí", "ajá"): a good agent keeps
    talking, and a `clear` is counted against it.
    """

    utterance: Utterance
    after_ms: int
    expect_clear: bool = True

    def __post_init__(self) -> None:
        _check_ms(self.after_ms, "a barge-in delay")


@dataclass(frozen=True, slots=True)
class Dtmf:
    digits: str

    def __post_init__(self) -> None:
        _check_keys(self.digits, single=False)


@dataclass(frozen=True, slots=True)
class HangUp:
    pass


Step = Say | WaitForAgent | Pause | BargeIn | Dtmf | HangUp


@dataclass(frozen=True, slots=True)
class TimedDtmf:
    """A key pressed at `at_ms` on the stream's clock, whatever the steps are doing."""

    digit: str
    at_ms: int

    def __post_init__(self) -> None:
        _check_keys(self.digit, single=True)
        _check_ms(self.at_ms, "a DTMF time")


@dataclass(frozen=True, slots=True)
class Script:
    steps: tuple[Step, ...]
    timed_dtmf: tuple[TimedDtmf, ...] = ()

    def __post_init__(self) -> None:
        for hang_up_at, step in enumerate(self.steps):
            if isinstance(step, HangUp) and hang_up_at != len(self.steps) - 1:
                raise ScriptError("nothing can follow hang-up")

    def utterances(self) -> list[Utterance]:
        """Every utterance, once each, in order: what to synthesize before dialling."""
        found: dict[Utterance, None] = {}
        for step in self.steps:
            if isinstance(step, Say | BargeIn):
                found.setdefault(step.utterance)
        return list(found)

    @property
    def caller_turns(self) -> int:
        return sum(1 for step in self.steps if isinstance(step, Say | BargeIn))


def _check_keys(digits: str, *, single: bool) -> None:
    if not digits or (single and len(digits) != 1) or not set(digits) <= DTMF_KEYS:
        what = "one key" if single else "keys"
        raise ScriptError(f"DTMF needs {what} among 0-9 * #, not {digits!r}")


def _check_ms(value: int, what: str) -> None:
    if not 0 <= value <= _LONGEST_MS:
        raise ScriptError(f"{what} must be 0–{_LONGEST_MS} ms, not {value}")


# -- the text form ---------------------------------------------------------------------


def parse_script(text: str, *, language: str = "es", base_dir: Path | None = None) -> Script:
    """The script written in `text` (format in the module docstring)."""
    if language not in LANGUAGES:
        raise ScriptError(f"language must be one of {', '.join(LANGUAGES)}")
    steps: list[Step] = []
    timed: list[TimedDtmf] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        verb, _, rest = line.partition(" ")
        rest = rest.strip()
        try:
            if verb == "language":
                if rest not in LANGUAGES:
                    raise ScriptError(f"language must be one of {', '.join(LANGUAGES)}")
                language = rest
            elif verb == "say":
                steps.append(Say(_utterance(rest, language, base_dir)))
            elif verb == "wait":
                steps.append(WaitForAgent(_ms(rest) if rest else DEFAULT_WAIT_PAUSE_MS))
            elif verb == "pause":
                steps.append(Pause(_ms(rest)))
            elif verb in ("barge-in", "backchannel"):
                delay, _, said = rest.partition(" ")
                steps.append(
                    BargeIn(
                        _utterance(said.strip(), language, base_dir),
                        _ms(delay),
                        expect_clear=verb == "barge-in",
                    )
                )
            elif verb == "dtmf":
                keys, at, when = (part.strip() for part in rest.partition("@"))
                if at:
                    timed.append(TimedDtmf(keys, _ms(when)))
                else:
                    steps.append(Dtmf(keys))
            elif verb in ("hang-up", "hangup"):
                if rest:
                    raise ScriptError("hang-up takes nothing after it")
                steps.append(HangUp())
            else:
                raise ScriptError(f"unknown step {verb!r}")
        except ScriptError as exc:
            raise ScriptError(exc.reason, line=number) from None
    try:
        return Script(tuple(steps), tuple(timed))
    except ScriptError as exc:
        raise ScriptError(exc.reason) from None


def load_script(path: Path, *, language: str = "es") -> Script:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read script {path}: {exc}") from None
    return parse_script(text, language=language, base_dir=path.parent)


def _strip_comment(line: str) -> str:
    """Drop a comment: a line starting with `#`, or ` # ` and what follows. A `#` with
    no space after it stays, as it is the `#` key in `dtmf 1#` or `dtmf #`."""
    line = line.strip()
    if line.startswith("#"):
        return ""
    for at in range(1, len(line) - 1):
        if line[at] == "#" and line[at - 1].isspace() and line[at + 1].isspace():
            return line[:at]
    return line


def _ms(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ScriptError(f"expected milliseconds, got {text!r}")
    return int(text)


def _utterance(rest: str, language: str, base_dir: Path | None) -> Utterance:
    if not rest:
        raise ScriptError("say what? give text or @file.wav")
    if rest.startswith("@"):
        path = Path(rest[1:].strip())
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return Utterance(wav=path, language=language)
    return Utterance(text=rest, language=language)


def parse_dtmf_at(spec: str) -> TimedDtmf:
    """`5@1200` (the command line's --dtmf): key 5 at 1200 ms on the stream's clock."""
    digit, at, when = (part.strip() for part in spec.partition("@"))
    if not at:
        raise ScriptError(f"DTMF is DIGIT@MS, e.g. 5@1200, not {spec!r}")
    return TimedDtmf(digit, _ms(when))


# -- scripts built from options ----------------------------------------------------------

DEFAULT_LINES: Final[dict[str, tuple[str, ...]]] = {
    "es": (
        "Hola, estoy buscando un piso de tres dormitorios en Chamberí.",
        "Mi presupuesto es de unos trescientos mil euros, con hipoteca preaprobada.",
        "Me gustaría mudarme en los próximos tres meses.",
        "¿Podría visitarlo el sábado por la mañana?",
    ),
    "en": (
        "Hi, I'm looking for a three bedroom apartment downtown.",
        "My budget is around four hundred thousand dollars, and I'm preapproved.",
        "I'd like to move within the next three months.",
        "Could I see it on Saturday morning?",
    ),
}


def build_script(
    *,
    says: Sequence[str] = (),
    wavs: Sequence[Path] = (),
    language: str = "es",
    turns: int | None = None,
    barge_in_at_ms: int | None = None,
    dtmf_at: Iterable[TimedDtmf] = (),
    wait_pause_ms: int = DEFAULT_WAIT_PAUSE_MS,
) -> Script:
    """The command line's script: hear the greeting, then take `turns` turns.

    Utterances are the `says` then the `wavs` (the demo lines when neither is given),
    repeated to fill `turns` (default: one turn each). Each turn waits for the agent's
    reply; with `barge_in_at_ms`, every turn after the first instead cuts into the
    agent's previous reply that many ms after it starts.
    """
    if language not in LANGUAGES:
        raise ScriptError(f"language must be one of {', '.join(LANGUAGES)}")
    lines = [Utterance(text=text, language=language) for text in says]
    lines += [Utterance(wav=path, language=language) for path in wavs]
    if not lines:
        default = DEFAULT_LINES[language]
        lines = [Utterance(text=text, language=language) for text in default[: turns or 3]]
    count = len(lines) if turns is None else turns
    if count < 1:
        raise ScriptError("a call needs at least one caller turn")
    steps: list[Step] = [WaitForAgent(wait_pause_ms)]
    for index, utterance in enumerate(itertools.islice(itertools.cycle(lines), count)):
        if barge_in_at_ms is not None and index > 0:
            steps.append(BargeIn(utterance, barge_in_at_ms))
        else:
            steps.append(Say(utterance))
    steps += [WaitForAgent(wait_pause_ms), HangUp()]
    return Script(tuple(steps), tuple(dtmf_at))
