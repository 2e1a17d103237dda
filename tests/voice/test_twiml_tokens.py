"""Per-call tokens (issue, verify, every refusal, with an injected clock) and the TwiML
documents (read back as XML, against Twilio's limits)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from crm.enums import Language
from voice_gateway.config import GatewaySettings
from voice_gateway.twilio import tokens as tokens_module
from voice_gateway.twilio import twiml
from voice_gateway.twilio.tokens import CallClaim, CallTokens, TokenError, TokenProblem
from voice_gateway.twilio.twiml import TwimlError

SECRET = b"s" * 32
T0 = 1_747_216_800.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(ttl_s: int = 300, secret: bytes = SECRET) -> tuple[CallTokens, Clock]:
    clock = Clock()
    return CallTokens(secret=secret, ttl_s=ttl_s, clock=clock), clock


def problem(issuer: CallTokens, token: str | None, **kwargs: Any) -> TokenError:
    with pytest.raises(TokenError) as exc:
        issuer.verify(token, **kwargs)
    return exc.value


# -- tokens ------------------------------------------------------------------------------


def test_a_token_proves_its_call_until_it_expires() -> None:
    issuer, clock = make(ttl_s=300)
    token = issuer.issue(4182)
    claim = CallClaim(call_id=4182, expires_at=int(T0) + 300)
    assert issuer.verify(token) == claim
    assert issuer.verify(token, call_id=4182) == claim
    assert issuer.verify(token, call_id="4182") == claim
    clock.now = T0 + 299.9
    assert issuer.verify(token) == claim


def test_expired() -> None:
    issuer, clock = make(ttl_s=300)
    token = issuer.issue(7)
    clock.now = T0 + 300
    err = problem(issuer, token, call_id=7)
    assert err.problem is TokenProblem.expired
    assert err.reason == "token expired 0 s ago"
    clock.now = T0 + 1000
    assert problem(issuer, token).reason == "token expired 700 s ago"


@pytest.mark.parametrize("other", [8, "8", "", "7 ", "abc", None])
def test_wrong_call(other: object) -> None:
    issuer, _ = make()
    token = issuer.issue(7)
    if other is None:
        assert issuer.verify(token).call_id == 7
        return
    err = problem(issuer, token, call_id=other)
    assert err.problem is TokenProblem.wrong_call
    assert err.reason.startswith("token is for call 7, not")


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "v1.7.1747217100",
        "v2.7.1747217100." + "A" * 43,
        "v1.seven.1747217100." + "A" * 43,
        "v1.7.-5." + "A" * 43,
        "v1.7.1747217100." + "A" * 42,
        "v1.7.1747217100." + "A" * 200,
        "v1..1747217100." + "A" * 43,
        "v1.٧.1747217100." + "A" * 43,
    ],
)
def test_malformed(token: str | None) -> None:
    issuer, _ = make()
    err = problem(issuer, token, call_id=7)
    assert err.problem is TokenProblem.malformed


def test_a_changed_token_is_a_bad_signature() -> None:
    issuer, _ = make()
    token = issuer.issue(7)
    version, call, expiry, signature = token.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert problem(issuer, f"{version}.{call}.{expiry}.{flipped}").problem is (
        TokenProblem.bad_signature
    )
    # Claiming more time, or another call, with the same signature does not work.
    later = f"{version}.{call}.{int(expiry) + 3600}.{signature}"
    assert problem(issuer, later).problem is TokenProblem.bad_signature
    other_call = f"{version}.8.{expiry}.{signature}"
    assert problem(issuer, other_call, call_id=8).problem is TokenProblem.bad_signature
    assert problem(issuer, token.replace(signature, "é" * 43)).problem is (
        TokenProblem.bad_signature
    )


def test_another_secret_does_not_verify() -> None:
    issuer, _ = make(secret=b"a" * 32)
    other, _ = make(secret=b"b" * 32)
    assert problem(other, issuer.issue(7)).problem is TokenProblem.bad_signature


def test_tokens_fit_a_twiml_parameter_and_stay_out_of_repr() -> None:
    issuer, _ = make()
    token = issuer.issue(2**62)
    assert len("token") + len(token) < twiml.MAX_PARAMETER_CHARS
    assert len(token) <= tokens_module.MAX_TOKEN_CHARS
    assert "sss" not in repr(issuer)


def test_nodes_sharing_the_secret_accept_each_others_tokens() -> None:
    settings = GatewaySettings(_env_file=None, CALL_TOKEN_SECRET="k" * 40)
    node_a = tokens_module.from_settings(settings)
    node_b = tokens_module.from_settings(settings)
    assert node_b.verify(node_a.issue(99), call_id=99).call_id == 99
    assert node_a.secret == b"k" * 40
    assert node_a.ttl_s == settings.call_token_ttl_s


def test_without_a_secret_the_process_draws_one() -> None:
    settings = GatewaySettings(_env_file=None, CALL_TOKEN_SECRET=None)
    first = tokens_module.from_settings(settings)
    second = tokens_module.from_settings(settings)
    assert first.secret == second.secret
    assert len(first.secret) == 32
    assert second.verify(first.issue(5)).call_id == 5


def test_issuer_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="empty"):
        CallTokens(secret=b"", ttl_s=10)
    with pytest.raises(ValueError, match="positive"):
        CallTokens(secret=SECRET, ttl_s=0)
    issuer, _ = make()
    with pytest.raises(ValueError, match="non-negative"):
        issuer.issue(-1)


# -- TwiML -------------------------------------------------------------------------------


def parse(xml: str) -> ET.Element:
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    return ET.fromstring(xml)  # noqa: S314 - our own output, not untrusted input


def children(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def test_connect_stream_carries_the_call_and_its_token() -> None:
    xml = twiml.connect_stream(
        ws_url="wss://voice.example.com/twilio/media",
        call_id=4182,
        token="v1.4182.1.sig",
        status_callback="https://voice.example.com/twilio/stream-status",
    )
    root = parse(xml)
    assert children(root) == ["Connect", "Hangup"]
    connect = root.find("Connect")
    assert connect is not None
    assert "action" not in connect.attrib
    stream = connect.find("Stream")
    assert stream is not None
    assert stream.attrib == {
        "url": "wss://voice.example.com/twilio/media",
        "statusCallback": "https://voice.example.com/twilio/stream-status",
        "statusCallbackMethod": "POST",
    }
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert params == {"call_id": "4182", "token": "v1.4182.1.sig"}


def test_connect_stream_with_an_action_and_more_parameters() -> None:
    root = parse(
        twiml.connect_stream(
            ws_url="ws://127.0.0.1:8000/twilio/media",
            call_id=1,
            token="t",
            action="https://voice.example.com/twilio/after-stream",
            parameters={"campaign": "spring & <sale>"},
        )
    )
    connect = root.find("Connect")
    assert connect is not None
    assert connect.attrib == {
        "action": "https://voice.example.com/twilio/after-stream",
        "method": "POST",
    }
    stream = connect.find("Stream")
    assert stream is not None
    assert "statusCallback" not in stream.attrib
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert params["campaign"] == "spring & <sale>"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ws_url": "wss://v.example/twilio/media?call=1"}, "query string"),
        ({"ws_url": "https://v.example/twilio/media"}, "wss://"),
        ({"ws_url": "/twilio/media"}, "wss://"),
        ({"status_callback": "/twilio/stream-status"}, "absolute"),
        ({"action": "ftp://v.example/x"}, "absolute"),
        ({"token": "x" * 495}, "under 500"),
        ({"parameters": {"": "x"}}, "named"),
    ],
)
def test_connect_stream_refuses_what_twilio_would(kwargs: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"ws_url": "wss://v.example/twilio/media", "call_id": 1, "token": "t"}
    values.update(kwargs)
    with pytest.raises(TwimlError, match=message):
        twiml.connect_stream(**values)


@pytest.mark.parametrize(
    ("locale", "tag", "text"),
    [
        ("es", "es-US", "todas nuestras líneas están ocupadas"),
        ("es-ES", "es-ES", "todas nuestras líneas están ocupadas"),
        ("es_mx", "es-MX", "todas nuestras líneas están ocupadas"),
        ("es-CL", "es-US", "todas nuestras líneas están ocupadas"),
        ("en", "en-US", "All our lines are busy"),
        ("en-GB", "en-GB", "All our lines are busy"),
        (Language.en, "en-US", "All our lines are busy"),
        ("fr", "es-US", "todas nuestras líneas están ocupadas"),
        (None, "es-US", "todas nuestras líneas están ocupadas"),
    ],
)
def test_refuse_busy_speaks_the_brokers_language(
    locale: str | Language | None, tag: str, text: str
) -> None:
    root = parse(twiml.refuse_busy(locale))
    assert children(root) == ["Say", "Hangup"]
    say = root.find("Say")
    assert say is not None
    assert say.attrib == {"language": tag}
    assert text in (say.text or "")


def test_not_in_service_says_it_in_both_languages() -> None:
    root = parse(twiml.not_in_service())
    assert children(root) == ["Say", "Say", "Hangup"]
    says = root.findall("Say")
    assert [s.attrib["language"] for s in says] == ["es-US", "en-US"]
    assert "no está en servicio" in (says[0].text or "")
    assert "not in service" in (says[1].text or "")


def test_unavailable_and_hangup() -> None:
    assert children(parse(twiml.unavailable("en"))) == ["Say", "Hangup"]
    assert twiml.hangup() == '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>'


def test_said_text_is_escaped() -> None:
    root = parse(twiml.say_and_hang_up('Tom & Jerry <b>"hi"</b>', "en"))
    say = root.find("Say")
    assert say is not None
    assert say.text == 'Tom & Jerry <b>"hi"</b>'


def test_transfer_dials_with_the_brokers_caller_id() -> None:
    xml = twiml.transfer(to_number=" +34911111111 ", caller_id="+34910000000", locale="es-ES")
    root = parse(xml)
    assert children(root) == ["Say", "Dial", "Hangup"]
    dial = root.find("Dial")
    assert dial is not None
    assert dial.attrib == {"callerId": "+34910000000", "timeout": "30"}
    assert dial.text == "+34911111111"
    say = root.find("Say")
    assert say is not None
    assert say.text == "Un momento, le comunico con un asesor."
    assert len(xml) <= twiml.MAX_INLINE_TWIML_CHARS


def test_transfer_with_an_announcement_of_our_own_and_no_caller_id() -> None:
    root = parse(twiml.transfer(to_number="+15551234567", locale="en", announce="Connecting you."))
    dial = root.find("Dial")
    assert dial is not None
    assert "callerId" not in dial.attrib
    say = root.find("Say")
    assert say is not None
    assert (say.text, say.attrib["language"]) == ("Connecting you.", "en-US")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"to_number": " "}, "number to dial"),
        ({"timeout_s": 2}, "5..600"),
        ({"announce": "x" * 5000}, "REST limit"),
    ],
)
def test_transfer_refuses(kwargs: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"to_number": "+15551234567"}
    values.update(kwargs)
    with pytest.raises(TwimlError, match=message):
        twiml.transfer(**values)


def test_documents_stay_under_64_kb() -> None:
    with pytest.raises(TwimlError, match="exceeds Twilio's 64000"):
        twiml.say_and_hang_up("a" * 64_000, "en")
    assert len(twiml.say_and_hang_up("a" * 60_000, "en")) < twiml.MAX_TWIML_BYTES


def test_every_phrase_exists_in_both_languages() -> None:
    for name in twiml.Phrase:
        for language in Language:
            assert twiml.phrase(name, language).strip()
