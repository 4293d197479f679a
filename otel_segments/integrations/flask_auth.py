"""Flask-JWT-Extended and Flask-HTTPAuth: the user they authenticated, on the request's spans, with no code.

Both authenticate inside the view (a decorator: ``@jwt_required()``,
``@auth.login_required``), after every ``before_request`` hook, and both keep
what they found for the rest of the request. Under ``opentelemetry-instrument``
the ``otel_segments_flask_jwt`` and ``otel_segments_flask_httpauth``
instrumentors read it right after their own check, which never runs twice:

- Flask-JWT-Extended: after ``verify_jwt_in_request`` (which ``jwt_required``
  calls) succeeds, the user its ``user_lookup_loader`` loaded (read from
  ``g._jwt_extended_jwt_user``, not loaded again), else the token's identity.
- Flask-HTTPAuth: after an auth class's ``authenticate`` returns (basic, digest
  or token; ``MultiAuth`` picks one of them), what its ``verify_*`` callback returned.

A user object gives its id (``get_id()``, ``pk`` or ``id``), ``role``,
``is_admin``; a mapping its ``id``, ``role``, ``is_admin`` keys. A bare identity
(a JWT ``sub``, or the username Flask-HTTPAuth keeps when a callback returns
``True``) is sent only when it is an integer or a UUID, or when user ids are
hashed (``OTEL_SEGMENTS_USER_ID_HASH_KEY``): apps often make usernames or
e-mails their identity, and those must not leave the process. Otherwise one
warning says so and the request has no user. ``auth_method`` is ``jwt``,
``basic``, ``digest`` or ``token``.

The user is the request's from then on, server span included; the Flask
integration's request scope restores the one before when the request ends.
A request whose user the app set itself, or whose ``init_app`` loader decided,
is left alone; in one that follows Flask-Login, this user wins, as a login would.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flask

from ..spans.context import current_user
from ..spans.privacy import user_id_hash_key
from . import UserInfo, report_once, switch_user, user_info
from .flask import _SCOPE, _end, _start

_logger = logging.getLogger(__name__)
_JWT_MODULE = "flask_jwt_extended.view_decorators"
_HTTPAUTH_MODULE = "flask_httpauth"
_HTTPAUTH_CLASSES = {"HTTPBasicAuth": "basic", "HTTPDigestAuth": "digest", "HTTPTokenAuth": "token"}
_KEY_LIKE = re.compile(r"\d{1,19}|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_warned: set[str] = set()


def identity_user(identity: Any, auth_method: str) -> UserInfo | None:
    """A bare identity as the user, when it cannot name a person (an integer or a UUID) or ids are hashed."""
    if isinstance(identity, bool) or identity is None:
        return None
    if isinstance(identity, int) or (isinstance(identity, str) and _KEY_LIKE.fullmatch(identity)):
        return {"user_id": identity, "auth_method": auth_method}
    if isinstance(identity, str) and identity and user_id_hash_key() is not None:
        return {"user_id": identity, "auth_method": auth_method}
    if auth_method not in _warned:
        _warned.add(auth_method)
        _logger.warning(
            "otel_segments: the %s identity is not an integer or a UUID and may name a person, so it is not sent; "
            "return a user object from the app's user callback, or set OTEL_SEGMENTS_USER_ID_HASH_KEY to send it hashed",
            auth_method,
        )
    return None


def object_user(user: Any, auth_method: str) -> UserInfo | None:
    """An authenticated user object or mapping as the user: its id, role and admin flag, nothing that names them."""
    if isinstance(user, Mapping):
        if user.get("id") is None:
            return None
        info = {"user_id": user["id"], **{k: user[k] for k in ("role", "is_admin") if k in user}}
    else:
        info = user_info(user, authenticated=True)
        if info is None:
            return None
    info.setdefault("auth_method", auth_method)
    return info


def _authenticated(info: UserInfo | None) -> None:
    """Make ``info`` the request's user: in a request scope that follows logins, or in one of its own."""
    if info is None or not flask.has_request_context():
        return
    if _SCOPE in flask.g:
        switch_user(info)  # a scope that follows logins takes it; an init_app loader's keeps its own
    elif current_user() is None:  # an app that set its user itself keeps it
        _start(info, follow_login=True)


def _after_jwt(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    verified = wrapped(*args, **kwargs)
    try:
        if verified is not None:
            loaded = (flask.g.get("_jwt_extended_jwt_user") or {}).get("loaded_user")
            _header, claims = verified
            info = object_user(loaded, "jwt") if loaded is not None else None
            _authenticated(info or identity_user(claims.get(_identity_claim()), "jwt"))
    except Exception:  # noqa: BLE001 - the app's request must not fail because of us
        report_once("flask_jwt.authenticated", "reading the user Flask-JWT-Extended verified failed")
    return verified


def _identity_claim() -> str:
    return str(flask.current_app.config.get("JWT_IDENTITY_CLAIM", "sub"))


def _after_authenticate(method: str) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        user = wrapped(*args, **kwargs)
        try:
            if user not in (False, None):
                auth = args[0] if args else kwargs.get("auth")
                if user is True or isinstance(user, str | int):  # the username, or what the callback named
                    _authenticated(identity_user(getattr(auth, "username", None) if user is True else user, method))
                else:
                    _authenticated(object_user(user, method))
        except Exception:  # noqa: BLE001
            report_once("flask_httpauth.authenticated", "reading the user Flask-HTTPAuth authenticated failed")
        return user

    return wrapper


def _hook_jwt(module: Any) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "verify_jwt_in_request", _after_jwt)


def _hook_httpauth(module: Any) -> None:
    import wrapt

    for name, method in _HTTPAUTH_CLASSES.items():
        wrapt.wrap_function_wrapper(module, f"{name}.authenticate", _after_authenticate(method))


def instrument_jwt() -> None:
    """Read Flask-JWT-Extended's user after its check, once it is imported (at once if it is already)."""
    import wrapt

    flask.request_tearing_down.connect(_end, weak=False)  # the scope started here ends with the request
    wrapt.register_post_import_hook(_hook_jwt, _JWT_MODULE)


def uninstrument_jwt() -> None:
    from opentelemetry.instrumentation.utils import unwrap

    module = sys.modules.get(_JWT_MODULE)
    if module is not None:
        unwrap(module, "verify_jwt_in_request")


def instrument_httpauth() -> None:
    """Read Flask-HTTPAuth's user after each auth class's check, once it is imported (at once if it is already)."""
    import wrapt

    flask.request_tearing_down.connect(_end, weak=False)
    wrapt.register_post_import_hook(_hook_httpauth, _HTTPAUTH_MODULE)


def uninstrument_httpauth() -> None:
    from opentelemetry.instrumentation.utils import unwrap

    module = sys.modules.get(_HTTPAUTH_MODULE)
    if module is not None:
        for name in _HTTPAUTH_CLASSES:
            unwrap(getattr(module, name), "authenticate")
