import logging

import pytest

from otel_segments.settings import config
from otel_segments.settings.config import Settings, otlp_endpoint, otlp_headers

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
    assert not caplog.records
    for raw in ("1", "yes", "on"):  # one rule for every boolean variable: the one OTEL_SDK_DISABLED follows
        assert not Settings.from_env({"OTEL_SEGMENTS_TRUST_BAGGAGE": raw}).trust_baggage
        refused = f"OTEL_SEGMENTS_TRUST_BAGGAGE={raw!r} is not true or false; using the default false"
        assert caplog.records[-1].getMessage() == refused
    assert not Settings.from_env({"OTEL_SEGMENTS_TRUST_BAGGAGE": "maybe"}).trust_baggage
    assert any("OTEL_SEGMENTS_TRUST_BAGGAGE" in r.getMessage() for r in caplog.records)


def test_posthog_host_without_scheme():
    assert Settings.from_env({"POSTHOG_HOST": "localhost:8000"}).posthog_host == "http://localhost:8000"
    assert Settings.from_env({}).posthog_host == config.DEFAULT_POSTHOG_HOST


# ---------------------------------------------------------------------------------------------------------------
# Secrets and regions (issue 15, item 2)
# ---------------------------------------------------------------------------------------------------------------

GATE = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("extra", "variable", "how"),
    [
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector.example:4318/v1/traces"}, "TRACES", "over plain http"),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://10.0.0.7:4317"}, "METRICS", "over plain http"),
        ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "HTTP://Collector.Example:4318"}, "LOGS", "over plain http"),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.example:4317",
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
            },
            "TRACES",
            "without TLS (OTEL_EXPORTER_OTLP_TRACES_INSECURE=true)",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "collector.example:4317",
                "OTEL_EXPORTER_OTLP_INSECURE": "TRUE",
            },
            "LOGS",
            "without TLS (OTEL_EXPORTER_OTLP_INSECURE=true)",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.attacker.example:4318"}, "TRACES", "over plain http"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://localhost.attacker.example"}, "TRACES", "over plain http"),
    ],
)
def test_each_per_signal_endpoint_in_plain_text_warns_once(extra, variable, how, caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({**GATE, **extra})
    host = extra[f"OTEL_EXPORTER_OTLP_{variable}_ENDPOINT"].split("://")[-1].split(":")[0].lower()
    assert warnings_of(caplog) == [
        f"OTEL_EXPORTER_OTLP_{variable}_ENDPOINT points at {host} {how}: the bearer token travels unencrypted; use https"
    ]


def test_every_plain_text_endpoint_gets_its_own_warning(caplog):
    caplog.set_level(logging.WARNING)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318",
        "OTEL_EXPORTER_OTLP_TOKEN": TOKEN,
        **{f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT": f"http://{s}.example:4318" for s in config.SIGNALS},
    }
    Settings.from_env(env)
    named = sorted(m.split(" ")[0] for m in warnings_of(caplog))
    assert named == sorted(["OTEL_EXPORTER_OTLP_ENDPOINT", *(f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT" for s in config.SIGNALS)])


@pytest.mark.parametrize(
    "extra",
    [
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example:4318/v1/traces"},
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example:4317",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        },
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.example:4317",
        },  # gRPC: TLS unless told otherwise
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.example:4317",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false",
        },
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.example:4317",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",  # the per-signal variable wins, as in the SDK
        },
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector.example:4318",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",  # read by the gRPC exporter only
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        },
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.255.3.4:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1]:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::ffff:127.0.0.1]:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://LOCALHOST:4318"},
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "localhost:4317",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        },
    ],
)
def test_tls_or_loopback_endpoints_do_not_warn(extra, caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({**GATE, **extra})
    assert warnings_of(caplog) == []


def test_loopback_is_decided_by_address_not_by_a_name_prefix(caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.attacker.example:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN})
    assert warnings_of(caplog) == [
        "OTEL_EXPORTER_OTLP_ENDPOINT points at 127.attacker.example over plain http: "
        "the bearer token travels unencrypted; use https"
    ]


