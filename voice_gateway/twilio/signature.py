"""X-Twilio-Signature: is this request from Twilio, for the URL Twilio called?

Twilio signs `base64(HMAC-SHA1(auth token, URL + every form field sorted))` with the URL
exactly as it requested it. Behind a TLS proxy the app sees `http://10.0.0.5:8000/...`,
so the public URL is rebuilt first (a pure function): from PUBLIC_HOST when it is set
(production requires it, so forwarded headers are then never trusted), else from
X-Forwarded-Proto / X-Forwarded-Host / Host, keeping the path and query byte for byte.
A WebSocket upgrade is signed over its `wss://` URL with no parameters.

The HMAC itself is twilio-python's `RequestValidator` (it also tries the URL with and
without the default port, as Twilio's own signing is inconsistent about it). Refusals
are logged with their reason and the URL, never the auth token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection
from twilio.request_validator import (
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from voice_gateway.config import GatewaySettings, get_settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"
_SECURE = frozenset({"https", "wss"})
_BAD_HOST_CHARS = frozenset(" /\\?#@\t\r\n")


class SignatureError(Exception):
    """A request that does not prove it came from Twilio; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the public URL (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestAddress:
    """What a request says about where it was sent, before any proxy is believed."""

    scheme: str
    host: str | None
    #: The path as sent (still percent-encoded) and the query without its "?".
    path: str
    query: str = ""
    forwarded_proto: str | None = None
    forwarded_host: str | None = None


def _first(value: str | None) -> str | None:
    """The original client's entry of a header proxies append to ("https, http")."""
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def _host_ok(host: str | None) -> bool:
    return bool(host) and not any(ch in _BAD_HOST_CHARS for ch in host or "")


def public_base(address: RequestAddress, *, configured: str | None, websocket: bool) -> str:
    """`scheme://host[:port]` Twilio used (or must use) to reach us.

    `configured` is GatewaySettings.public_http_base / public_ws_base; when set it wins
    over every header. Otherwise the proxy's X-Forwarded-* headers, then Host; https
    becomes wss for a socket and wss https for a webhook.
    """
    if configured:
        return configured.rstrip("/")
    proto = (_first(address.forwarded_proto) or address.scheme or "http").lower()
    secure = proto in _SECURE
    forwarded_host = _first(address.forwarded_host)
    host = forwarded_host if _host_ok(forwarded_host) else address.host
    if not _host_ok(host):
        raise SignatureError("request has no usable Host header to rebuild its URL from")
    schemes = ("wss", "ws") if websocket else ("https", "http")
    return f"{schemes[0] if secure else schemes[1]}://{host}"


def public_url(address: RequestAddress, *, configured: str | None, websocket: bool) -> str:
    """The absolute URL Twilio requested: public base + path + query, exactly as sent."""
    base = public_base(address, configured=configured, websocket=websocket)
    return base + address.path + (f"?{address.query}" if address.query else "")


def address_of(conn: HTTPConnection) -> RequestAddress:
    """The `RequestAddress` of a Starlette request or WebSocket (raw path and query)."""
    scope = conn.scope
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope.get("path", "/")
    return RequestAddress(
        scheme=str(scope.get("scheme", "http")),
        host=conn.headers.get("host"),
        path=path.split("?", 1)[0],
        query=bytes(scope.get("query_string", b"")).decode("latin-1"),
        forwarded_proto=conn.headers.get("x-forwarded-proto"),
        forwarded_host=conn.headers.get("x-forwarded-host"),
    )


# -- checking --------------------------------------------------------------------------


class _Params(dict[str, list[str]]):
    """Form fields with repeats kept, in the shape `RequestValidator` reads (`getlist`)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


def _params(fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> _Params:
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    grouped = _Params()
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def check(
    *,
    auth_token: str,
    url: str,
    fields: Mapping[str, str] | Iterable[tuple[str, str]],
    signature: str | None,
    algorithm: str | None = None,
) -> None:
    """Raise `SignatureError` unless `signature` signs `url` and `fields` with the token.

    A WebSocket upgrade passes its `wss://` URL and no fields.
    """
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    if not auth_token:
        raise SignatureError("TWILIO_AUTH_TOKEN is not set, so no signature can be checked")
    validator = RequestValidator(auth_token)
    if not validator.validate(url, _params(fields), signature, algorithm):
        raise SignatureError(f"signature does not match {url}")


def verify_connection(
    conn: HTTPConnection,
    settings: GatewaySettings,
    *,
    fields: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    websocket: bool = False,
) -> None:
    """Check a webhook request (with its form fields) or a WebSocket upgrade.

    Does nothing when TWILIO_VALIDATE_SIGNATURES is off (development only).
    """
    if not settings.twilio_validate_signatures:
        return
    configured = settings.public_ws_base if websocket else settings.public_http_base
    url = public_url(address_of(conn), configured=configured, websocket=websocket)
    token = settings.twilio_auth_token
    check(
        auth_token=token.get_secret_value() if token is not None else "",
        url=url,
        fields=fields,
        signature=conn.headers.get(SIGNATURE_HEADER),
        algorithm=get_signature_algorithm(conn.headers.get(SIGNATURE_SETTINGS_HEADER)),
    )


async def twilio_form(
    request: Request, settings: Annotated[GatewaySettings, Depends(get_settings)]
) -> dict[str, str]:
    """FastAPI dependency: the webhook's form fields, once its signature checks out.

    A bad or missing signature is a 403 with no detail for the sender; the log line
    says why, for whoever is setting up the number.
    """
    form = await request.form()
    pairs = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    try:
        verify_connection(request, settings, fields=pairs)
    except SignatureError as exc:
        log.warning("refused Twilio webhook %s: %s", request.url.path, exc.reason)
        raise HTTPException(status_code=403, detail="invalid Twilio signature") from None
    return dict(pairs)


TwilioForm = Annotated[dict[str, str], Depends(twilio_form)]
