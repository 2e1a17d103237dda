"""Gateway metrics: the facade the call session drives, and the `/metrics` scrape."""

from __future__ import annotations

import logging
import math

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from crm.calls.metrics import LatencyError
from voice_gateway import metrics as metrics_module
from voice_gateway.config import GatewaySettings
from voice_gateway.metrics import (
    OTHER,
    STAGE_LABELS,
    TURN_BUCKETS,
    BoundedLabel,
    Direction,
    ErrorKind,
    GatewayMetrics,
    get_metrics,
)

#: A whole reply: caller stops at 1000 ms, first audio leaves at 1720 ms.
FULL = {
    "endpoint": 1000,
    "stt_final": 1150,
    "llm_first_token": 1450,
    "tts_first_byte": 1600,
    "first_audio_sent": 1720,
}


@pytest.fixture
def m() -> GatewayMetrics:
    return GatewayMetrics(process_collectors=False)


def value(m: GatewayMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(f"voiceagent_{name}", labels)
    assert found is not None, f"no sample voiceagent_{name}{labels}"
    return found


# ---------------------------------------------------------------- the facade


def test_fixed_label_series_are_exported_at_zero(m: GatewayMetrics) -> None:
    for kind in ErrorKind:
        assert value(m, "errors_total", kind=kind.value) == 0
    for direction in Direction:
        assert value(m, "calls_started_total", direction=direction.value) == 0
    assert set(STAGE_LABELS) == {
        "endpoint",
        "stt_final",
        "llm_first_token",
        "tts_first_byte",
        "first_audio_sent",
    }
    for stage in STAGE_LABELS:
        assert value(m, "turn_stage_seconds_count", stage=stage) == 0
    assert value(m, "active_calls") == 0
    assert value(m, "barge_ins_total") == 0
    assert value(m, "admission_refusals_total") == 0


def test_calls_started_and_ended_move_the_active_gauge(m: GatewayMetrics) -> None:
    m.call_started()
    m.call_started(Direction.outbound)
    m.call_started("inbound")
    assert m.active_calls == 3
    assert value(m, "active_calls") == 3
    assert value(m, "calls_started_total", direction="inbound") == 2
    assert value(m, "calls_started_total", direction="outbound") == 1

    m.call_ended("caller_hangup", duration_s=42.0)
    m.call_ended("agent_hangup", duration_s=200.0)
    m.call_ended("caller_hangup")
    assert value(m, "active_calls") == 0
    assert value(m, "calls_ended_total", reason="caller_hangup") == 2
    assert value(m, "calls_ended_total", reason="agent_hangup") == 1
    assert value(m, "call_duration_seconds_count") == 2
    assert value(m, "call_duration_seconds_sum") == 242.0
    assert value(m, "call_duration_seconds_bucket", le="60.0") == 1


def test_an_unmatched_call_ended_never_drives_the_gauge_negative(
    m: GatewayMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voice_gateway.metrics"):
        m.call_ended("error")
    assert value(m, "active_calls") == 0
    assert "no call started" in caplog.text
    assert value(m, "calls_ended_total", reason="error") == 1


def test_unknown_direction_is_our_bug(m: GatewayMetrics) -> None:
    with pytest.raises(ValueError, match="sideways"):
        m.call_started("sideways")


def test_a_whole_turn_feeds_the_response_and_every_stage(m: GatewayMetrics) -> None:
    m.observe_turn(FULL)
    assert value(m, "turn_response_seconds_count") == 1
    assert math.isclose(value(m, "turn_response_seconds_sum"), 0.72)
    assert value(m, "turn_response_seconds_bucket", le="0.7") == 0
    assert value(m, "turn_response_seconds_bucket", le="0.8") == 1
    expected = {
        "stt_final": 0.15,
        "llm_first_token": 0.3,
        "tts_first_byte": 0.15,
        "first_audio_sent": 0.12,
    }
    for stage, seconds in expected.items():
        assert value(m, "turn_stage_seconds_count", stage=stage) == 1
        assert math.isclose(value(m, "turn_stage_seconds_sum", stage=stage), seconds)


def test_a_turn_cut_before_audio_feeds_only_what_was_measured(m: GatewayMetrics) -> None:
    m.observe_turn({"endpoint": 500, "stt_final": 640, "llm_first_token": None})
    assert value(m, "turn_response_seconds_count") == 0
    assert value(m, "turn_stage_seconds_count", stage="stt_final") == 1
    assert value(m, "turn_stage_seconds_count", stage="llm_first_token") == 0


def test_marks_out_of_order_are_not_observed(m: GatewayMetrics) -> None:
    m.observe_turn({"endpoint": 900, "stt_final": 800, "first_audio_sent": 1500})
    assert value(m, "turn_stage_seconds_count", stage="stt_final") == 0
    assert value(m, "turn_response_seconds_count") == 1


@pytest.mark.parametrize(
    "latency", [{"endpoint": -1}, {"endpoint": 1.5}, {"call_sid": 3}, {"endpoint": True}]
)
def test_bad_latency_marks_are_refused(m: GatewayMetrics, latency: dict[str, object]) -> None:
    with pytest.raises(LatencyError):
        m.observe_turn(latency)
    assert value(m, "turn_response_seconds_count") == 0


def test_turn_buckets_cover_100_ms_to_5_s() -> None:
    assert TURN_BUCKETS[0] == 0.1
    assert TURN_BUCKETS[-1] == 5.0
    assert list(TURN_BUCKETS) == sorted(TURN_BUCKETS)


def test_barge_ins_count_and_time_the_clear(m: GatewayMetrics) -> None:
    m.barge_in(140)
    m.barge_in(260.5)
    m.false_interruption()
    assert value(m, "barge_ins_total") == 2
    assert value(m, "barge_in_seconds_count") == 2
    assert value(m, "barge_in_seconds_bucket", le="0.15") == 1
    assert value(m, "barge_in_seconds_bucket", le="0.3") == 2
    assert math.isclose(value(m, "barge_in_seconds_sum"), 0.4005)
    assert value(m, "false_interruptions_total") == 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_barge_in_latency_must_be_a_real_duration(m: GatewayMetrics, bad: float) -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        m.barge_in(bad)
    assert value(m, "barge_ins_total") == 0


def test_errors_by_kind_and_provider(m: GatewayMetrics) -> None:
    m.error(ErrorKind.provider, provider="google_stt")
    m.error("provider", provider="twilio")
    m.error(ErrorKind.protocol)
    m.error("internal")
    assert value(m, "errors_total", kind="provider") == 2
    assert value(m, "errors_total", kind="protocol") == 1
    assert value(m, "errors_total", kind="internal") == 1
    assert value(m, "provider_errors_total", provider="google_stt") == 1
    assert value(m, "provider_errors_total", provider="twilio") == 1


def test_finer_error_kinds_are_counted_and_nonsense_is_other(m: GatewayMetrics) -> None:
    m.error("agent_timeout")
    m.error("agent_timeout")
    m.error("Kaboom! at CA12")
    assert value(m, "errors_total", kind="agent_timeout") == 2
    assert value(m, "errors_total", kind=OTHER) == 1


def test_admission_refusals(m: GatewayMetrics) -> None:
    m.admission_refused()
    m.admission_refused()
    assert value(m, "admission_refusals_total") == 2


# ---------------------------------------------------------------- cardinality


def test_bounded_label_folds_newcomers_past_the_limit() -> None:
    label = BoundedLabel("reason", limit=2)
    assert label("a") == "a"
    assert label("b") == "b"
    assert label("c") == OTHER
    assert label("a") == "a"


@pytest.mark.parametrize("raw", ["", "Caller Hangup", "x" * 49, "CA12 3", "ümlaut", "_leading"])
def test_bounded_label_refuses_what_is_not_an_identifier(raw: str) -> None:
    assert BoundedLabel("reason", limit=10)(raw) == OTHER


def test_a_call_id_passed_as_a_reason_costs_one_series_not_one_per_call() -> None:
    m = GatewayMetrics(process_collectors=False, label_limit=4)
    for i in range(200):
        m.call_started()
        m.call_ended(f"ca{i:032x}")
    families = {f.name: f for f in m.registry.collect()}
    reasons = {s.labels["reason"] for s in families["voiceagent_calls_ended"].samples}
    assert len(reasons) <= 5
    assert OTHER in reasons
    assert value(m, "calls_ended_total", reason=OTHER) == 196


def test_no_metric_is_labelled_by_call() -> None:
    m = GatewayMetrics(process_collectors=False)
    m.observe_turn(FULL)
    labels = {key for family in m.registry.collect() for s in family.samples for key in s.labels}
    assert labels <= {"direction", "reason", "stage", "kind", "provider", "le"}


# ---------------------------------------------------------------- exposition


def test_render_picks_the_format_the_scraper_asks_for(m: GatewayMetrics) -> None:
    body, content_type = m.render(None)
    assert content_type.startswith("text/plain; version=")
    assert b"voiceagent_active_calls 0.0" in body
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_process_metrics_are_included_by_default() -> None:
    body, _ = GatewayMetrics(CollectorRegistry()).render()
    assert b"process_cpu_seconds_total" in body
    assert b"python_info" in body


def test_get_metrics_is_one_per_process() -> None:
    assert get_metrics() is get_metrics()


# ---------------------------------------------------------------- the route


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_metrics_endpoint_exposes_what_the_session_reported(
    client: httpx.AsyncClient,
) -> None:
    before = samples((await client.get("/metrics")).text)
    shared = get_metrics()
    shared.call_started()
    shared.observe_turn(FULL)
    shared.barge_in(120)
    shared.error(ErrorKind.protocol)
    shared.admission_refused()

    response = await client.get("/metrics")
    shared.call_ended("caller_hangup", duration_s=30)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    after = samples(response.text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("voiceagent_active_calls") == 1
    assert delta("voiceagent_calls_started_total", direction="inbound") == 1
    assert delta("voiceagent_turn_response_seconds_count") == 1
    assert delta("voiceagent_turn_response_seconds_bucket", le="0.8") == 1
    assert delta("voiceagent_turn_stage_seconds_count", stage="llm_first_token") == 1
    assert delta("voiceagent_barge_ins_total") == 1
    assert delta("voiceagent_barge_in_seconds_bucket", le="0.15") == 1
    assert delta("voiceagent_errors_total", kind="protocol") == 1
    assert delta("voiceagent_admission_refusals_total") == 1
    assert ("process_cpu_seconds_total", ()) in after


async def test_metrics_endpoint_speaks_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_metrics_endpoint_is_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/metrics" not in schema["paths"]


async def test_metrics_token_guards_the_endpoint(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, object] = {"_env_file": None, "METRICS_TOKEN": "scrape-me-7f3a"}
    guarded = GatewaySettings(**kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(metrics_module, "get_settings", lambda: guarded)

    missing = await client.get("/metrics")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "scrape-me" not in missing.text
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = await client.get("/metrics", headers={"Authorization": "Basic scrape-me-7f3a"})
    assert basic.status_code == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me-7f3a"})
    assert right.status_code == 200
    assert "voiceagent_active_calls" in right.text


async def test_a_blank_metrics_token_leaves_the_endpoint_open(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs: dict[str, object] = {"_env_file": None, "METRICS_TOKEN": "  "}
    blank = GatewaySettings(**kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(metrics_module, "get_settings", lambda: blank)
    assert (await client.get("/metrics")).status_code == 200


def test_a_bad_duration_is_refused_before_anything_is_counted(m: GatewayMetrics) -> None:
    m.call_started()
    with pytest.raises(ValueError, match="duration_s"):
        m.call_ended("caller_hangup", duration_s=-3)
    assert value(m, "active_calls") == 1
    assert (
        m.registry.get_sample_value("voiceagent_calls_ended_total", {"reason": "caller_hangup"})
        is None
    )
