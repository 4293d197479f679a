"""Flask: ``init_app(app)`` sets the user context for each request and clears it at teardown.

Call it after the hooks that authenticate (``LoginManager.init_app`` and any
``before_request`` of your own that loads the user): Flask runs ``before_request``
functions in registration order. Under ``opentelemetry-instrument`` the Flask
instrumentation registers its hook first, so the server span already exists and
is current when ours runs; we write the user's attributes onto it too.

With Flask-Login and no ``user_loader``, the user is ``flask_login.current_user``.
A login during the request (``login_user``) switches the context at once, so the
rest of that request's spans carry the new user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask

from ..context import clear_user
from . import UserInfo, activate, report_once, user_info

_TOKEN = "_otel_segments_user_token"
_EXTENSION = "otel_segments"


def init_app(app: flask.Flask, user_loader: Callable[[], UserInfo | None] | None = None) -> None:
    """Track the request's user on ``app``'s spans.

    ``user_loader()`` runs inside the request and returns ``set_user`` keyword
    arguments (``{"user_id": ..., "role": ...}``) or None for an anonymous request.
    Without it, Flask-Login's ``current_user`` is read (id, role, is_admin,
    auth_method / auth_provider; never names or emails). A loader that raises is
    logged once and the request goes on without user properties.
    """
    if _EXTENSION in app.extensions:
        return
    loader = user_loader or _flask_login_loader()
    app.extensions[_EXTENSION] = loader

    def before_request() -> None:
        try:
            info = loader() if loader is not None else None
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("flask.user_loader", "the Flask user loader raised")
            info = None
        _start(info)

    def teardown_request(exc: BaseException | None) -> None:
        token = flask.g.pop(_TOKEN, None)
        if token is not None:
            clear_user(token)

    app.before_request(before_request)
    app.teardown_request(teardown_request)
    if user_loader is None and loader is not None:
        _connect_login_signal(app)


def _start(info: UserInfo | None) -> None:
    try:
        token = activate(info)
    except Exception:  # noqa: BLE001
        report_once("flask.activate", "the Flask user loader returned something that is not a user")
        return
    if _TOKEN not in flask.g:  # the first value of the request is the one teardown restores from
        setattr(flask.g, _TOKEN, token)


def _flask_login_loader() -> Callable[[], UserInfo | None] | None:
    try:
        import flask_login
    except ImportError:
        return None

    def load() -> UserInfo | None:
        return user_info(flask_login.current_user._get_current_object())

    return load


def _connect_login_signal(app: flask.Flask) -> None:
    import flask_login

    def logged_in(sender: Any, user: Any = None, **_: Any) -> None:
        if not flask.has_request_context():
            return
        try:
            info = user_info(user)
        except Exception:  # noqa: BLE001
            report_once("flask.login_signal", "reading the user who just logged in failed")
            return
        _start(info)

    flask_login.user_logged_in.connect(logged_in, app, weak=False)
