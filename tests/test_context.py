"""Who the user is and what leaves the process (otel_segments.spans.context): person keys, caps, attribute values."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
from collections.abc import Iterator

import pytest

from otel_segments.spans import context
from otel_segments.spans.context import (
    MAX_USER_PROPERTIES,
    UserProperties,
    attribute_value,
    clear_user,
    current_user,
    set_user,
    user_context,
)
from otel_segments.spans.privacy import is_pii_key, pii_allowed, pseudonymize, set_privacy_policy, user_id_hash_key

#: Every key README and the privacy docs promise to drop, spelled as documented.
PERSON_KEYS = [
    "name",
    "full_name",
    "first_name",
    "last_name",
    "display_name",
    "username",
    "user_name",
    "email",
    "email_address",
    "phone",
    "phone_number",
    "address",
    "ip",
    "ip_address",
]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(context, "_warned_keys", set())
    set_privacy_policy()
    yield
    set_privacy_policy()
    clear_user()


@pytest.mark.parametrize("key", PERSON_KEYS)
def test_each_documented_person_key_is_dropped(key: str) -> None:
    for spelling in (key, key.upper(), key.replace("_", "-"), key.replace("_", " ").title(), key.replace("_", ".")):
        assert is_pii_key(spelling), spelling
    attributes = UserProperties("u", **{key: "Ann Example", "plan": "pro"}).attributes
    assert attributes == {"app.user.plan": "pro", "user.id": "u"}


@pytest.mark.parametrize("key", ["plan", "team_id", "names", "nameplate", "ip_range", "email_verified", "role_name", "addr"])
def test_other_keys_are_not_person_keys(key: str) -> None:
    assert not is_pii_key(key)


def test_camel_case_and_spaced_person_keys() -> None:
    assert all(is_pii_key(k) for k in ("firstName", "LastName", "E-Mail", "Full Name", "phoneNumber", "IPAddress"))


def test_allow_pii_keeps_person_keys() -> None:
    set_privacy_policy(allow_pii=True)
    assert pii_allowed()
    assert UserProperties("u", email="a@b.c").attributes["app.user.email"] == "a@b.c"
    set_privacy_policy()
    assert not pii_allowed()


def test_a_person_key_drops_itself_only_never_the_keys_after_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    attributes = UserProperties("u", email="a@b.c", plan="pro", skipped=None, team_id=7, phone="1", tier="gold").attributes
    assert attributes == {"app.user.plan": "pro", "app.user.team_id": 7, "app.user.tier": "gold", "user.id": "u"}
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "otel_segments: user property 'email' names a person; it is not sent (allow_pii=False)",
        "otel_segments: user property 'phone' names a person; it is not sent (allow_pii=False)",
    ]


def test_exactly_32_user_properties_are_sent_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    extra = {f"p{i:02}": i for i in range(MAX_USER_PROPERTIES)}
    attributes = UserProperties("u", role="admin", **extra).attributes
    assert [k for k in attributes if k.startswith("app.user.p")] == [f"app.user.p{i:02}" for i in range(32)]
    assert caplog.records == []


def test_the_33rd_user_property_is_left_out_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    extra = {f"p{i:02}": i for i in range(MAX_USER_PROPERTIES + 5)}
    attributes = UserProperties("u", role="admin", is_admin=True, auth_method="oidc", **extra).attributes
    assert [k for k in attributes if k.startswith("app.user.p")] == [f"app.user.p{i:02}" for i in range(32)]
    # the id, role, admin flag and auth method are never what the cap pushes out
    assert attributes["user.id"] == "u" and attributes["user.roles"] == ("admin",) and attributes["app.user.role"] == "admin"
    assert attributes["app.user.is_admin"] is True and attributes["app.user.auth_method"] == "oidc"
    assert list(attributes)[-1] == "user.id"  # last: a span out of room loses the oldest attributes first
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: more than 32 user properties; the rest are not sent (a span has room for 128)"
    ]
    UserProperties("v", **extra)
    assert len(caplog.records) == 1  # once per process


def test_left_out_values_do_not_count_against_the_cap() -> None:
    extra = {"none": None, "email": "x", "nested": {"a": 1}, **{f"p{i:02}": i for i in range(MAX_USER_PROPERTIES)}}
    attributes = UserProperties("u", **extra).attributes
    assert len([k for k in attributes if k.startswith("app.user.p")]) == 32


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (0, 0),
        (2**63 - 1, 2**63 - 1),
        (2**63, str(2**63)),
        (-(2**63), -(2**63)),
        (-(2**63) - 1, str(-(2**63) - 1)),
        (1.5, 1.5),
        (math.inf, math.inf),
        ("text", "text"),
        ("caf\udce9", "caf?"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff", "\ufffd"),
        ([1, 2], (1, 2)),
        (("a", None, "b"), ("a", "b")),
        ([True, False], (True, False)),
        ([], None),
        ([None], None),
        (None, None),
    ],
)
def test_attribute_values(value: object, expected: object) -> None:
    result = attribute_value("k", value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("value", [math.nan, [1, "a"], [[1], [2]], {"a": 1}, {1, 2}, object()])
def test_values_a_span_cannot_hold_are_left_out(value: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert attribute_value("k", value) is None
    if value is not math.nan:
        assert [r.getMessage() for r in caplog.records] == [
            f"otel_segments: user property 'k' has an unsupported type {type(value).__name__}; it is left out"
        ]


def test_warnings_per_key_are_bounded(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for i in range(1005):
        attribute_value(f"k{i}", object())
    assert len(caplog.records) == 1000
    attribute_value("k0", object())
    assert len(caplog.records) == 1000


def test_role_admin_flag_and_auth_method() -> None:
    attributes = UserProperties(7, role="editor", is_admin=False, auth_method="saml").attributes
    assert attributes == {
        "user.roles": ("editor",),
        "app.user.role": "editor",
        "app.user.is_admin": False,
        "app.user.auth_method": "saml",
        "user.id": "7",
    }
    assert UserProperties("u", role=5).attributes == {"user.id": "u"}  # a role is text


def test_is_admin_must_be_a_bool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert "app.user.is_admin" not in UserProperties("u", is_admin="yes").attributes
    assert [r.getMessage() for r in caplog.records] == ["otel_segments: is_admin must be a bool, got str; it is left out"]


def test_the_hash_key_pseudonymizes_ids() -> None:
    assert pseudonymize("42") == "42" and user_id_hash_key() is None
    set_privacy_policy(hash_key=b"k")
    expected = hmac.new(b"k", b"42", hashlib.sha256).hexdigest()
    assert user_id_hash_key() == b"k" and pseudonymize("42") == expected
    assert UserProperties(42).attributes["user.id"] == expected
    assert UserProperties(42).user_id == "42"  # the segment cache keeps the real id inside the process


@pytest.mark.parametrize("user_id", [None, "", b""])
def test_no_user_id_is_no_user(user_id: object) -> None:
    with user_context(user_id) as props:
        assert props is None and current_user() is None


def test_an_id_that_cannot_be_read_is_no_user(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    caplog.set_level(logging.WARNING)
    set_user(Broken())
    assert current_user() is None
    assert caplog.records[0].getMessage() == "otel_segments: could not read the user's properties; the span carries none"


def test_contexts_nest_and_restore() -> None:
    with user_context("a") as outer:
        assert current_user() is outer and outer.user_id == "a"
        with user_context("b"):
            assert current_user().user_id == "b"
        assert current_user() is outer
    assert current_user() is None
    reused = user_context("c")
    with reused, reused:
        assert current_user().user_id == "c"
    assert current_user() is None


def test_set_user_and_clear_user_with_and_without_token() -> None:
    first = set_user("a")
    second = set_user("b")
    assert current_user().user_id == "b"
    clear_user(second)
    assert current_user().user_id == "a"
    clear_user(first)
    assert current_user() is None
    set_user("c")
    clear_user()
    assert current_user() is None


def test_a_token_from_another_context_clears_the_user() -> None:
    import contextvars

    token = contextvars.copy_context().run(set_user, "elsewhere")
    set_user("here")
    clear_user(token)
    assert current_user() is None


def test_decorator_sync_and_async() -> None:
    @user_context("s", role="r")
    def sync(x: int) -> tuple[int, str | None]:
        user = current_user()
        return x, None if user is None else user.user_id

    @user_context("a")
    async def coroutine(x: int) -> tuple[int, str | None]:
        user = current_user()
        return x, None if user is None else user.user_id

    assert sync(1) == (1, "s") and sync.__name__ == "sync"
    assert asyncio.run(coroutine(2)) == (2, "a") and coroutine.__name__ == "coroutine"
    assert current_user() is None

    @user_context("e")
    def raises() -> None:
        raise ValueError("app error")

    with pytest.raises(ValueError):
        raises()
    assert current_user() is None


def test_repr_shows_the_id_only() -> None:
    assert repr(UserProperties("u", plan="pro")) == "UserProperties(user_id='u')"


def test_warnings_about_values_carry_no_traceback_and_a_broken_id_does(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    caplog.set_level(logging.WARNING)
    UserProperties("u", nested={"a": 1})
    set_user(Broken())
    unsupported, unreadable = caplog.records
    assert not unsupported.exc_info
    assert unreadable.exc_info is not None and unreadable.exc_info[0] is RuntimeError
