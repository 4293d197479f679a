"""Reading one environment variable (otel_segments.settings.values): secrets, integers, booleans, URLs, loopback."""

from __future__ import annotations

import logging

import pytest

from otel_segments.settings.otlp_variables import parse_headers
from otel_segments.settings.values import Secret, boolean, host_of, is_loopback, positive_int, read, secret


def test_secrets_equal_only_when_their_values_are() -> None:
    assert Secret("a") == Secret("a") and hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"  # a secret is not its text: comparing with a plain string never matches
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2
    assert hash(Secret("a")) != hash(Secret("b"))
    assert repr(Secret("s3cr3t")) == str(Secret("s3cr3t")) == "Secret('<redacted>')"


def test_read_strips_decodes_and_never_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    env = {"S": "  v \n", "B": b" caf\xc3\xa9 ", "I": 5, "X": Broken(), "N": None, "L": b"caf\xe9"}
    assert [read(env, name) for name in ("S", "B", "I", "X", "N", "missing")] == ["v", "café", "5", "", "", ""]
    assert read(env, "L") == "caf\udce9"  # a byte that is not UTF-8 is kept, as os.environ keeps it
    assert secret(env, "S") == Secret("v") and secret(env, "missing") is None and secret({"E": "  "}, "E") is None


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("+1", 1), (" 7 ", 7), (str(2**31 - 1), 2**31 - 1), ("", 99)])
def test_positive_int_reads_the_whole_range(raw: str, expected: int, caplog: pytest.LogCaptureFixture) -> None:
    assert positive_int({"N": raw}, "N", 99) == expected
    assert caplog.records == []


@pytest.mark.parametrize("raw", ["0", "-1", str(2**31), "1.0", "0x10", "1_000", "9" * 13, "٣", "x" * 100])
def test_positive_int_outside_the_range_is_the_default_with_one_warning(raw: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert positive_int({"N": raw}, "N", 99) == 99
    assert [r.getMessage() for r in caplog.records] == [
        f"N={raw[:64]!r} is not an integer from 1 to {2**31 - 1}; using the default 99"
    ]


@pytest.mark.parametrize("raw", ["true", "TRUE", "True", " tRuE "])
@pytest.mark.parametrize("default", [True, False])
def test_boolean_true_spellings(raw: str, default: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert boolean({"B": raw}, "B", default) is True
    assert caplog.records == []


@pytest.mark.parametrize("raw", ["false", "FALSE", "False", " fAlSe "])
@pytest.mark.parametrize("default", [True, False])
def test_boolean_false_spellings(raw: str, default: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert boolean({"B": raw}, "B", default) is False
    assert caplog.records == []


@pytest.mark.parametrize("default", [True, False])
def test_boolean_unset_is_the_default_and_garbage_warns(default: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert boolean({}, "B", default) is default and boolean({"B": " "}, "B", default) is default
    assert caplog.records == []
    assert boolean({"B": "maybe"}, "B", default) is default
    assert boolean({"B": "M" * 100}, "B", default) is default
    shown = str(default).lower()
    assert [r.getMessage() for r in caplog.records] == [
        f"B='maybe' is not true or false; using the default {shown}",
        f"B={'m' * 64!r} is not true or false; using the default {shown}",  # lower case, cut at 64
    ]


@pytest.mark.parametrize("raw", ["1", "0", "yes", "no", "on", "off", "Y", "t"])
@pytest.mark.parametrize("default", [True, False])
def test_boolean_other_spellings_are_refused_with_a_warning(raw: str, default: bool, caplog: pytest.LogCaptureFixture) -> None:
    """The specification's rule, as for OTEL_SDK_DISABLED: ``1`` or ``yes`` is not read as true, and says so."""
    caplog.set_level(logging.WARNING)
    assert boolean({"B": raw}, "B", default) is default
    assert [r.getMessage() for r in caplog.records] == [
        f"B={raw.lower()!r} is not true or false; using the default {str(default).lower()}"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("authorization=Basic dXNlcjpwYXNz", {"authorization": "Basic dXNlcjpwYXNz"}),
        ("authorization=Basic YWJjZA==", {"authorization": "Basic YWJjZA=="}),  # base64 padding: split at the first =
        ("x-key=a=b=c,x-other=1", {"x-key": "a=b=c", "x-other": "1"}),
        ("X-Team = core , , x-env=prod%20eu", {"x-team": "core", "x-env": "prod eu"}),
        ("k%3Dx=v", {"k=x": "v"}),
    ],
)
def test_headers_split_at_the_first_equals_sign(raw: str, expected: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    assert parse_headers("H", raw) == expected
    assert caplog.records == []


def test_one_malformed_header_item_is_one_warning_in_the_singular(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_headers("H", "ok=1,broken") == {"ok": "1"}
    assert [r.getMessage() for r in caplog.records] == [
        "H has 1 malformed item (expected key=value without control characters); skipping it"
    ]


@pytest.mark.parametrize("raw", ["a b=1", "é=1", "k=a%0Ab", "=v", "k", "k=¡", "k=%C3%A9"])
def test_malformed_header_items(raw: str) -> None:
    assert parse_headers("H", raw) == {}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("localhost.", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("127.attacker.example", False),
        ("localhost.attacker.example", False),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("", False),
    ],
)
def test_loopback_by_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://Collector:4318/x", "collector"),
        ("collector:4317", "collector"),
        ("http://[::1]:4318", "::1"),
        ("http://[::1", ""),
        ("http://", ""),
    ],
)
def test_host_of(url: str, host: str) -> None:
    assert host_of(url) == host
