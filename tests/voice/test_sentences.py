"""Sentence splitting, fed whole, character by character and in random chunks."""

from __future__ import annotations

import random

import pytest

from voice_gateway.sentences import SentenceSplitter


def _whole(text: str, **options: int) -> list[str]:
    splitter = SentenceSplitter(**options)
    return splitter.push(text) + splitter.flush()


def _by_char(text: str, **options: int) -> list[str]:
    splitter = SentenceSplitter(**options)
    out = [sentence for ch in text for sentence in splitter.push(ch)]
    return out + splitter.flush()


def _by_chunks(text: str, seed: int, **options: int) -> list[str]:
    rng = random.Random(seed)
    splitter = SentenceSplitter(**options)
    out: list[str] = []
    pos = 0
    while pos < len(text):
        size = rng.randint(1, 12)  # LLM tokens are 1-12 characters
        out += splitter.push(text[pos : pos + size])
        pos += size
    return out + splitter.flush()


def split(text: str, **options: int) -> list[str]:
    """The sentences of `text`, checked to be the same however the text arrives."""
    whole = _whole(text, **options)
    assert _by_char(text, **options) == whole
    for seed in range(5):
        assert _by_chunks(text, seed, **options) == whole
    return whole


CASES_ES = [
    ("Hola. ¿En qué le puedo ayudar?", ["Hola.", "¿En qué le puedo ayudar?"]),
    ("¡Perfecto! Lo agendo.", ["¡Perfecto!", "Lo agendo."]),
    ("¿Le parece? ¡Genial!", ["¿Le parece?", "¡Genial!"]),
    ("El Sr. García y la Sra. Pérez llegan hoy.", ["El Sr. García y la Sra. Pérez llegan hoy."]),
    ("La Dra. Soto vive en Av. Italia 1234.", ["La Dra. Soto vive en Av. Italia 1234."]),
    ("Cuesta 3.5 millones. Es barato.", ["Cuesta 3.5 millones.", "Es barato."]),
    ("Vale 250.000 € al año. ¿Le sirve?", ["Vale 250.000 € al año.", "¿Le sirve?"]),
    ("La visita es a las 10:30. Nos vemos.", ["La visita es a las 10:30.", "Nos vemos."]),
    ("Escriba a juan.perez@casa.cl. Gracias.", ["Escriba a juan.perez@casa.cl.", "Gracias."]),
    ("Vea www.casas.cl/venta?id=3. Ahí está.", ["Vea www.casas.cl/venta?id=3.", "Ahí está."]),
    ("Es el depto. No. 5 del edificio.", ["Es el depto. No. 5 del edificio."]),
    ("¿Crédito? Creo que no. Pero puedo.", ["¿Crédito?", "Creo que no.", "Pero puedo."]),
    ("Casas, deptos., etc. Lo que quiera.", ["Casas, deptos., etc.", "Lo que quiera."]),
    ("Cerca del metro, colegios, etc. y parques.", ["Cerca del metro, colegios, etc. y parques."]),
    ("Bueno… déjeme ver. Sí, hay una.", ["Bueno… déjeme ver.", "Sí, hay una."]),
    ("Mmm... Ya sé. Es la casa azul.", ["Mmm...", "Ya sé.", "Es la casa azul."]),
    ("Vive en EE.UU. Pero viene pronto.", ["Vive en EE.UU.", "Pero viene pronto."]),
    ("Hable con J. Pérez mañana.", ["Hable con J. Pérez mañana."]),
    ("Me dijo «es perfecta.» Y la compró.", ["Me dijo «es perfecta.»", "Y la compró."]),
    ("Tengo dos:\n1. Casa en Ñuñoa\n2. Depto en Providencia", [
        "Tengo dos:", "1. Casa en Ñuñoa", "2. Depto en Providencia"
    ]),
    ("Opciones: 1. Casa amplia", ["Opciones: 1. Casa amplia"]),
]  # fmt: skip

