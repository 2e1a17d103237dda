"""X-Twilio-Signature: Twilio's own test vector, the public URL behind proxies (pure), the
WebSocket upgrade URL, and the FastAPI dependency that answers 403."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from twilio.request_validator import RequestValidator

from voice_gateway.config import GatewaySettings, get_settings
from voice_gateway.twilio.signature import (
    RequestAddress,
    SignatureError,
    TwilioForm,
    address_of,
    check,
    public_base,
    public_url,
    verify_connection,
)

# twilio-python's test vector (protocols.md §3).
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="

TOKEN = "auth-token-under-test-0123456789"


def sign(url: str, params: dict[str, str] | None = None, token: str = TOKEN) -> str:
    signature: str = RequestValidator(token).compute_signature(url, params or {})
    return signature


# -- the HMAC ----------------------------------------------------------------------------


def test_twilios_test_vector() -> None:
    assert sign(VECTOR_URL, VECTOR_PARAMS, VECTOR_TOKEN) == VECTOR_SIGNATURE
    check(auth_token=VECTOR_TOKEN, url=VECTOR_URL, fields=VECTOR_PARAMS, signature=VECTOR_SIGNATURE)


def test_fields_may_come_as_pairs() -> None:
    check(
        auth_token=VECTOR_TOKEN,
        url=VECTOR_URL,
        fields=list(VECTOR_PARAMS.items()),
        signature=VECTOR_SIGNATURE,
    )


def test_a_changed_field_breaks_the_signature() -> None:
    tampered = VECTOR_PARAMS | {"Digits": "9999"}
    with pytest.raises(SignatureError) as exc:
        check(auth_token=VECTOR_TOKEN, url=VECTOR_URL, fields=tampered, signature=VECTOR_SIGNATURE)
    assert exc.value.reason == f"signature does not match {VECTOR_URL}"


def test_a_changed_url_breaks_the_signature() -> None:
    with pytest.raises(SignatureError):
        check(
            auth_token=VECTOR_TOKEN,
            url=VECTOR_URL.replace("foo=1", "foo=2"),
            fields=VECTOR_PARAMS,
            signature=VECTOR_SIGNATURE,
        )


def test_another_accounts_token_does_not_validate() -> None:
    with pytest.raises(SignatureError):
        check(auth_token=TOKEN, url=VECTOR_URL, fields=VECTOR_PARAMS, signature=VECTOR_SIGNATURE)


def test_missing_signature() -> None:
    with pytest.raises(SignatureError) as exc:
        check(auth_token=TOKEN, url=VECTOR_URL, fields={}, signature=None)
    assert exc.value.reason == "missing X-Twilio-Signature header"


def test_no_auth_token_configured() -> None:
    with pytest.raises(SignatureError) as exc:
        check(auth_token="", url=VECTOR_URL, fields={}, signature="x")
    assert "TWILIO_AUTH_TOKEN is not set" in exc.value.reason


def test_repeated_fields_are_all_signed() -> None:
    url = "https://voice.example.com/twilio/voice"
    pairs = [("To", "+1"), ("Tag", "b"), ("Tag", "a")]
    signature = RequestValidator(TOKEN).compute_signature(url, _Multi(pairs))
    check(auth_token=TOKEN, url=url, fields=pairs, signature=signature)
    with pytest.raises(SignatureError):
        check(auth_token=TOKEN, url=url, fields=pairs[:2], signature=signature)


class _Multi(dict[str, list[str]]):
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        for k, v in pairs:
            self.setdefault(k, []).append(v)

    def getlist(self, name: str) -> list[str]:
        return self[name]


def test_default_port_may_or_may_not_be_in_the_signed_url() -> None:
    signature = sign("https://voice.example.com/twilio/voice", {"A": "1"})
    check(
        auth_token=TOKEN,
        url="https://voice.example.com:443/twilio/voice",
        fields={"A": "1"},
        signature=signature,
    )


def test_websocket_upgrade_is_signed_over_the_wss_url_without_params() -> None:
    url = "wss://voice.example.com/twilio/media"
    check(auth_token=TOKEN, url=url, fields=(), signature=sign(url))
    with pytest.raises(SignatureError):
        check(
            auth_token=TOKEN,
            url="https://voice.example.com/twilio/media",
            fields=(),
            signature=sign(url),
        )


# -- the public URL (pure) -----------------------------------------------------------------


def addr(**kwargs: Any) -> RequestAddress:
    values: dict[str, Any] = {"scheme": "http", "host": "10.0.0.5:8000", "path": "/twilio/voice"}
    values.update(kwargs)
    return RequestAddress(**values)


def test_configured_public_host_wins_over_every_header() -> None:
    spoofed = addr(forwarded_proto="http", forwarded_host="evil.example", query="a=1")
    assert (
        public_url(spoofed, configured="https://voice.example.com", websocket=False)
        == "https://voice.example.com/twilio/voice?a=1"
    )
    assert (
        public_url(spoofed, configured="wss://voice.example.com", websocket=True)
        == "wss://voice.example.com/twilio/voice?a=1"
    )


@pytest.mark.parametrize(
    ("kwargs", "websocket", "expected"),
    [
        ({}, False, "http://10.0.0.5:8000"),
        ({}, True, "ws://10.0.0.5:8000"),
        ({"forwarded_proto": "https"}, False, "https://10.0.0.5:8000"),
        ({"forwarded_proto": "https"}, True, "wss://10.0.0.5:8000"),
        ({"forwarded_proto": "wss"}, True, "wss://10.0.0.5:8000"),
        ({"forwarded_proto": "wss"}, False, "https://10.0.0.5:8000"),
        ({"forwarded_proto": "HTTPS, http"}, True, "wss://10.0.0.5:8000"),
        ({"forwarded_host": "voice.example.com"}, False, "http://voice.example.com"),
        (
            {"forwarded_proto": "https", "forwarded_host": "voice.example.com, lb.internal"},
            True,
            "wss://voice.example.com",
        ),
        ({"forwarded_host": "bad host/x"}, False, "http://10.0.0.5:8000"),
        ({"scheme": "https"}, True, "wss://10.0.0.5:8000"),
        ({"scheme": "wss", "host": "voice.example.com"}, True, "wss://voice.example.com"),
    ],
)
def test_public_base_from_proxy_headers(
    kwargs: dict[str, Any], websocket: bool, expected: str
) -> None:
    assert public_base(addr(**kwargs), configured=None, websocket=websocket) == expected


def test_path_and_query_are_kept_exactly() -> None:
    address = addr(path="/twilio/voice%20x/%C3%B1", query="b=2&a=%2B1&a=3", forwarded_proto="https")
    assert (
        public_url(address, configured=None, websocket=False)
        == "https://10.0.0.5:8000/twilio/voice%20x/%C3%B1?b=2&a=%2B1&a=3"
    )


def test_no_host_at_all() -> None:
    with pytest.raises(SignatureError) as exc:
        public_base(addr(host=None), configured=None, websocket=False)
    assert "Host" in exc.value.reason


def request_with(
    path: bytes, query: bytes, headers: dict[str, str], scheme: str = "http"
) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": scheme,
        "path": path.decode(),
        "raw_path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_address_of_a_request_keeps_the_raw_path() -> None:
    request = request_with(
        b"/twilio/voice%21",
        b"x=%2F",
        {"Host": "10.0.0.5:8000", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "v.example"},
    )
    assert address_of(request) == RequestAddress(
        scheme="http",
        host="10.0.0.5:8000",
        path="/twilio/voice%21",
        query="x=%2F",
        forwarded_proto="https",
        forwarded_host="v.example",
    )


def settings(**values: Any) -> GatewaySettings:
    base: dict[str, Any] = {
        "_env_file": None,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "PUBLIC_HOST": None,
        "TWILIO_VALIDATE_SIGNATURES": "true",
    }
    base.update(values)
    return GatewaySettings(**base)


def test_verify_connection_for_a_websocket_behind_a_proxy() -> None:
    request = request_with(
        b"/twilio/media",
        b"",
        {"Host": "10.0.0.5:8000", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "v.example"},
    )
    good = sign("wss://v.example/twilio/media")
    request.scope["headers"].append((b"x-twilio-signature", good.encode()))
    verify_connection(request, settings(), websocket=True)
    with pytest.raises(SignatureError):
        verify_connection(request, settings(PUBLIC_HOST="other.example"), websocket=True)
    verify_connection(
        request,
        settings(PUBLIC_HOST="v.example", TWILIO_VALIDATE_SIGNATURES="true"),
        websocket=True,
    )


def test_verify_connection_does_nothing_when_validation_is_off() -> None:
    request = request_with(b"/twilio/media", b"", {"Host": "x"})
    verify_connection(request, settings(TWILIO_VALIDATE_SIGNATURES="false"), websocket=True)


# -- the FastAPI dependency ----------------------------------------------------------------


def app_with(configured: GatewaySettings) -> FastAPI:
    app = FastAPI()

    @app.post("/hook")
    async def hook(form: TwilioForm) -> dict[str, str]:
        return form

    app.dependency_overrides[get_settings] = lambda: configured
    return app


@pytest.fixture
async def hook_client() -> AsyncIterator[httpx.AsyncClient]:
    configured = settings(PUBLIC_HOST="voice.example.com")
    transport = httpx.ASGITransport(app=app_with(configured))
    async with httpx.AsyncClient(transport=transport, base_url="http://internal:8000") as client:
        yield client


FORM = {"CallSid": "CA1", "From": "+14158675309", "To": "+18005551212"}
PUBLIC = "https://voice.example.com/hook"


async def test_signed_webhook_passes_its_fields(hook_client: httpx.AsyncClient) -> None:
    response = await hook_client.post(
        "/hook", data=FORM, headers={"X-Twilio-Signature": sign(PUBLIC, FORM)}
    )
    assert response.status_code == 200
    assert response.json() == FORM


async def test_unsigned_webhook_is_403(
    hook_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voice_gateway.twilio.signature"):
        response = await hook_client.post("/hook", data=FORM)
    assert response.status_code == 403
    assert "missing X-Twilio-Signature header" in caplog.text


async def test_badly_signed_webhook_is_403_and_the_log_has_no_token(
    hook_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voice_gateway.twilio.signature"):
        response = await hook_client.post(
            "/hook",
            data=FORM | {"To": "+15550000000"},
            headers={"X-Twilio-Signature": sign(PUBLIC, FORM)},
        )
    assert response.status_code == 403
    assert f"signature does not match {PUBLIC}" in caplog.text
    assert TOKEN not in caplog.text


async def test_signature_over_the_internal_url_is_refused(hook_client: httpx.AsyncClient) -> None:
    internal = "http://internal:8000/hook"
    response = await hook_client.post(
        "/hook", data=FORM, headers={"X-Twilio-Signature": sign(internal, FORM)}
    )
    assert response.status_code == 403


async def test_validation_off_accepts_unsigned_webhooks() -> None:
    transport = httpx.ASGITransport(app=app_with(settings(TWILIO_VALIDATE_SIGNATURES="false")))
    async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
        response = await client.post("/hook", data=FORM)
    assert response.status_code == 200


async def test_validation_on_without_a_token_refuses_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configured = settings(TWILIO_AUTH_TOKEN=None)
    transport = httpx.ASGITransport(app=app_with(configured))
    async with httpx.AsyncClient(transport=transport, base_url="http://internal") as client:
        with caplog.at_level(logging.WARNING, logger="voice_gateway.twilio.signature"):
            response = await client.post(
                "/hook", data=FORM, headers={"X-Twilio-Signature": "anything"}
            )
    assert response.status_code == 403
    assert "TWILIO_AUTH_TOKEN is not set" in caplog.text
