"""What of a user's identity may leave the process: keys that name a person, and the id itself or its keyed hash.

The policy is set once by ``configure()`` (``allow_pii``, ``OTEL_SEGMENTS_USER_ID_HASH_KEY``) and read by every
part that sends user data: the span attributes (``context``), the segment cache, PostHog and the OTLP records.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

#: Keys that name a person. They are dropped from user properties unless the app
#: opts in with ``allow_pii=True`` (``configure(allow_pii=True)``).
PII_KEYS = frozenset(
    {
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
    }
)

_PII_NAMES = frozenset(k.replace("_", "") for k in PII_KEYS)
_SEPARATORS = str.maketrans("", "", "_-. ")

_policy: dict[str, Any] = {"hash_key": None, "allow_pii": False}


def set_privacy_policy(*, hash_key: bytes | None = None, allow_pii: bool = False) -> None:
    """Choose how identity leaves the process: ``hash_key`` sends an HMAC-SHA256 of each user id instead of the id."""
    _policy["hash_key"] = hash_key
    _policy["allow_pii"] = allow_pii


def pii_allowed() -> bool:
    """Whether the app opted in to sending keys that name a person (``configure(allow_pii=True)``)."""
    return bool(_policy["allow_pii"])


def user_id_hash_key() -> bytes | None:
    """The key user ids are hashed with, or None: for caches whose entries depend on the policy."""
    return _policy["hash_key"]


def is_pii_key(key: str) -> bool:
    """Whether ``key`` names a person, whatever its case and separators (``firstName``, ``e-mail``, ``Full Name``)."""
    return key.lower().translate(_SEPARATORS) in _PII_NAMES


def pseudonymize(user_id: str) -> str:
    """The id as it leaves the process: itself, or its keyed hash when a hash key is set."""
    key = _policy["hash_key"]
    if key is None:
        return user_id
    return hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
