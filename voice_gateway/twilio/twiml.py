"""The TwiML documents the gateway answers Twilio with, in Spanish or English.

Built with twilio-python's `VoiceResponse`, so escaping and attribute names are the
SDK's, and checked against Twilio's limits before they leave: a whole response stays
under 64 kB (error 11750), a `<Parameter>` name plus value under 500 characters, a
`<Stream>` URL is ws(s) with no query string (Twilio refuses one; parameters go in
`<Parameter>`s). Every document that ends a call ends with `<Hangup/>`, so nothing
after it leaves the caller in dead air.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

from crm.enums import Language

MAX_TWIML_BYTES: Final = 64 * 1000
#: `twiml=` given inline to the REST API (hang-up, transfer) must stay under this.
MAX_INLINE_TWIML_CHARS: Final = 4000
MAX_PARAMETER_CHARS: Final = 500
DEFAULT_DIAL_TIMEOUT_S: Final = 30

#: `<Say language>` tags Twilio's standard voices speak; others fall back by language.
SAY_TAGS: Final = frozenset(
    {"es-ES", "es-MX", "es-US", "en-US", "en-GB", "en-AU", "en-CA", "en-IN"}
)
_DEFAULT_TAG: Final[Mapping[Language, str]] = {Language.es: "es-US", Language.en: "en-US"}


class TwimlError(ValueError):
    """A document that Twilio would refuse; a bug in what we were asked to build."""


class Phrase(StrEnum):
    busy = "busy"
    not_in_service = "not_in_service"
    unavailable = "unavailable"
    transferring = "transferring"


PHRASES: Final[Mapping[Phrase, Mapping[Language, str]]] = {
    Phrase.busy: {
        Language.es: "Gracias por llamar. En este momento todas nuestras líneas están "
        "ocupadas. Por favor, vuelva a llamar en unos minutos.",
        Language.en: "Thank you for calling. All our lines are busy right now. "
        "Please call again in a few minutes.",
    },
    Phrase.not_in_service: {
        Language.es: "El número al que ha llamado no está en servicio.",
        Language.en: "The number you have called is not in service.",
    },
    Phrase.unavailable: {
        Language.es: "Lo sentimos, no podemos atender su llamada en este momento. "
        "Por favor, inténtelo más tarde.",
        Language.en: "Sorry, we cannot take your call right now. Please try again later.",
    },
    Phrase.transferring: {
        Language.es: "Un momento, le comunico con un asesor.",
        Language.en: "One moment, I am connecting you with an agent.",
    },
}


def language_of(locale: str | Language | None) -> Language:
    """The phrase language for a broker locale or lead language ("es-CL" → es)."""
    base = str(locale or "").strip()[:2].lower()
    return Language.en if base == Language.en.value else Language.es


def say_tag(locale: str | Language | None) -> str:
    """The `<Say language>` for `locale`: itself when Twilio speaks it, else a default."""
    text = str(locale or "").strip().replace("_", "-")
    if len(text) == 5:
        tag = f"{text[:2].lower()}-{text[3:].upper()}"
        if tag in SAY_TAGS:
            return tag
    return _DEFAULT_TAG[language_of(locale)]


def phrase(name: Phrase, locale: str | Language | None) -> str:
    return PHRASES[name][language_of(locale)]


def _finish(response: VoiceResponse) -> str:
    xml: str = response.to_xml()
    size = len(xml.encode("utf-8"))
    if size > MAX_TWIML_BYTES:
        raise TwimlError(f"TwiML of {size} bytes exceeds Twilio's {MAX_TWIML_BYTES}")
    return xml


def _absolute_http(url: str | None, what: str) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise TwimlError(f"{what} must be an absolute http(s) URL, not {url!r}")


def _say(response: VoiceResponse, text: str, locale: str | Language | None) -> None:
    response.say(text, language=say_tag(locale))


def connect_stream(
    *,
    ws_url: str,
    call_id: int,
    token: str,
    status_callback: str | None = None,
    action: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """`<Connect><Stream>` to our media socket, carrying the call id and its token.

    `action` (optional) is requested when the stream ends; without it the `<Hangup/>`
    that follows ends the call, so a stream that could not open is never dead air.
    """
    parts = urlsplit(ws_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise TwimlError(f"the stream URL must be wss:// (ws:// locally), not {ws_url!r}")
    if parts.query or parts.fragment:
        raise TwimlError("the stream URL cannot carry a query string; use <Parameter>s")
    _absolute_http(status_callback, "the stream status callback")
    _absolute_http(action, "the <Connect> action")
    values = {"call_id": str(call_id), "token": token, **(parameters or {})}
    response = VoiceResponse()
    connect = response.connect(action=action, method="POST" if action else None)
    stream = connect.stream(
        url=ws_url,
        status_callback=status_callback,
        status_callback_method="POST" if status_callback else None,
    )
    for name, value in values.items():
        if not name or len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise TwimlError(f"<Parameter> {name[:40]!r} must be named and under 500 characters")
        stream.parameter(name=name, value=value)
    response.hangup()
    return _finish(response)


def say_and_hang_up(text: str, locale: str | Language | None) -> str:
    response = VoiceResponse()
    _say(response, text, locale)
    response.hangup()
    return _finish(response)


def refuse_busy(locale: str | Language | None) -> str:
    """Over capacity: tell the caller, in the broker's language, and hang up."""
    return say_and_hang_up(phrase(Phrase.busy, locale), locale)


def not_in_service() -> str:
    """A number no broker owns: we cannot know the language, so both are said."""
    response = VoiceResponse()
    _say(response, PHRASES[Phrase.not_in_service][Language.es], Language.es)
    _say(response, PHRASES[Phrase.not_in_service][Language.en], Language.en)
    response.hangup()
    return _finish(response)


def unavailable(locale: str | Language | None) -> str:
    """We cannot take the call now (a fault on our side): apologise and hang up."""
    return say_and_hang_up(phrase(Phrase.unavailable, locale), locale)


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return _finish(response)


def transfer(
    *,
    to_number: str,
    caller_id: str | None = None,
    locale: str | Language | None = None,
    announce: str | None = None,
    timeout_s: int = DEFAULT_DIAL_TIMEOUT_S,
) -> str:
    """Say `announce` (default: "one moment…"), then `<Dial>` `to_number`.

    `caller_id` must be a number Twilio lets the account present (the broker's Twilio
    number); unset, the caller's own number shows. Short enough for REST `twiml=`.
    """
    if not to_number.strip():
        raise TwimlError("a transfer needs a number to dial")
    if not 5 <= timeout_s <= 600:
        raise TwimlError("a <Dial> timeout must be 5..600 seconds")
    response = VoiceResponse()
    _say(
        response, announce if announce is not None else phrase(Phrase.transferring, locale), locale
    )
    response.dial(to_number.strip(), caller_id=caller_id, timeout=timeout_s)
    response.hangup()
    xml = _finish(response)
    if len(xml) > MAX_INLINE_TWIML_CHARS:
        raise TwimlError(f"transfer TwiML of {len(xml)} characters exceeds the REST limit")
    return xml
