"""Cut the agent's streamed reply into pieces that can be spoken as soon as they are whole.

The first audio of a reply must leave before the LLM finishes, so each sentence goes to
TTS the moment it is complete. `SentenceSplitter.push` takes text deltas as they arrive
and returns the sentences they completed; `flush` returns the rest at the end of the
reply. It is pure (no I/O, no clock): the same text gives the same sentences whether it
arrives whole or one character at a time, because every decision looks only at text
already seen plus a bounded look-ahead, and waits for that look-ahead when it is missing.

Rules, in Spanish and English:

* `.`, `!`, `?`, `…` end a sentence when whitespace follows, together with any closing
  quotes or brackets (`."`, `?»`, `!)`). No whitespace after, no boundary: that keeps
  decimals (3.5), thousands (250.000 €, $1,200.50), times (10:30), URLs and e-mail
  addresses whole. `?` and `!` end at once; `¿…?` and `¡…!` need nothing special.
* A period after an abbreviation does not end a sentence. Titles and address words
  (Sr., Sra., Dr., Mr., Av., St. …) and single letters (initials) never do; "etc.",
  "e.g.", "U.S.", "a.m." and the like do only when the next word starts with a capital;
  "No." / "Nº." / "núm." do unless a number follows ("No. 5" vs "Creo que no. Pero…").
  When in doubt we do not split: a missed boundary costs a moment of latency, a wrong
  one puts a pause in the middle of a name or a number.
* An ellipsis ends a sentence unless the next word is lower-case (a pause mid-sentence).
* A newline ends a sentence (LLM lists); a list marker ("1. Casa…") is not an ending.
* Long clauses: past `max_chars` (`first_max_chars` for a reply's first piece, so TTS
  starts early) the text is cut after the last ", " / "; " / ": " that leaves at least
  `min_clause_chars`; past `hard_max_chars` at the last space, or anywhere. That also
  caps the buffer.
* Pieces with no letter or digit ("…", "!") are dropped: there is nothing to say.

Short first sentences ("Sí.", "Claro.") are emitted at once by default: saying them
while the rest is still being generated is exactly the latency win we want, and TTS
engines speak two-letter sentences fine. `min_chars` can hold short pieces back to be
spoken together with the next one, for voices that sound clipped on them.
"""

from __future__ import annotations

_TERMINATORS = frozenset(".!?…")
_CLOSERS = frozenset("\"'”’»)]}")
_SOFT_BREAKS = frozenset(",;:")
_OPENERS = "\"'“‘«([{¿¡"
#: Never end a sentence: titles, address words, and forms that always precede a name.
TITLES = frozenset(
    {
        "sr", "sra", "srta", "sres", "dr", "dra", "dres", "mr", "mrs", "ms", "prof",
        "lic", "ing", "arq", "av", "avda", "st", "sto", "sta", "ud", "uds", "vd", "vds",
        "dña", "dn", "jr", "gral", "vs", "cf", "fig", "pje", "depto", "dpto", "mt",
    }
)  # fmt: skip
#: End a sentence only before a capital: they are as often the last word as not.
CONDITIONAL = frozenset(
    {
        "etc", "aprox", "approx", "inc", "ltd", "co", "corp", "min", "máx", "mín",
        "max", "hrs", "hr", "seg", "km", "mts", "cm", "kg", "tel", "ext", "art",
        "dept", "esq", "pág", "pp", "cía", "cia",
    }
)  # fmt: skip
#: "No. 5", "Nº. 12", "núm. 3": an abbreviation only before a number.
NUMBER_ABBREVIATIONS = frozenset({"no", "nº", "núm", "num", "nro", "n°"})