CASES_EN = [
    ("Hello! How can I help you today?", ["Hello!", "How can I help you today?"]),
    ("Mr. Smith and Dr. Jones are here.", ["Mr. Smith and Dr. Jones are here."]),
    ("It costs $1,200.50 a month. Deal?", ["It costs $1,200.50 a month.", "Deal?"]),
    ("Call at 10 a.m. tomorrow.", ["Call at 10 a.m. tomorrow."]),
    ("See you at 10 a.m. Bye.", ["See you at 10 a.m.", "Bye."]),
    ("Houses, e.g. the blue one, sell fast.", ["Houses, e.g. the blue one, sell fast."]),
    ("I live in the U.S. It is nice.", ["I live in the U.S.", "It is nice."]),
    ("The U.S. market is hot.", ["The U.S. market is hot."]),
    ("Unit No. 12 is free. No. It is not.", ["Unit No. 12 is free.", "No.", "It is not."]),
    ('She said "great." Then left.', ['She said "great."', "Then left."]),
    ("Wait... what? Really?!", ["Wait... what?", "Really?!"]),  # a pause, not an end
    ("Version 2.0 is out. Read docs.example.com now.", [
        "Version 2.0 is out.", "Read docs.example.com now."
    ]),
    ("Email me at ana@example.com. Thanks!", ["Email me at ana@example.com.", "Thanks!"]),
    ("It's at 221B Baker St. London.", ["It's at 221B Baker St. London."]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES_ES)
def test_spanish(text: str, expected: list[str]) -> None:
    assert split(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES_EN)
def test_english(text: str, expected: list[str]) -> None:
    assert split(text) == expected


def test_sentences_come_out_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Sí.") == []  # "Sí.5"? wait for one more character
    assert splitter.push(" ") == ["Sí."]  # the first short sentence goes at once
    assert splitter.push("Tengo tres casas") == []
    assert splitter.push("! ¿Cuál") == ["Tengo tres casas!"]
    assert splitter.push(" prefiere?") == []
    assert splitter.flush() == ["¿Cuál prefiere?"]


def test_abbreviation_waits_for_the_next_word_only_when_it_matters() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Vivo en EE.UU. ") == []  # "EE.UU. Pero" or "EE.UU. desde"?
    assert splitter.push("desde 2010. ") == ["Vivo en EE.UU. desde 2010."]


def test_long_first_clause_is_cut_at_a_comma_so_speech_starts_early() -> None:
    text = (
        "Claro, con gusto le ayudo a buscar una propiedad en la zona que usted prefiera, "
        "considerando su presupuesto, el número de dormitorios, la cercanía al metro y a "
        "colegios, y también la posibilidad de financiamiento con crédito hipotecario."
    )
    pieces = split(text)
    assert pieces == [
        "Claro, con gusto le ayudo a buscar una propiedad en la zona que usted prefiera,",
        "considerando su presupuesto, el número de dormitorios, la cercanía al metro y a colegios,",
        "y también la posibilidad de financiamiento con crédito hipotecario.",
    ]
    assert " ".join(pieces) == " ".join(text.split())


def test_commas_inside_numbers_are_not_clause_breaks() -> None:
    text = "The total comes to $1,250,000.00 for the house with a pool and three garages " * 2
    for piece in split(text):
        assert not piece.endswith(("$1,", "250,"))


def test_text_without_any_break_is_cut_at_a_space_past_the_hard_limit() -> None:
    words = "palabra " * 60  # 480 characters, no punctuation at all
    pieces = split(words, max_chars=80, first_max_chars=40, hard_max_chars=120)
    assert all(len(piece) <= 120 for piece in pieces)
    assert all(piece.split() == ["palabra"] * len(piece.split()) for piece in pieces)
    assert " ".join(pieces) == words.strip()


def test_a_huge_unbroken_token_is_cut_anyway() -> None:
    pieces = split("x" * 600, max_chars=80, first_max_chars=40, hard_max_chars=120)
    assert "".join(pieces) == "x" * 600
    assert max(map(len, pieces)) <= 121


def test_min_chars_holds_short_sentences_for_company() -> None:
    assert split("Sí. Claro. La casa tiene tres dormitorios.", min_chars=12) == [
        "Sí. Claro. La casa tiene tres dormitorios."
    ]
    assert split("Sí. Claro.", min_chars=12) == ["Sí. Claro."]  # flush says it anyway
    assert split("Sí. Claro.") == ["Sí.", "Claro."]


def test_nothing_to_say_is_dropped() -> None:
    assert split("Hola. ... ¡! Adiós.") == ["Hola.", "Adiós."]
    assert split("   \n\n  ") == []
    assert split("") == []


def test_whitespace_is_normalised() -> None:
    assert split("  Hola,   ¿cómo\testá?  \n\n Bien.  ") == ["Hola, ¿cómo está?", "Bien."]


def test_flush_resets_for_the_next_reply() -> None:
    splitter = SentenceSplitter(max_chars=60, first_max_chars=30)
    splitter.push("Primera respuesta sin punto")
    assert splitter.flush() == ["Primera respuesta sin punto"]
    assert splitter.flush() == []
    # The next reply gets the short first-piece limit again.
    text = "Segunda respuesta, bastante larga para cortar, con comas"
    assert splitter.push(text) == ["Segunda respuesta, bastante larga para cortar,"]


@pytest.mark.parametrize(
    "options",
    [
        {"min_clause_chars": 0},
        {"first_max_chars": 200, "max_chars": 120},
        {"max_chars": 300, "hard_max_chars": 250},
        {"min_chars": -1},
    ],
)
def test_options_are_checked(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="min_"):
        SentenceSplitter(**options)
