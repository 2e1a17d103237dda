"""Did the lead just ask us to stop? One answer for every channel and the agent.

Two kinds of evidence. A message that is nothing but a keyword ("STOP", "baja") is an
opt-out, as carriers treat it; the same word inside a sentence is not ("stop by the
house", "cancel the visit"), so single words only count on their own. Carriers' English
keywords count in any language; the lead's own language adds its words. Phrases that
only mean "stop contacting me" count anywhere in the text and in every language: missing
an opt-out is the costly mistake, and these phrases do not occur by accident.
"""

from __future__ import annotations

import re
import unicodedata

from crm.enums import Language

#: Whole-message keywords, after case, accents and punctuation are folded away.
_KEYWORDS: dict[Language, frozenset[str]] = {
    Language.en: frozenset(
        {"stop", "stopall", "quit", "end", "revoke", "opt out", "optout", "cancel", "unsubscribe"}
    ),
    Language.es: frozenset({"baja", "alto", "basta", "cancelar", "parar", "detener"}),
}

_PHRASES: dict[Language, tuple[str, ...]] = {
    Language.en: (
        r"\bopt(ing)? ?out\b",
        r"\bunsubscribe\b",
        r"\bstop (calling|texting|messaging|contacting|emailing)\b",
        r"\b(don'?t|do not|never) (call|text|message|contact|email) (me|us)\b",
        r"\b(remove|take) (me|my number) (off|from)\b",
        r"\brevoke (my )?consent\b",
    ),
    Language.es: (
        r"\b(darme|dame|dar|denme|den) de baja\b",
        r"\bno me (llame|llamen|llames)\b",
        r"\bno (me )?llamen mas\b",
        r"\bno (me )?(vuelva|vuelvas|vuelvan) a (llamar|escribir|contactar)\b",
        r"\bno llamar\b",
        r"\bno me (escriban|escribas|contacten|contactes|molesten|molestes)\b",
        r"\bno (quiero|deseo) (que me (llamen|contacten|escriban)|mas (llamadas|mensajes)|"
        r"recibir (llamadas|mensajes))\b",
        r"\b(borren|borra|eliminen|elimina) mi (numero|telefono)\b",
        r"\b(quitenme|quiteme|sacame|saquenme|saqueme) de (la|su|sus) (lista|listas|base)\b",
        r"\bretiro (mi )?consentimiento\b",
    ),
}

_COMPILED = tuple(re.compile(p) for patterns in _PHRASES.values() for p in patterns)
_BREAK = "|"


def _fold(text: str) -> str:
    """Lower case, no accents, single spaces; punctuation becomes a `|` token, so that a
    phrase cannot span it ("no, llamar mañana" is not "no llamar")."""
    decomposed = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w' ]+", f" {_BREAK} ", plain).split())


def is_opt_out(text: str, language: Language | None = None) -> bool:
    """True when `text` asks to stop being contacted; `language` None checks every one."""
    said = _fold(text)
    keywords = set(_KEYWORDS[Language.en])
    for lang in [language] if language else list(Language):
        keywords |= _KEYWORDS[lang]
    if " ".join(w for w in said.split() if w != _BREAK) in keywords:
        return True
    return any(p.search(said) for p in _COMPILED)