class SentenceSplitter:
    """Streaming sentence splitter for one reply at a time (reusable after `flush`)."""

    __slots__ = (
        "_buf",
        "_emitted_any",
        "_held",
        "_pos",
        "_soft",
        "first_max_chars",
        "hard_max_chars",
        "max_chars",
        "min_chars",
        "min_clause_chars",
    )

    def __init__(
        self,
        *,
        max_chars: int = 120,
        first_max_chars: int = 60,
        hard_max_chars: int = 250,
        min_clause_chars: int = 20,
        min_chars: int = 0,
    ) -> None:
        if not 0 < min_clause_chars < first_max_chars <= max_chars < hard_max_chars:
            raise ValueError(
                "need 0 < min_clause_chars < first_max_chars <= max_chars < hard_max_chars"
            )
        if min_chars < 0:
            raise ValueError("min_chars cannot be negative")
        self.max_chars = max_chars
        self.first_max_chars = first_max_chars
        self.hard_max_chars = hard_max_chars
        self.min_clause_chars = min_clause_chars
        self.min_chars = min_chars
        self._buf = ""
        self._pos = 0  # characters of _buf already judged
        self._soft: int | None = None  # end of the last soft break seen in _buf[:_pos]
        self._held = ""  # a piece shorter than min_chars, waiting for company
        self._emitted_any = False

    def push(self, text_delta: str) -> list[str]:
        """Add streamed text; return the sentences it completed (often none)."""
        self._buf += text_delta
        out: list[str] = []
        self._scan(out)
        return out

    def flush(self) -> list[str]:
        """End of the reply: whatever is left, then the splitter is ready for a new one."""
        out: list[str] = []
        self._emit(self._buf, out, final=True)
        if self._held:
            out.append(self._held)
        self._buf, self._pos, self._soft, self._held = "", 0, None, ""
        self._emitted_any = False
        return out

    # -- internals ---------------------------------------------------------------------

    def _emit(self, piece: str, out: list[str], *, final: bool = False) -> None:
        piece = " ".join(piece.split())
        if not any(ch.isalnum() for ch in piece):
            return
        self._emitted_any = True
        if self._held:
            piece = f"{self._held} {piece}"
            self._held = ""
        if len(piece) < self.min_chars and not final:
            self._held = piece
            return
        out.append(piece)

    def _cut(self, at: int, out: list[str], *, skip: int = 0) -> None:
        """Emit _buf[:at], drop `skip` more characters, and judge the rest afresh."""
        self._emit(self._buf[:at], out)
        self._buf = self._buf[at + skip :]
        self._pos = 0
        self._soft = None

    def _scan(self, out: list[str]) -> None:
        while True:
            if self._pos == 0:
                self._buf = self._buf.lstrip()
            buf, pos = self._buf, self._pos
            if pos >= len(buf):
                return
            ch = buf[pos]
            if ch in _TERMINATORS:
                decision = self._judge_terminator(buf, pos)
                if decision is None:
                    return  # need more text to decide
                end, boundary = decision
                if boundary:
                    self._cut(end, out)
                    continue
                self._pos = end
            elif ch == "\n":
                self._cut(pos, out, skip=1)
                continue
            elif ch in _SOFT_BREAKS:
                if pos + 1 >= len(buf):
                    return
                if buf[pos + 1].isspace():
                    self._soft = pos + 1
                self._pos = pos + 1
            else:
                self._pos = pos + 1
            self._enforce_length(out)

    def _enforce_length(self, out: list[str]) -> None:
        limit = self.max_chars if self._emitted_any else self.first_max_chars
        if self._pos <= limit:
            return
        if self._soft is not None and self._soft >= self.min_clause_chars:
            self._cut(self._soft, out)
            return
        if self._pos <= self.hard_max_chars:
            return
        space = self._buf.rfind(" ", self.min_clause_chars, self._pos)
        self._cut(space if space > 0 else self._pos, out)

    def _judge_terminator(self, buf: str, pos: int) -> tuple[int, bool] | None:
        """(end of the terminator run, whether it ends a sentence), or None to wait."""
        end = pos
        while end < len(buf) and buf[end] in _TERMINATORS:
            end += 1
        while end < len(buf) and buf[end] in _CLOSERS:
            end += 1
        if end >= len(buf):
            return None
        if not buf[end].isspace():
            return end, False
        run = buf[pos:end]
        if "?" in run or "!" in run:
            return end, True
        following = _next_word_start(buf, end)
        is_ellipsis = "…" in run or run.count(".") > 1
        if is_ellipsis:
            if following is None:
                return None
            return end, not buf[following].islower()
        start = buf.rfind(" ", 0, pos) + 1
        start = max(start, buf.rfind("\n", 0, pos) + 1)
        token = buf[start:pos].lstrip(_OPENERS).lower()
        kind = _abbreviation_kind(token, buf[:start])
        if kind == "never":
            return end, False
        if kind == "sentence":
            return end, True
        if following is None:
            return None
        nxt = buf[following]
        if kind == "number":
            return end, not (nxt.isdigit() or nxt == "#")
        # conditional: a new sentence starts with a capital or an opening mark
        return end, nxt.isupper() or nxt in '¿¡"“«'


def _next_word_start(buf: str, index: int) -> int | None:
    while index < len(buf) and buf[index].isspace():
        if buf[index] == "\n":
            return index  # a newline is an ending of its own; treat as a capital
        index += 1
    return index if index < len(buf) else None


def _abbreviation_kind(token: str, before: str) -> str:
    """How a period after `token` behaves: "never", "conditional", "number", "sentence"."""
    if not token:
        return "sentence"
    if token.isdigit():
        head = before.rstrip()
        # "1. Casa en Providencia": a list marker at the start or after a colon.
        if len(token) <= 2 and (not head or head.endswith(":")):
            return "never"
        return "sentence"
    if len(token) == 1 and token.isalpha():
        return "never"  # an initial: "J. Pérez"
    if token in TITLES:
        return "never"
    if token in NUMBER_ABBREVIATIONS:
        return "number"
    if token in CONDITIONAL:
        return "conditional"
    parts = token.split(".")
    if len(parts) > 1 and all(0 < len(part) <= 2 and part.isalpha() for part in parts):
        return "conditional"  # e.g, i.e, U.S, a.m, EE.UU
    return "sentence"
