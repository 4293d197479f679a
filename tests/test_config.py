import logging

import pytest

from otel_segments import config
from otel_segments.config import Settings, otlp_endpoint, otlp_headers

TOKEN = "s3cr3t-token-value"


def test_gate_open_needs_endpoint_and_token():
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN})
    assert settings.enabled
    assert settings.disabled_reason is None


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({}, "OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TOKEN are not set"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "OTEL_EXPORTER_OTLP_TOKEN is not set"),
        ({"OTEL_EXPORTER_OTLP_TOKEN": TOKEN}, "OTEL_EXPORTER_OTLP_ENDPOINT is not set"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  ", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN}, "OTEL_EXPORTER_OTLP_ENDPOINT is not set"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN, "OTEL_SDK_DISABLED": "TRUE"},
            "OTEL_SDK_DISABLED is true",
        ),
    ],
)
def test_gate_closed_says_which_variable(env, reason):
    settings = Settings.from_env(env)
    assert not settings.enabled
    assert settings.disabled_reason == reason


def test_token_never_in_repr_or_str():
    settings = Settings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN, "POSTHOG_API_KEY": "phc_key"}
    )
    for text in (repr(settings), str(settings), repr(settings.token), str(settings.token)):
        assert TOKEN not in text
        assert "phc_key" not in text
    assert settings.token.reveal() == TOKEN


@pytest.mark.parametrize("raw", ["abc", "1.5", "-10", "0", "1e3", "9" * 5000, str(2**31), "١٢٣"])
def test_bad_refresh_interval_warns_and_falls_back(raw, caplog):
    caplog.set_level(logging.WARNING)
    settings = Settings.from_env({"OTEL_SEGMENTS_REFRESH_INTERVAL": raw})
    assert settings.refresh_interval_ms == config.DEFAULT_REFRESH_INTERVAL_MS
    assert [r for r in caplog.records if "OTEL_SEGMENTS_REFRESH_INTERVAL" in r.getMessage()]


def test_endpoint_without_scheme_is_repaired_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN}
    settings = Settings.from_env(env)
    assert settings.endpoint == "http://127.0.0.1:4318"
    assert any("OTEL_EXPORTER_OTLP_ENDPOINT" in r.getMessage() and "no scheme" in r.getMessage() for r in caplog.records)
    assert otlp_endpoint("traces", settings, {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == (
        "http://127.0.0.1:4318/v1/traces"
    )
    assert otlp_endpoint("traces", settings, {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "http://127.0.0.1:4318"


def test_plain_http_to_remote_host_warns(caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN})
    assert any("plain http" in r.getMessage() for r in caplog.records)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_bearer_token_is_added_to_user_headers():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-team=core,x-env=prod%20eu"}
    headers = otlp_headers("traces", config.Secret(TOKEN), env)
    assert headers == {"x-team": "core", "x-env": "prod eu", "authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic abc"},
        {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Basic abc", "OTEL_EXPORTER_OTLP_HEADERS": "x=1"},
    ],
)
def test_user_authorization_header_wins(env):
    assert otlp_headers("traces", config.Secret(TOKEN), env)["authorization"] == "Basic abc"


def test_per_signal_headers_replace_general_ones():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "b=2"}
    assert otlp_headers("logs", None, env) == {"b": "2"}
    assert otlp_headers("traces", None, env) == {"a": "1"}


def test_malformed_header_item_is_skipped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    headers = otlp_headers("traces", config.Secret(TOKEN), {"OTEL_EXPORTER_OTLP_HEADERS": "good=1,broken,=x"})
    assert headers == {"good": "1", "authorization": f"Bearer {TOKEN}"}
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "OTEL_EXPORTER_OTLP_HEADERS" in m] == [
        "OTEL_EXPORTER_OTLP_HEADERS has 2 malformed items (expected key=value without control characters); skipping them"
    ]
    assert not any(TOKEN in m for m in messages)


def test_unknown_protocol_falls_back_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    assert config.protocol("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) == config.DEFAULT_PROTOCOL
    assert config.protocol("traces", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    assert any("OTEL_EXPORTER_OTLP_PROTOCOL" in r.getMessage() for r in caplog.records)


def test_boolean_variable(caplog):
    assert Settings.from_env({"OTEL_SEGMENTS_TRUST_BAGGAGE": "true"}).trust_baggage
    assert not Settings.from_env({"OTEL_SEGMENTS_TRUST_BAGGAGE": "maybe"}).trust_baggage
    assert any("OTEL_SEGMENTS_TRUST_BAGGAGE" in r.getMessage() for r in caplog.records)


def test_posthog_host_without_scheme():
    assert Settings.from_env({"POSTHOG_HOST": "localhost:8000"}).posthog_host == "http://localhost:8000"
    assert Settings.from_env({}).posthog_host == config.DEFAULT_POSTHOG_HOST
