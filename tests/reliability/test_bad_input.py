"""Bad input never becomes an exception in the host app: environment variables, user properties, database rows.

Each kind of input gets a documented default or a clear warning (at most one per
variable), and what goes out (span attributes, person properties) is always of a
valid type: never None, never NaN, always valid UTF-8.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, insert, text
from sqlalchemy.engine import Engine

from otel_segments import clear_user, set_user, user_context
from otel_segments.segments import UserSegment
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.refresh import refresh
from otel_segments.segments.rules import WINDOWS, UserActivity, next_change, person_properties
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.settings import config
from otel_segments.settings.config import Settings
from otel_segments.sinks.otlp import OtlpSegmentSink
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.spans.context import current_user
from otel_segments.spans.properties import detect_process_properties
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

from .conftest import API_KEY, TOKEN, Pipeline, make_pipeline

HUGE = 1 << 20  # 1 MB values

# ---------------------------------------------------------------------------------------------------------------
# Environment variables
# ---------------------------------------------------------------------------------------------------------------

# Every variable Settings.from_env reads, with the Settings field it fills.
SETTINGS_VARIABLES = {
    config.OTEL_EXPORTER_OTLP_ENDPOINT: "endpoint",
    config.OTEL_EXPORTER_OTLP_TOKEN: "token",
    config.OTEL_SDK_DISABLED: "sdk_disabled",
    config.OTEL_SEGMENTS_DATABASE_URL: "database_url",
    config.OTEL_SEGMENTS_STATE_URL: "state_url",
    config.OTEL_SEGMENTS_SCHEMA: "schema",
    config.OTEL_SEGMENTS_REFRESH_INTERVAL: "refresh_interval_ms",
    config.OTEL_SEGMENTS_MAX_SEGMENT_AGE: "max_segment_age_ms",
    config.OTEL_SEGMENTS_CACHE_SIZE: "cache_size",
    config.OTEL_SEGMENTS_TRUST_BAGGAGE: "trust_baggage",
    config.OTEL_SEGMENTS_USER_ID_HASH_KEY: "user_id_hash_key",
    config.OTEL_SEGMENTS_CHANGE_CAPTURE: "change_capture",
    config.POSTHOG_API_KEY: "posthog_api_key",
    config.POSTHOG_HOST: "posthog_host",
}
# The standard OTEL_* variables we parse ourselves besides those (the SDK parses the rest).
READER_VARIABLES = (
    config.OTEL_EXPORTER_OTLP_PROTOCOL,
    config.OTEL_EXPORTER_OTLP_HEADERS,
    *(f"OTEL_EXPORTER_OTLP_{s.upper()}_{v}" for s in config.SIGNALS for v in ("PROTOCOL", "HEADERS", "ENDPOINT")),
    "OTEL_RESOURCE_ATTRIBUTES",
)

BAD_VALUES = {
    "empty": "",
    "whitespace": " \t\r\n ",
    "garbage": "%%garbage;;==,,=\\",
    "huge": "a" * HUGE,
    "huge digits": "9" * HUGE,
    "huge list": ",=x" * (HUGE // 3),
    "negative": "-5",
    "double minus": "--5",
    "plus": "+5",
    "zero": "0",
    "float": "1.5",
    "exponent": "1e3",
    "int64 overflow": str(2**63),
    "unicode": "ünïcødé ☃ 日本 ١٢٣",
    "fullwidth": "ex\uff03ample.com",
    "NUL": "12\x0034",
    "control characters": "a\r\nInjected: 1",
    "surrogate (non-UTF-8 environ byte)": "caf\udce9",
    "wrong type: bool": "true",
    "wrong type: number": "60000",
    "wrong type: json": '{"a": [1, 2]}',
    "url without host": "http://",
    "bad port": "http://collector:99999999",
    "bad ipv6": "http://[::1",
    "unsupported scheme": "ftp://collector",
}
# Non-string values, as code (not the shell) might pass them to from_env.
WRONG_TYPES = {"int": 5, "None": None, "bytes": b"5", "bool": True, "float": 1.5}

INTS = {"refresh_interval_ms", "max_segment_age_ms", "cache_size"}
SECRETS = {"token", "database_url", "state_url", "user_id_hash_key", "posthog_api_key"}


def usable_url(url: str) -> bool:
    """What the exporters and requests can use: http(s), a host, a valid port, no spaces or control characters."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and url.isprintable() and " " not in url


