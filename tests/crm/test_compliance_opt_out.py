"""Opt-out detection: keywords alone, unambiguous phrases anywhere, and what is not one."""

from __future__ import annotations

import pytest

from crm.compliance.opt_out import is_opt_out
from crm.enums import Language

OPT_OUTS = [
    # Carrier keywords on their own, any case or punctuation, in any language.
    ("STOP", Language.en),
    ("Stop.", Language.es),
    ("stopall", Language.en),
    ("Quit", Language.en),
    ("END", Language.en),
    ("revoke", Language.en),
    ("opt out", Language.en),
    ("Opt-out!", Language.es),
    ("CANCEL", Language.en),
    ("unsubscribe", Language.es),
    # Spanish keywords on their own.
    ("BAJA", Language.es),
    ("¡Basta!", Language.es),
    ("Cancelar", Language.es),
    # Phrases, anywhere, with or without accents.
    ("Please stop calling me, thanks", Language.en),
    ("don't call me again", Language.en),
    ("Don’t text me anymore", Language.en),
    ("I want to opt out of these messages", Language.en),
    ("remove me from your list", Language.en),
    ("I revoke my consent", Language.en),
    ("Quiero darme de baja", Language.es),
    ("por favor no me llame más", Language.es),
    ("No me llamen", Language.es),
    ("no me vuelvan a llamar nunca", Language.es),
    ("No me vuelvas a escribir", Language.es),
    ("no llamar a este número", Language.es),
    ("No quiero recibir llamadas", Language.es),
    ("no deseo más mensajes", Language.es),
    ("Quítenme de la lista", Language.es),
    ("borren mi número", Language.es),
    ("retiro mi consentimiento", Language.es),
    # A Spanish speaker writing English, and the reverse: phrases count in every language.
    ("please unsubscribe me", Language.es),
    ("dame de baja", Language.en),
    ("BAJA", None),
]

NOT_OPT_OUTS = [
    ("", Language.en),
    ("Can you stop by the house on Friday?", Language.en),
    ("I need to cancel the visit, can we move it?", Language.en),
    ("At the end of the month works for me", Language.en),
    ("Call me after five", Language.en),
    ("La baja de precio me interesa", Language.es),
    ("Quiero cancelar la visita del viernes", Language.es),
    ("No, llamar mañana está bien", Language.es),
    ("Llámeme mañana por favor", Language.es),
    ("Sí, me interesa el piso", Language.es),
    # A Spanish word alone is only a keyword for a Spanish-speaking lead.
    ("alto", Language.en),
]


@pytest.mark.parametrize(("text", "language"), OPT_OUTS)
def test_opt_out(text: str, language: Language | None) -> None:
    assert is_opt_out(text, language)


@pytest.mark.parametrize(("text", "language"), NOT_OPT_OUTS)
def test_not_opt_out(text: str, language: Language | None) -> None:
    assert not is_opt_out(text, language)
