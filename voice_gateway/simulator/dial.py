"""Ringing the server as Twilio does: the signed voice webhook and the TwiML it returns.

Twilio POSTs `/twilio/voice` with the call's form fields and an X-Twilio-Signature over
the public URL it called; the answer is TwiML whose `<Connect><Stream url>` names the
media WebSocket and whose `<Parameter>`s go back in the stream's `start` message. The
simulator reaches the server at its private address (http://127.0.0.1:8000) but signs
with the public one, as a load balancer in front of the gateway would have it, and says
so in X-Forwarded-Proto/Host for servers that rebuild the URL from those headers.

The address arithmetic and the TwiML reading are pure functions; `ring` is the one
network call.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httpx
from twilio.request_validator import RequestValidator

VOICE_PATH: Final = "/twilio/voice"
SIGNATURE_HEADER: Final = "X-Twilio-Signature"
#: Twilio refuses TwiML over 64 kB (error 11750); more is not a TwiML answer.
MAX_TWIML_BYTES: Final = 64 * 1000
API_VERSION: Final = "2010-04-01"


class DialError(Exception):
    """The call could not be set up; `refused` is True when the server answered with
    TwiML that ends the call (over capacity, unknown number) rather than failing."""

    def __init__(self, reason: str, *, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


def check_number(number: str, what: str, *, anonymous_ok: bool = False) -> None:
    """Refuse what Twilio would never send: E.164 is + and 8–15 digits. A caller may
    also be "anonymous" or "unknown" (withheld numbers), which a server must handle."""
    if anonymous_ok and number in ("anonymous", "unknown"):
        return
    digits = number[1:]
    if not (number.startswith("+") and digits.isascii() and digits.isdigit()):
        raise DialError(f"{what} must be an E.164 number like +34910000001, not {number!r}")
    if not 8 <= len(digits) <= 15:
        raise DialError(f"{what} must have 8 to 15 digits, not {len(digits)}")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped id: two letters and 32 hex digits (CA… calls, MZ… streams)."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Address:
    """Where the simulator connects (`base`) and the public URLs it signs (`public`)."""

    base: str
    public: str

    @classmethod
    def of(cls, base_url: str, public_host: str | None = None) -> Address:
        """`base_url` is http(s)://host[:port]; `public_host` is PUBLIC_HOST's value
        (voice.example.com = https, http://… = plain), or None for the base itself."""
        parts = urlsplit(base_url.strip())
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.path.strip("/")
            or parts.query
        ):
            raise DialError(f"the server URL must be http(s)://host[:port], not {base_url!r}")
        base = f"{parts.scheme}://{parts.netloc}"
        if not public_host or not public_host.strip():
            return cls(base, base)
        host = public_host.strip().rstrip("/")
        if not host.startswith(("http://", "https://")):
            host = f"https://{host}"
        public = urlsplit(host)
        if not public.netloc or public.path or public.query:
            raise DialError(f"the public host is a host name with an optional port: {host!r}")
        return cls(base, f"{public.scheme}://{public.netloc}")

    @property
    def public_is_private_base(self) -> bool:
        return self.public == self.base

    @property
    def voice_url(self) -> str:
        return self.base + VOICE_PATH

    @property
    def signed_voice_url(self) -> str:
        return self.public + VOICE_PATH

    def socket_url(self, stream_url: str) -> str:
        """Where to open the stream named `stream_url`: its path, on our base address."""
        parts = urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = urlsplit(stream_url).path or "/"
        return f"{scheme}://{parts.netloc}{path}"

    def forwarded_headers(self) -> dict[str, str]:
        """What a TLS proxy in front of the server would add, when there is one."""
        if self.public_is_private_base:
            return {}
        public = urlsplit(self.public)
        return {"X-Forwarded-Proto": public.scheme, "X-Forwarded-Host": public.netloc}


def sign(auth_token: str | None, url: str, params: Mapping[str, str]) -> dict[str, str]:
    """The X-Twilio-Signature header for `url` and form `params` (none without a token)."""
    if not auth_token:
        return {}
    return {SIGNATURE_HEADER: RequestValidator(auth_token).compute_signature(url, dict(params))}


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """The `<Connect><Stream>` of the server's answer."""

    url: str
    parameters: Mapping[str, str] = field(default_factory=dict)


def read_twiml(text: str) -> StreamTarget:
    """The stream to open from a TwiML answer, or `DialError(refused=True)` with what
    the server would have said to the caller when the answer ends the call instead."""
    if len(text.encode("utf-8")) > MAX_TWIML_BYTES:
        raise DialError(f"TwiML answer larger than {MAX_TWIML_BYTES} bytes")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise DialError("TwiML answer carries a DTD; Twilio's never does")
    try:
        # Our own server's answer, size-capped and without a DTD (so no entity tricks).
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise DialError(f"TwiML answer is not XML: {exc}") from None
    if root.tag != "Response":
        raise DialError(f"TwiML answer's root is <{root.tag}>, not <Response>")
    stream = root.find("./Connect/Stream")
    if stream is None:
        said = " ".join((say.text or "").strip() for say in root.iter("Say")).strip()
        verbs = ", ".join(f"<{child.tag}>" for child in root) or "nothing"
        detail = f'said "{said}"' if said else f"answered {verbs}"
        raise DialError(f"the server ended the call: {detail}", refused=True)
    url = stream.get("url", "")
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise DialError(f"<Stream url> must be wss:// (ws:// locally), not {url!r}")
    if parts.query:
        raise DialError("<Stream url> carries a query string, which Twilio refuses")
    parameters: dict[str, str] = {}
    for parameter in stream.findall("Parameter"):
        name = parameter.get("name")
        if not name:
            raise DialError("<Parameter> without a name")
        parameters[name] = parameter.get("value", "")
    return StreamTarget(url, parameters)


def webhook_fields(
    *, call_sid: str, account_sid: str, from_number: str, to_number: str
) -> dict[str, str]:
    """The form Twilio posts for a ringing inbound call (the fields a server reads)."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "Caller": from_number,
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
    }


async def ring(
    http: httpx.AsyncClient,
    address: Address,
    fields: Mapping[str, str],
    *,
    auth_token: str | None,
    timeout_s: float,
) -> StreamTarget:
    """POST the voice webhook as Twilio would and read the stream from its TwiML."""
    headers = {
        "User-Agent": "TwilioProxy/1.1",
        **address.forwarded_headers(),
        **sign(auth_token, address.signed_voice_url, fields),
    }
    try:
        response = await http.post(
            address.voice_url, data=dict(fields), headers=headers, timeout=timeout_s
        )
    except httpx.TimeoutException:
        raise DialError(f"the voice webhook did not answer within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise DialError(f"the voice webhook failed: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise DialError(f"the voice webhook answered HTTP {response.status_code}")
    return read_twiml(response.text)