@pytest.mark.parametrize(
    ("name", "raw", "shown"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:pw-31@host:99999", "https://host:99999"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://user:pw-31@host/x?token=pw-31", "ftp://host/x"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:pw-31@host:4318 /x", "http://host:4318 /x"),
        ("POSTHOG_HOST", "https://user:pw-31@eu.i.posthog.com:99999", "https://eu.i.posthog.com:99999"),
        ("POSTHOG_HOST", "ftp://user:p@w-31@eu.i.posthog.com", "ftp://eu.i.posthog.com"),
        ("POSTHOG_HOST", "user:pw-31@eu.i.posthog.com:1234567", "eu.i.posthog.com:1234567"),
    ],
)
def test_a_rejected_url_is_quoted_without_its_user_or_password(name, raw, shown, caplog):
    caplog.set_level(logging.DEBUG)
    Settings.from_env({name: raw})
    [message] = warnings_of(caplog)
    assert message.startswith(f"{name}={shown!r} ") and "pw-31" not in message and "user" not in message


def test_a_repaired_url_is_quoted_without_its_user_or_password(caplog):
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "user:pw-31@collector.example:4318"})
    assert settings.endpoint == "http://user:pw-31@collector.example:4318"  # the exporter gets it whole
    [message] = warnings_of(caplog)
    assert "pw-31" not in message and "user" not in message and "collector.example" in message


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://user:pw@collector.example:4318/v1/traces?k=v#f", "https://collector.example:4318/v1/traces"),
        ("postgresql://app:p@ss@db/app", "postgresql://db/app"),
        ("postgresql://app:12/ss@db/app", "postgresql://db/app"),  # parses, yet the password runs into the path
        ("postgresql://app:12?ss@db/app", "postgresql://db/app"),
        ("postgresql://app:pa#ss@db/app", "postgresql://db/app"),
        ("http://[::1]:4318", "http://[::1]:4318"),
        ("user:pw@host:4318", "host:4318"),
        ("http://host/x?password=pw", "http://host/x"),
        ("https://u:p@ss@host:99999/x?token=1#f", "https://host:99999/x"),  # malformed: after the last @, before ? and #
        ("https://u:p@host:99999#f", "https://host:99999"),
        ("https://host:443/v1", "https://host:443/v1"),
        ("http://Host.Example:0/", "http://host.example:0/"),
        ("https://u:p@host:99999/a://b", "https://host:99999/a://b"),  # the scheme is the first ://, not the last
        ("https://host:99999", "https://host:99999"),
        ("file:///etc/app.conf", "file:///etc/app.conf"),
        ("http://" + "h" * 500, "http://" + "h" * 193),
    ],
)
def test_safe_url(url, safe):
    from otel_segments.settings.values import safe_url

    assert safe_url(url) == safe


@pytest.mark.parametrize("raw", ["ftp://eu.i.posthog.com", "https://eu.i.posthog.com /", "https://eu i.posthog.com", "http://"])
def test_a_rejected_posthog_host_turns_the_sink_off_never_to_the_us_host(raw, caplog):
    caplog.set_level(logging.WARNING)
    settings = Settings.from_env({"POSTHOG_HOST": raw, "POSTHOG_API_KEY": "phc_key"})
    assert settings.posthog_host is None and settings.posthog_api_key is None
    [message] = warnings_of(caplog)
    assert message.startswith("POSTHOG_HOST=") and message.endswith(
        "; the PostHog sink is off (person data goes only to a host you chose)"
    )


def test_a_posthog_host_that_is_unset_or_usable_is_used():
    assert Settings.from_env({"POSTHOG_API_KEY": "k"}).posthog_host == config.DEFAULT_POSTHOG_HOST
    settings = Settings.from_env({"POSTHOG_API_KEY": "k", "POSTHOG_HOST": "https://eu.i.posthog.com"})
    assert settings.posthog_host == "https://eu.i.posthog.com" and settings.posthog_api_key.reveal() == "k"


def test_the_pipeline_builds_no_posthog_sink_for_a_rejected_host():
    from opentelemetry.sdk.resources import Resource

    from otel_segments.pipeline import sink_factories
    from otel_segments.spans.properties import ProcessProperties

    process = ProcessProperties(environment="t", deployment_method="native", timezone="UTC")
    rejected = Settings.from_env({"POSTHOG_API_KEY": "k", "POSTHOG_HOST": "ftp://eu.i.posthog.com"})
    assert "posthog" not in sink_factories(rejected, Resource({}), process)
    chosen = Settings.from_env({"POSTHOG_API_KEY": "k", "POSTHOG_HOST": "https://eu.i.posthog.com"})
    assert "posthog" in sink_factories(chosen, Resource({}), process)