def assert_documented(name: str, raw: object, settings: Settings) -> None:
    """The field is the variable's documented default, or a valid value read from it."""
    field = SETTINGS_VARIABLES[name]
    value = getattr(settings, field)
    text = raw.strip() if isinstance(raw, str) else ""
    default = getattr(Settings(), field)
    if field in INTS:
        assert isinstance(value, int) and 1 <= value <= 2**31 - 1
        if value != default:
            assert int(text) == value
    elif field == "endpoint":
        assert value is None or usable_url(value), value[:100]
    elif field == "posthog_host":
        # Set but unusable: no host at all and the sink off, never the default (another region) in its place.
        if not text:
            assert value == default
        elif value is None:
            assert settings.posthog_api_key is None
        else:
            assert usable_url(value), value[:100]
    elif field in ("sdk_disabled", "trust_baggage"):
        assert isinstance(value, bool)
        if field == "sdk_disabled":
            assert value == (text.lower() == "true")
    elif field == "schema":
        assert value == (text or default)
    elif field == "change_capture":
        assert value == (text.lower() if text.lower() in config.CHANGE_CAPTURES else default)
    elif field == "token":
        # It goes into an HTTP header and gRPC metadata: printable ASCII without spaces, or nothing.
        assert value is None or (value.reveal().isascii() and value.reveal().isprintable() and " " not in value.reveal())
    elif field in SECRETS:
        assert value is None or value.reveal() == text


def read_everything(environ: Mapping[str, Any]) -> Settings:
    """Everything the plugin reads from the environment at start-up, as configure() and the sinks read it."""
    settings = Settings.from_env(environ)
    env = {k: v for k, v in environ.items() if isinstance(v, str)}
    for signal in config.SIGNALS:
        assert config.protocol(signal, env) in config.PROTOCOLS
        headers = config.otlp_headers(signal, settings.token, env)
        for key, value in headers.items():
            assert key.isascii() and key.isprintable() and value.isascii() and value.isprintable(), (key[:50], value[:50])
        endpoint = config.otlp_endpoint(signal, settings, env)
        assert endpoint is None or usable_url(endpoint)
    process = detect_process_properties(env)
    assert all(isinstance(v, str) for v in process.attributes.values())
    return settings


def assert_clean_logs(records: list[logging.LogRecord], name: str) -> None:
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage()[:200] for r in warnings]
    for record in warnings:
        message = record.getMessage()
        assert name in message, message[:200]
        assert len(message) < 1000, "a warning must stay readable whatever the value"
    for record in records:
        assert TOKEN not in record.getMessage() and API_KEY not in record.getMessage()


def base_env() -> dict[str, str]:
    """A complete, valid environment: each test spoils one variable of it."""
    return {
        config.OTEL_EXPORTER_OTLP_ENDPOINT: "https://collector.example.com:4318",
        config.OTEL_EXPORTER_OTLP_TOKEN: TOKEN,
        config.POSTHOG_API_KEY: API_KEY,
    }