@pytest.mark.parametrize(
    ("env", "reason", "meant_on"),
    [
        ({}, "OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TOKEN are not set", False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example"}, "OTEL_EXPORTER_OTLP_TOKEN is not set", True),
        ({"OTEL_EXPORTER_OTLP_TOKEN": TOKEN}, "OTEL_EXPORTER_OTLP_ENDPOINT is not set", True),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example", "OTEL_EXPORTER_OTLP_TOKEN": "tok with space"},
            "OTEL_EXPORTER_OTLP_TOKEN was refused: it has characters a bearer token cannot have "
            "(spaces, control or non-ASCII characters)",
            True,
        ),
        (
            {"OTEL_EXPORTER_OTLP_TOKEN": "tök"},
            "OTEL_EXPORTER_OTLP_ENDPOINT is not set; OTEL_EXPORTER_OTLP_TOKEN was refused: it has characters a bearer "
            "token cannot have (spaces, control or non-ASCII characters)",
            True,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c.example", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN},
            "OTEL_EXPORTER_OTLP_ENDPOINT was refused: it has an unsupported scheme (use http or https)",
            True,
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example", "OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED is true", False),
    ],
)
def test_why_the_plugin_is_off_and_whether_it_was_meant_on(env, reason, meant_on):
    settings = Settings.from_env(env)
    assert (settings.disabled_reason, settings.meant_on) == (reason, meant_on)


def test_a_database_password_with_an_unencoded_at_is_read_up_to_the_last_at(caplog):
    caplog.set_level(logging.WARNING)
    settings = Settings.from_env({"OTEL_SEGMENTS_DATABASE_URL": "postgresql+psycopg://app:p@ss-9f@db.internal:5432/app"})
    from sqlalchemy import make_url

    url = make_url(settings.database_url.reveal())
    assert (url.username, url.password, url.host, url.port, url.database) == ("app", "p@ss-9f", "db.internal", 5432, "app")
    assert warnings_of(caplog) == [
        "OTEL_SEGMENTS_DATABASE_URL has an unencoded @ in its password; reading the last @ as its end (write it as %40)"
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql+psycopg://app:pw@db/app",
        "postgresql+psycopg://user@tenant:pw@db/app",  # an @ in the user name SQLAlchemy reads right
        "sqlite:////data/a@b/app.db",
        "postgresql+psycopg://app:pw@db/app?options=a@b",
    ],
)
def test_other_database_urls_are_kept_as_they_are(raw, caplog):
    caplog.set_level(logging.WARNING)
    assert Settings.from_env({"OTEL_SEGMENTS_STATE_URL": raw}).state_url.reveal() == raw
    assert warnings_of(caplog) == []


def test_driver_messages_never_quote_the_part_of_a_password_after_an_unencoded_at():
    """The failing connection's error, which each cycle's WARNING quotes: the host it names is the real one."""
    import socket

    from sqlalchemy.exc import OperationalError

    from otel_segments.runtime.database import engine_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    raw = f"postgresql+psycopg://app:pa@ss-secret-7@127.0.0.1:{port}/app"
    engine = engine_for(Settings.from_env({"OTEL_SEGMENTS_DATABASE_URL": raw}).database_url.reveal())
    with pytest.raises(OperationalError) as raised:
        engine.connect()
    engine.dispose()
    assert "ss-secret-7" not in str(raised.value) and "127.0.0.1" in str(raised.value)


def test_cli_errors_never_quote_the_part_of_a_password_after_an_unencoded_at(tmp_path):
    import socket
    import subprocess

    from tests.conftest import VENV_BIN, clean_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://app:pa@ss-secret-8@127.0.0.1:{port}/app"
    for args, env in (
        (["--database-url", url], clean_env()),
        ([], clean_env(OTEL_SEGMENTS_DATABASE_URL=url)),
    ):
        result = subprocess.run(
            [str(VENV_BIN / "otel-segments"), "compute", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert "cannot connect to the database" in result.stderr and "127.0.0.1" in result.stderr
        assert "ss-secret-8" not in result.stderr + result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Each reading at its edges (issue 15, item 5: tests that would notice a change)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_zones(monkeypatch):
    monkeypatch.setattr(config, "_warned_zones", set())


@pytest.mark.parametrize("raw", ["", "  ", "UTC", "utc", " Utc "])
def test_database_timezone_utc(raw, fresh_zones, caplog):
    from datetime import timezone

    assert config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": raw}) is timezone.utc
    assert caplog.records == []


def test_database_timezone_iana_name_and_the_process_environment(fresh_zones, monkeypatch):
    from zoneinfo import ZoneInfo

    assert config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": " Asia/Kolkata "}) == ZoneInfo("Asia/Kolkata")
    monkeypatch.setenv("OTEL_SEGMENTS_DATABASE_TIMEZONE", "America/Lima")
    assert config.database_timezone() == ZoneInfo("America/Lima")


@pytest.mark.parametrize("raw", ["Mars/Olympus_Mons", "../../etc/passwd", "Europe/" + "x" * 100])
def test_an_unknown_zone_is_utc_with_one_warning_per_value(raw, fresh_zones, caplog):
    from datetime import timezone

    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": raw}) is timezone.utc
    assert [r.getMessage() for r in caplog.records] == [
        f"OTEL_SEGMENTS_DATABASE_TIMEZONE={raw[:64]!r} is not an IANA time zone name (e.g. Europe/Berlin); using UTC"
    ]
    config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": "Other/Unknown"})
    assert len(caplog.records) == 2


@pytest.mark.parametrize(("raw", "disabled"), [("true", True), (" TRUE ", True), ("True", True), ("false", False), ("", False)])
def test_sdk_disabled_only_true_is_true(raw, disabled, caplog):
    caplog.set_level(logging.WARNING)
    assert Settings.from_env({"OTEL_SDK_DISABLED": raw}).sdk_disabled is disabled
    assert caplog.records == []


@pytest.mark.parametrize("raw", ["1", "yes", "on", "Y" * 100])
def test_sdk_disabled_other_values_are_false_with_a_warning(raw, caplog):
    caplog.set_level(logging.WARNING)
    assert Settings.from_env({"OTEL_SDK_DISABLED": raw}).sdk_disabled is False
    assert [r.getMessage() for r in caplog.records] == [
        f"OTEL_SDK_DISABLED={raw.lower()[:64]!r} is not true or false; using the default false"
    ]


def test_every_setting_is_read_from_its_own_variable(caplog):
    caplog.set_level(logging.WARNING)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318",
        "OTEL_EXPORTER_OTLP_TOKEN": TOKEN,
        "OTEL_SEGMENTS_DATABASE_URL": "sqlite:///app.db",
        "OTEL_SEGMENTS_STATE_URL": "sqlite:///state.db",
        "OTEL_SEGMENTS_SCHEMA": " crm.mapping:MAPPING ",
        "OTEL_SEGMENTS_REFRESH_INTERVAL": "1",
        "OTEL_SEGMENTS_MAX_SEGMENT_AGE": "2",
        "OTEL_SEGMENTS_CACHE_SIZE": "3",
        "OTEL_SEGMENTS_SPAN_PROPERTIES": "all",
        "OTEL_SEGMENTS_TRUST_BAGGAGE": "TRUE",
        "OTEL_SEGMENTS_USER_ID_HASH_KEY": "hash-key",
        "POSTHOG_API_KEY": "phc_key",
        "POSTHOG_HOST": "https://eu.i.posthog.com",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        endpoint="https://collector.example:4318",
        token=config.Secret(TOKEN),
        database_url=config.Secret("sqlite:///app.db"),
        state_url=config.Secret("sqlite:///state.db"),
        schema="crm.mapping:MAPPING",
        refresh_interval_ms=1,
        max_segment_age_ms=2,
        cache_size=3,
        span_properties="all",
        trust_baggage=True,
        user_id_hash_key=config.Secret("hash-key"),
        posthog_api_key=config.Secret("phc_key"),
        posthog_host="https://eu.i.posthog.com",
    )
    assert settings.enabled and caplog.records == []


def test_defaults_of_every_setting():
    assert Settings.from_env({}) == Settings()
    assert Settings() == Settings(
        endpoint=None,
        token=None,
        sdk_disabled=False,
        database_url=None,
        state_url=None,
        schema="timetracker",
        refresh_interval_ms=60_000,
        max_segment_age_ms=86_400_000,
        cache_size=10_000,
        trust_baggage=False,
        user_id_hash_key=None,
        posthog_api_key=None,
        posthog_host="https://us.i.posthog.com",
        refused=(),
    )


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OTEL_SEGMENTS_CACHE_SIZE", "77")
    assert Settings.from_env().cache_size == 77


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://collector.example:4318", None),
        ("https://collector.example", None),
        ("http://collector example", "has spaces or control characters"),
        ("http://collector\texample", "has spaces or control characters"),
        ("http://collector.example\x00", "has spaces or control characters"),
        ("http://collector.example\u2003", "has spaces or control characters"),
        ("http://collector.example:99999", "is not a URL"),
        ("http://[::1", "is not a URL"),
        ("ftp://collector.example", "has an unsupported scheme (use http or https)"),
        ("grpc://collector.example", "has an unsupported scheme (use http or https)"),
        ("http://", "has no host"),
        ("http://:4318/x", "has no host"),
    ],
)
def test_url_problems(url, problem):
    from otel_segments.settings.otlp_variables import url_problem

    assert url_problem(url) == problem


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("localhost:4318", "OTEL_EXPORTER_OTLP_ENDPOINT='localhost:4318' has no scheme; using 'http://localhost:4318'"),
        (
            "collector.example:4318/otlp?k=v",
            "OTEL_EXPORTER_OTLP_ENDPOINT='collector.example:4318/otlp' has no scheme; using "
            "'http://collector.example:4318/otlp', which points at collector.example over plain http: the bearer token "
            "travels unencrypted; use https",
        ),
        (
            "collector example",
            "OTEL_EXPORTER_OTLP_ENDPOINT='collector example' has spaces or control characters; the plugin stays off",
        ),
    ],
)
def test_endpoint_messages(raw, message, caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": raw})
    assert warnings_of(caplog) == [message]


@pytest.mark.parametrize(
    ("env", "signal", "expected"),
    [
        # the general endpoint as given: the SDK reads it itself
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c.example:4318"}, "traces", None),
        # repaired: passed explicitly, with the signal's path for OTLP/HTTP (one slash)
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "logs",
            "http://c.example:4318/v1/logs",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4318", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"},
            "metrics",
            "http://c.example:4318/v1/metrics",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4318"}, "traces", "http://c.example:4318/v1/traces"),  # the default
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "traces",
            "http://c.example:4317",
        ),
        # a per-signal endpoint wins: the SDK reads it
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example"},
            "traces",
            None,
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "c.example:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example",
            },
            "logs",
            "http://c.example:4317",
        ),
        ({}, "traces", None),
    ],
)
def test_otlp_endpoint_per_signal(env, signal, expected, caplog):
    settings = Settings.from_env(env)
    assert otlp_endpoint(signal, settings, env) == expected