@pytest.mark.parametrize("kind", list(BAD_VALUES))
@pytest.mark.parametrize("name", list(SETTINGS_VARIABLES))
def test_settings_variable_with_bad_value(name: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    raw = BAD_VALUES[kind]
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env({**base_env(), name: raw})
    assert_documented(name, raw, settings)
    assert_clean_logs(caplog.records, name)
    assert TOKEN not in repr(settings) and API_KEY not in str(settings)


@pytest.mark.parametrize("kind", list(WRONG_TYPES))
@pytest.mark.parametrize("name", list(SETTINGS_VARIABLES))
def test_settings_variable_of_wrong_python_type(name: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    raw = WRONG_TYPES[kind]
    caplog.set_level(logging.DEBUG)
    settings = Settings.from_env({**base_env(), name: raw})  # type: ignore[dict-item]
    as_text = raw.decode() if isinstance(raw, bytes) else None if raw is None else str(raw)
    assert_documented(name, as_text, settings)
    assert_clean_logs(caplog.records, name)


@pytest.mark.parametrize("kind", list(BAD_VALUES))
@pytest.mark.parametrize("name", READER_VARIABLES)
def test_otel_variable_with_bad_value(name: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    read_everything({**base_env(), name: BAD_VALUES[kind]})
    # protocol, headers and endpoint are read once per signal: at most one warning per read.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= len(config.SIGNALS) + 1, [r.getMessage()[:200] for r in warnings]
    for record in caplog.records:
        assert len(record.getMessage()) < 1000 and TOKEN not in record.getMessage()


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.from_env({})
    assert (settings.endpoint, settings.token, settings.sdk_disabled, settings.trust_baggage) == (None, None, False, False)
    assert (settings.schema, settings.refresh_interval_ms, settings.max_segment_age_ms, settings.cache_size) == (
        "timetracker",
        60_000,
        86_400_000,
        10_000,
    )
    assert settings.posthog_host == "https://us.i.posthog.com"
    assert settings.disabled_reason == "OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_TOKEN are not set"


@pytest.mark.parametrize(
    ("name", "raw", "field", "expected"),
    [
        (config.OTEL_SEGMENTS_CACHE_SIZE, " 500 ", "cache_size", 500),
        (config.OTEL_SEGMENTS_CACHE_SIZE, "+500", "cache_size", 500),
        (config.OTEL_SEGMENTS_REFRESH_INTERVAL, str(2**31 - 1), "refresh_interval_ms", 2**31 - 1),
        (config.OTEL_SEGMENTS_TRUST_BAGGAGE, " TRUE ", "trust_baggage", True),
        (config.OTEL_SDK_DISABLED, "True", "sdk_disabled", True),
        (config.POSTHOG_HOST, "eu.i.posthog.com", "posthog_host", "http://eu.i.posthog.com"),
    ],
)
def test_valid_values_are_read(name: str, raw: str, field: str, expected: object) -> None:
    assert getattr(Settings.from_env({name: raw}), field) == expected


def test_unknown_sdk_disabled_value_is_false_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """As the OpenTelemetry specification asks: any value but true is false, and an unknown one is reported."""
    settings = Settings.from_env({config.OTEL_SDK_DISABLED: "yes"})
    assert settings.sdk_disabled is False
    assert [r.getMessage() for r in caplog.records] == ["OTEL_SDK_DISABLED='yes' is not true or false; using the default false"]


def test_malformed_headers_warn_once_however_many_items(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    headers = config.parse_headers("OTEL_EXPORTER_OTLP_HEADERS", ",x" * 100_000 + ",ok=1,bad=a%0Ab,k%00=v")
    assert headers == {"ok": "1"}
    assert len(caplog.records) == 1
    assert "100002 malformed items" in caplog.records[0].getMessage()


def test_bearer_token_with_control_characters_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t\nX-Injected: yes"
    settings = Settings.from_env(
        {config.OTEL_EXPORTER_OTLP_ENDPOINT: "https://c.example", config.OTEL_EXPORTER_OTLP_TOKEN: secret}
    )
    assert settings.token is None and not settings.enabled
    [record] = caplog.records
    assert "OTEL_EXPORTER_OTLP_TOKEN" in record.getMessage()
    assert "s3cr3t" not in record.getMessage()


def test_endpoint_without_scheme_on_a_remote_host_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({config.OTEL_EXPORTER_OTLP_ENDPOINT: "collector.example:4318"})
    assert settings.endpoint == "http://collector.example:4318"
    [record] = caplog.records
    assert "no scheme" in record.getMessage() and "plain http" in record.getMessage()


_env_text = st.text(st.characters(exclude_categories=()), max_size=80)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(SETTINGS_VARIABLES)), raw=_env_text | st.from_regex(r"\A[+-]{0,3}[0-9. e_]{0,15}\Z"))
def test_any_settings_value_property(name: str, raw: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    settings = read_everything({**base_env(), name: raw})
    assert_documented(name, raw, settings)
    assert_clean_logs([r for r in caplog.records if r.name.startswith("otel_segments")], name)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(READER_VARIABLES), raw=_env_text)
def test_any_otel_value_property(name: str, raw: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    read_everything({**base_env(), name: raw})
    for record in caplog.records:
        assert TOKEN not in record.getMessage()


# ---------------------------------------------------------------------------------------------------------------
# User ids and properties
# ---------------------------------------------------------------------------------------------------------------


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    __repr__ = __str__


class BadEq:
    """Like a numpy array: comparing it gives something whose truth value raises."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("The truth value of an array with more than one element is ambiguous")

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return "bad-eq"


class BadBool:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")

    def __str__(self) -> str:
        return "bad-bool"


def short_id(value: object) -> str:
    try:
        return repr(value)[:20]
    except Exception:  # noqa: BLE001 - BadStr
        return type(value).__name__


HUGE_TEXT = "é" * (HUGE // 2)
primitives = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()), max_size=30)
    | st.binary(max_size=30)
    | st.just(b"\xff\xfe\x80 non-UTF-8")
    | st.just(HUGE_TEXT)
    | st.builds(BadStr)
    | st.builds(BadEq)
    | st.builds(BadBool)
)
values = st.recursive(
    primitives,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=8,
)
property_keys = st.text(st.characters(exclude_categories=()), min_size=1, max_size=20).filter(
    lambda k: k not in ("role", "is_admin", "auth_method")
) | st.sampled_from(["email", "Email", "username", "full_name", "firstName", "e-mail", "name"])

PRIMITIVE_TYPES = (str, bool, int, float)


def assert_valid_attributes(attributes: Mapping[str, Any]) -> None:
    """What the OpenTelemetry specification allows: primitives, or homogeneous arrays of them; valid UTF-8."""
    for key, value in attributes.items():
        key.encode("utf-8")
        assert value is not None, key
        if isinstance(value, tuple):
            assert value and all(isinstance(v, PRIMITIVE_TYPES) for v in value), (key, value)
            assert len({type(v) for v in value}) == 1, (key, value)
            items: tuple[Any, ...] = value
        else:
            assert isinstance(value, PRIMITIVE_TYPES), (key, type(value))
            items = (value,)
        for item in items:
            if isinstance(item, str):
                item.encode("utf-8")
            elif isinstance(item, float):
                assert not math.isnan(item), key
            elif isinstance(item, int) and not isinstance(item, bool):
                assert -(2**63) <= item < 2**63, key


def started_and_ended(pipeline: Pipeline) -> dict[str, Any]:
    with pipeline.tracer.start_as_current_span("request"):
        pass
    span = pipeline.spans()[-1]
    assert span.end_time is not None
    encode_spans([span]).SerializeToString()  # what the OTLP exporters send: must encode
    assert_valid_attributes(span.attributes or {})
    return dict(span.attributes or {})


@pytest.fixture(scope="module")
def shared_pipeline() -> Iterator[Pipeline]:
    p = make_pipeline()
    yield p
    p.provider.shutdown()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user_id=values,
    role=values,
    is_admin=values,
    auth_method=values,
    extra=st.dictionaries(property_keys, values, max_size=5),
)
def test_any_user_properties_property(
    shared_pipeline: Pipeline, user_id: object, role: object, is_admin: object, auth_method: object, extra: dict[str, object]
) -> None:
    shared_pipeline.exporter.clear()
    with user_context(user_id, role=role, is_admin=is_admin, auth_method=auth_method, **extra):
        attributes = started_and_ended(shared_pipeline)
    token = set_user(user_id, role=role, is_admin=is_admin, auth_method=auth_method, **extra)
    try:
        assert started_and_ended(shared_pipeline).get("user.id") == attributes.get("user.id")
    finally:
        clear_user(token)
    leaked = {"email", "username", "full_name", "firstname", "name"}
    assert not [k for k in attributes if k.startswith("app.user.") and k[9:].lower().replace("-", "") in leaked]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(properties=st.dictionaries(st.text(max_size=20), values, max_size=6))
def test_any_segment_properties_in_the_cache_property(shared_pipeline: Pipeline, properties: dict[str, object]) -> None:
    shared_pipeline.exporter.clear()
    shared_pipeline.segments.put("cached-user", properties)
    with user_context("cached-user", role="user"):
        attributes = started_and_ended(shared_pipeline)
    assert attributes["user.id"] == "cached-user" and attributes["app.user.role"] == "user"


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        (None, None),
        ("", None),
        (b"", None),
        (b"\xff\xfeid", "\ufffd\ufffdid"),
        ("\udcff-surrogate", "?-surrogate"),
        (42, "42"),
        (2**80, str(2**80)),
        (math.nan, "nan"),
        (BadStr(), None),
        (BadEq(), "bad-eq"),
        (BadBool(), "bad-bool"),
        ("x" * HUGE, "x" * HUGE),
    ],
    ids=short_id,
)
def test_user_ids_of_every_type(pipeline: Pipeline, user_id: object, expected: str | None) -> None:
    with user_context(user_id, role="user"):
        attributes = started_and_ended(pipeline)
    assert attributes.get("user.id") == expected
    token = set_user(user_id)
    try:
        assert (current_user() is None) == (expected is None)
    finally:
        clear_user(token)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (2**63, str(2**63)),
        (-(2**63), -(2**63)),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
        (math.nan, None),
        (b"\xffbytes", "\ufffdbytes"),
        ("\ud800", "?"),
        ([1, "a", None], None),  # mixed types: left out
        ([1, None, 2], (1, 2)),
        ([math.nan, 1.5], (1.5,)),
        ([[1], [2]], None),  # nested arrays are not attribute values
        ([{"a": 1}], None),
        ({"nested": {"dict": 1}}, None),
        ({1, 2}, None),
        (BadStr(), None),
        (BadBool(), None),
        ([], None),
    ],
    ids=short_id,
)
def test_property_values_of_every_type(pipeline: Pipeline, value: object, expected: object) -> None:
    with user_context("u1", plan=value):
        attributes = started_and_ended(pipeline)
    assert attributes.get("app.user.plan") == expected


def test_too_many_properties_leave_room_for_identity_and_the_app(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    """200 user properties and a 500-key segment: the span still names its user and keeps the app's attributes.

    The SDK keeps 128 attributes a span and evicts the oldest, one warning each: without a cap, user.id went
    first and every span logged about 80 warnings.
    """
    caplog.set_level(logging.WARNING)
    pipeline.segments.put("u1", {f"s{i}": i for i in range(500)})
    for _ in range(3):
        with user_context("u1", role="admin", **{f"k{i}": i for i in range(200)}):
            with pipeline.tracer.start_as_current_span("request") as span:
                span.set_attributes({f"http.app.{i}": i for i in range(20)})
    attributes = dict(pipeline.spans()[-1].attributes or {})
    assert attributes["user.id"] == "u1" and attributes["app.user.role"] == "admin"
    assert all(attributes[f"http.app.{i}"] == i for i in range(20))
    assert pipeline.spans()[-1].dropped_attributes == 0
    messages = [r.getMessage() for r in caplog.records]
    assert 1 <= len(messages) <= 2 and all(m.startswith("otel_segments: ") for m in messages), messages[:3]


def test_unsupported_values_warn_once_per_key(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(50):
        with user_context("u1", nested={"a": 1}, other=[[1]]):
            started_and_ended(pipeline)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("left out" in m for m in messages)


# ---------------------------------------------------------------------------------------------------------------
# Segment rules and SQL on bad rows
# ---------------------------------------------------------------------------------------------------------------

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=timezone.utc)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)  # a common "never" sentinel


def assert_sendable(segment: UserSegment) -> None:
    """No None, no NaN, no "None" id: PostHog and OTLP get only real values, and the JSON is standard."""
    assert isinstance(segment.distinct_id, str) and segment.distinct_id not in ("", "None")
    for values in (segment.set, segment.set_once):
        for key, value in values.items():
            assert value is not None, key
            assert not (isinstance(value, float) and not math.isfinite(value)), key
    json.dumps({"$set": segment.set, "$set_once": segment.set_once}, allow_nan=False)
    for name in ("account_age_days", "days_since_last_login", "total_hours_tracked"):
        assert segment.set.get(name, 0) >= 0, name


datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)) | st.sampled_from(
    [FAR_FUTURE.replace(tzinfo=None), datetime.max, datetime.min.replace(year=1, day=2)]
)
optional_datetimes = st.none() | datetimes
counts = st.integers(min_value=0, max_value=10**9)


@settings(max_examples=500, deadline=None)
@given(
    created_at=optional_datetimes,
    last_login=optional_datetimes,
    oldest=st.lists(optional_datetimes, min_size=3, max_size=3),
    entries=st.tuples(counts, counts, counts, counts),
    timer=st.none() | counts,
    manual=st.none() | counts,
    total_seconds=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    now=datetimes,
)
def test_rules_on_any_row_property(
    created_at: datetime | None,
    last_login: datetime | None,
    oldest: list[datetime | None],
    entries: tuple[int, int, int, int],
    timer: int | None,
    manual: int | None,
    total_seconds: float | None,
    now: datetime,
) -> None:
    row = UserActivity(
        "u",
        created_at=created_at,
        last_login=last_login,
        entries_24h=entries[0],
        entries_7d=entries[1],
        entries_30d=entries[2],
        entries_all_time=entries[3],
        timer_entries=timer,
        manual_entries=manual,
        total_seconds=total_seconds,
    )
    segment = person_properties(row, now=now)
    assert_sendable(segment)
    due = next_change(row, dict(zip(WINDOWS, oldest, strict=True)), now=now)
    assert due is None or due > now.replace(tzinfo=timezone.utc)


def test_future_dates_count_as_now() -> None:
    row = UserActivity("u", created_at=NOW + timedelta(days=3), last_login=FAR_FUTURE)
    segment = person_properties(row, now=NOW)
    assert segment.set["account_age_days"] == 0 and segment.set["account_age_category"] == "new"
    assert segment.set["days_since_last_login"] == 0
    assert segment.set_once["first_login"] == (NOW + timedelta(days=3)).isoformat()
    # The age ticks to 1 a day after the (future) creation date; the far-future login never ticks.
    assert next_change(row, dict.fromkeys(WINDOWS), now=NOW) == NOW + timedelta(days=4)
    assert next_change(UserActivity("u", last_login=FAR_FUTURE), dict.fromkeys(WINDOWS), now=NOW) is None


def test_far_future_activity_is_never_due_by_the_clock() -> None:
    assert next_change(UserActivity("u"), dict.fromkeys(WINDOWS, FAR_FUTURE), now=NOW) is None


@pytest.mark.parametrize("total_seconds", [math.nan, math.inf, -math.inf])
def test_non_finite_duration_total_is_left_out(total_seconds: float) -> None:
    segment = person_properties(UserActivity("u", total_seconds=total_seconds), now=NOW)
    assert "total_hours_tracked" not in segment.set


def _loose_timetracker(engine: Engine) -> dict[str, Table]:
    """TimeTracker's tables as a sloppy app has them: every column nullable, no keys but the rows' own."""
    md = MetaData()
    tables = {
        "users": Table(
            "users",
            md,
            Column("id", Integer),  # not a primary key: a view, or a legacy table
            Column("username", String(80)),
            Column("role", String(20)),
            Column("created_at", DateTime),
            Column("last_login", DateTime),
            Column("auth_provider", String(20)),
        ),
        "roles": Table("roles", md, Column("id", Integer), Column("name", String(50))),
        "user_roles": Table("user_roles", md, Column("user_id", Integer), Column("role_id", Integer)),
        "projects": Table("projects", md, Column("id", Integer), Column("status", String(20))),
        "tasks": Table("tasks", md, Column("id", Integer), Column("assigned_to", Integer), Column("status", String(20))),
        "time_entries": Table(
            "time_entries",
            md,
            Column("id", Integer, primary_key=True),
            Column("user_id", Integer),
            Column("project_id", Integer),
            Column("start_time", DateTime),
            Column("created_at", DateTime),
            Column("source", String(20)),
            Column("duration_seconds", Float),
        ),
    }
    md.create_all(engine)
    return tables


def _naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _user(uid: int | None, role: str | None, created: datetime | None, login: datetime | None, auth: str | None) -> dict:
    return {"id": uid, "username": f"name-{uid}", "role": role, "created_at": created, "last_login": login, "auth_provider": auth}


def _entry(uid: int | None, when: datetime | None, source: str | None, seconds: float | None, project: int | None = 1) -> dict:
    return {
        "user_id": uid,
        "project_id": project,
        "start_time": when,
        "created_at": when,
        "source": source,
        "duration_seconds": seconds,
    }


def _fill_bad_rows(engine: Engine) -> dict[str, Table]:
    t = _loose_timetracker(engine)
    hour = timedelta(hours=1)
    users = [
        _user(1, None, None, None, None),  # all NULL
        _user(2, "admin", _naive(NOW + timedelta(days=3)), _naive(FAR_FUTURE), "oidc"),  # in the future
        _user(3, "user", _naive(NOW - timedelta(days=40)), _naive(NOW - hour), "local"),
        _user(None, "admin", _naive(NOW), None, None),  # no id
        _user(4, "", datetime(1, 1, 2), datetime(1970, 1, 1), ""),  # ancient, empty strings
    ]
    entries = [
        _entry(1, None, None, None, project=None),  # no date, source, duration or project
        _entry(3, _naive(NOW - hour), "quantum", -7200.0),  # negative duration, unknown source
        _entry(3, _naive(NOW - 2 * hour), "timer", 3600.0),
        _entry(2, _naive(NOW + timedelta(days=1)), "manual", 60.0, project=99),  # in the future, unknown project
        _entry(2, _naive(FAR_FUTURE), "timer", 1e12, project=None),  # far in the future
        _entry(77, _naive(NOW), "timer", 1.0),  # no such user
        _entry(None, _naive(NOW), "timer", 1.0),  # no user at all
    ]
    with engine.begin() as conn:
        conn.execute(insert(t["users"]), users)
        conn.execute(insert(t["time_entries"]), entries)
        conn.execute(insert(t["roles"]), [{"id": 1, "name": "admin"}, {"id": None, "name": None}])
        conn.execute(insert(t["user_roles"]), [{"user_id": None, "role_id": 1}, {"user_id": 4, "role_id": None}])
        conn.execute(insert(t["projects"]), [{"id": 1, "status": None}, {"id": None, "status": "active"}])
        conn.execute(
            insert(t["tasks"]),
            [{"id": 1, "assigned_to": None, "status": "done"}, {"id": 2, "assigned_to": 3, "status": None}],
        )
    return t


def test_sql_pipeline_on_bad_rows(engine: Engine) -> None:
    _fill_bad_rows(engine)
    segments = {s.distinct_id: s for s in compute_segments(engine, TIMETRACKER, now=NOW, batch_size=2)}
    assert sorted(segments) == ["1", "2", "3", "4"]  # the row without an id names no one
    for segment in segments.values():
        assert_sendable(segment)

    null_user = segments["1"].set
    assert "role" not in null_user and "auth_method" not in null_user and "account_age_days" not in null_user
    assert null_user["entries_all_time"] == 1 and null_user["entries_last_30_days"] == 0  # undated: counted, in no window
    assert null_user["timer_entries_count"] == 0 and null_user["manual_entries_count"] == 0

    future = segments["2"].set
    assert future["account_age_days"] == 0 and future["days_since_last_login"] == 0
    assert future["entries_last_24h"] == 2  # future entries are inside every window

    normal = segments["3"].set
    assert normal["total_hours_tracked"] == 1.0  # the negative duration counts as nothing
    assert (normal["timer_entries_count"], normal["manual_entries_count"]) == (1, 0)  # "quantum" is neither
    assert normal["total_projects_count"] == 1 and normal["active_projects_count"] == 0

    # An incremental refresh over the same rows: no crash, and nothing changes a minute later.
    state = RefreshState(engine)
    assert refresh(engine, state, TIMETRACKER, now=NOW).computed == 4
    assert refresh(engine, state, TIMETRACKER, now=NOW + timedelta(minutes=1)).changed == 0
    assert {s.distinct_id for s in state.segments()} == {"1", "2", "3", "4"}


def test_timestamps_stored_as_text_on_sqlite(sqlite_engine: Engine) -> None:
    """SQLite keeps whatever the app wrote: unparseable dates are unknown, not a crash."""
    _loose_timetracker(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (id, role, created_at, last_login, auth_provider) VALUES "
                "(1, 'user', 'not a date', 12345, 'x'), (2, 7, '2025-06-01 10:00:00', '', NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO time_entries (user_id, start_time, created_at, source, duration_seconds) VALUES "
                "(1, 'garbage', 'garbage', 5, 'abc'), (2, '2025-06-15 11:00:00', '2025-06-15 11:00:00', 'timer', '60')"
            )
        )
    segments = {s.distinct_id: s for s in compute_segments(sqlite_engine, TIMETRACKER, now=NOW)}
    assert sorted(segments) == ["1", "2"]
    for segment in segments.values():
        assert_sendable(segment)
    assert "account_age_days" not in segments["1"].set and segments["2"].set["role"] == "7"


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    from sqlalchemy import create_engine

    eng = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield eng
    eng.dispose()


@pytest.mark.postgres
def test_infinite_timestamps_on_postgresql(postgres_database: str) -> None:
    """PostgreSQL's 'infinity' is not a Python datetime: such a row's date is unknown, and nobody else suffers."""
    from sqlalchemy import create_engine

    eng = create_engine(postgres_database)
    try:
        _loose_timetracker(eng)
        with eng.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO users (id, role, created_at, last_login) VALUES "
                    "(1, 'user', 'infinity', '-infinity'), (2, 'user', '2025-01-01', NULL)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO time_entries (user_id, start_time, created_at, source, duration_seconds) VALUES "
                    "(1, 'infinity', 'infinity', 'timer', 'NaN'), (2, '2025-06-15', '2025-06-15', 'timer', 'Infinity')"
                )
            )
        segments = {s.distinct_id: s for s in compute_segments(eng, TIMETRACKER, now=NOW)}
        assert sorted(segments) == ["1", "2"]
        for segment in segments.values():
            assert_sendable(segment)
        assert "account_age_days" not in segments["1"].set and "last_login" not in segments["1"].set
        state = RefreshState(eng)
        assert refresh(eng, state, TIMETRACKER, now=NOW).computed == 2
    finally:
        eng.dispose()


def _strict_json(raw: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def test_sinks_send_only_finite_numbers(capture: Capture, http_receiver: Receiver) -> None:
    """NaN and infinity are not JSON: the PostHog SDK sends them as null, which erases the person's property."""
    segment = UserSegment("u1", set={"ok": 1.5, "nan": math.nan, "inf": math.inf, "ninf": -math.inf}, set_once={"x": math.nan})
    PostHogSink(API_KEY, capture.host, super_properties={}).deliver([segment])
    [request] = capture.requests
    event = _strict_json(request["raw"])["batch"][0]  # type: ignore[index]
    assert event["properties"]["$set"] == {"ok": 1.5} and "$set_once" not in event["properties"]

    exporter = HttpLogExporter(endpoint=f"{http_receiver.endpoint}/v1/logs", timeout=5)
    OtlpSegmentSink(exporter).deliver([segment])
    [record] = http_receiver.logs()
    # OTLP doubles can be infinite (protobuf), never NaN: NaN equals nothing, so no backend could filter on it.
    assert {k: v for k, v in record.resource.items() if k.startswith("app.user.")} == {
        "app.user.ok": 1.5,
        "app.user.inf": math.inf,
        "app.user.ninf": -math.inf,
    }