def test_otlp_endpoint_and_headers_read_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "c.example:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-a=1")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    assert otlp_endpoint("traces", Settings.from_env()) == "http://c.example:4317/v1/traces"
    assert otlp_headers("traces", None) == {"x-a": "1"}
    assert config.protocol("traces") == "http/protobuf"


@pytest.mark.parametrize(
    ("env", "expected", "warned"),
    [
        ({}, "http/protobuf", None),  # the specification's default; gRPC is an extra, loaded only when asked for
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc", None),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http/protobuf", None),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": " http/protobuf "}, "http/protobuf", None),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "grpc", None),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'",
        ),
        (
            {"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "http/protobuf",
            None,
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "x" * 100}, "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL=" + repr("x" * 64)),
    ],
)
def test_protocol_per_signal_then_general(env, expected, warned, caplog):
    caplog.set_level(logging.WARNING)
    assert config.protocol("traces", env) == expected
    if warned is None:
        assert caplog.records == []
    else:
        assert warnings_of(caplog) == [f"{warned} is not one of grpc, http/protobuf; using http/protobuf"]


@pytest.mark.parametrize("raw", ["tok en", "tok\x7f", "tök", "tok\n"])
def test_token_characters_a_header_cannot_carry_are_refused(raw, caplog):
    caplog.set_level(logging.WARNING)
    assert config.token({"OTEL_EXPORTER_OTLP_TOKEN": f"a{raw}b"}) is None
    assert warnings_of(caplog) == [
        "OTEL_EXPORTER_OTLP_TOKEN has characters a bearer token cannot have (spaces, control or non-ASCII characters); "
        "ignoring it"
    ]


def test_token_with_every_printable_ascii_character_is_kept(caplog):
    raw = "".join(chr(c) for c in range(33, 127))
    assert config.token({"OTEL_EXPORTER_OTLP_TOKEN": f"  {raw} "}) == config.Secret(raw)
    assert config.token({}) is None and config.token({"OTEL_EXPORTER_OTLP_TOKEN": " "}) is None
    assert caplog.records == []


def test_per_signal_headers_variable_that_is_blank_falls_back_to_the_general_one():
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "  "}
    assert otlp_headers("traces", config.Secret("t"), env) == {"a": "1", "authorization": "Bearer t"}


@pytest.mark.parametrize(
    ("env", "host"),
    [
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c.example/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "c.example",
        ),
        (
            {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "HTTP://c.example/v1/logs", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf"},
            "c.example",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c.example/x?next=https://y.example"}, "c.example"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://" + "h" * 300 + ".example"}, "h" * 200),
    ],
)
def test_plain_http_per_signal_endpoint_for_otlp_http_and_the_host_as_shown(env, host, caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({**GATE, **env})
    [message] = warnings_of(caplog)
    assert message.split(" ")[3] == host and "over plain http" in message


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "c.example:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
)
def test_otlp_http_per_signal_endpoint_not_over_plain_http_does_not_warn(env, caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({**GATE, **env})
    assert warnings_of(caplog) == []


def test_a_long_general_endpoint_host_is_shown_cut(caplog):
    caplog.set_level(logging.WARNING)
    Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + "h" * 300 + ".example", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN})
    [message] = warnings_of(caplog)
    assert message.startswith(f"OTEL_EXPORTER_OTLP_ENDPOINT points at {'h' * 200} over plain http")


def test_an_endpoint_without_scheme_is_not_refused():
    settings = Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example:4318"})
    assert settings.refused == () and settings.disabled_reason == "OTEL_EXPORTER_OTLP_TOKEN is not set"


@pytest.mark.parametrize(
    ("raw", "password", "host"),
    [
        ("postgresql+psycopg://app:p@s@s@db/app", "p@s@s", "db"),
        ("postgresql+psycopg://app:@x@db/app", "@x", "db"),
    ],
)
def test_several_unencoded_at_signs_in_a_database_password(raw, password, host):
    from sqlalchemy import make_url

    url = make_url(Settings.from_env({"OTEL_SEGMENTS_DATABASE_URL": raw}).database_url.reveal())
    assert (url.password, url.host) == (password, host)


def test_an_unparsable_database_url_is_kept_for_the_engine_to_report():
    raw = "postgresql://a@b@c:notaport/x"
    assert Settings.from_env({"OTEL_SEGMENTS_DATABASE_URL": raw}).database_url.reveal() == raw


def test_a_posthog_host_without_scheme_is_repaired_with_one_warning_that_claims_no_bearer_token(caplog):
    caplog.set_level(logging.WARNING)
    settings = Settings.from_env({"POSTHOG_HOST": "eu.i.posthog.example", "POSTHOG_API_KEY": "k"})
    assert settings.posthog_host == "http://eu.i.posthog.example"
    assert warnings_of(caplog) == ["POSTHOG_HOST='eu.i.posthog.example' has no scheme; using 'http://eu.i.posthog.example'"]


@pytest.mark.parametrize(
    ("raw", "want"), [("", "windows"), ("triggers", "triggers"), (" TRIGGERS ", "triggers"), ("windows", "windows")]
)
def test_change_capture_is_windows_or_triggers(raw, want, caplog):
    caplog.set_level(logging.WARNING)
    assert Settings.from_env({"OTEL_SEGMENTS_CHANGE_CAPTURE": raw}).change_capture == want
    assert caplog.records == []


@pytest.mark.parametrize("raw", ["trigger", "exact", "true"])
def test_an_unknown_change_capture_is_the_windows_with_one_warning(raw, caplog):
    caplog.set_level(logging.WARNING)
    assert Settings.from_env({"OTEL_SEGMENTS_CHANGE_CAPTURE": raw}).change_capture == "windows"
    assert [r.getMessage() for r in caplog.records] == [
        f"OTEL_SEGMENTS_CHANGE_CAPTURE={raw!r} is not one of windows, triggers; using the default windows"
    ]
