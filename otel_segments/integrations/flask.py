"""Flask: the user context for each request, from Flask-Login with no code, or from ``init_app(app)``.

Under ``opentelemetry-instrument`` with Flask-Login installed, the
``otel_segments_flask`` instrumentor calls :func:`instrument`: every Flask app
(app factories and ``flask run`` included) that has a ``LoginManager`` gets the
user context, nothing to write (unless the app set a user itself: that one is
kept). It reads ``current_user`` once the app's
``before_request`` hooks have run (``Flask.preprocess_request``): the Flask
instrumentation starts the server span in its own ``before_request`` hook, so
the span exists and is current by then, and the user loader's query is one of
its children. Reading the user any earlier (the ``request_started`` signal)
would run that query before the server span, as a trace of its own.

``init_app(app)`` does the same for one app, with your own ``user_loader`` if
you want one; an app that calls it is left to it. Call it after the hooks that
authenticate (``LoginManager.init_app`` and any ``before_request`` of your own
that loads the user): Flask runs ``before_request`` functions in registration order.

A ``login_user()`` during the request switches the context at once, and the
request's server span gets the new user even when the login runs inside a span
of the app's own; a ``logout_user()`` clears it for the rest of the request.

A function wrapped in ``copy_current_request_context`` and run in a thread or a
greenlet gets the request's user too: neither inherits the request's context
variables, so the copy (``RequestContext.copy``) takes the user it was made
for, and each push of the copy sets that user until its pop. Whoever runs the
copy, a thread, a greenlet or the request itself, ends nothing of the request's:
a scope is ended only by the request context that began it, not by a copy or a
nested context that shares its ``g`` or its request. Both hooks install this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask

from ..spans.context import UserProperties, carry_user, clear_user, current_user
from . import RequestScope, UserInfo, end_request, report_once, start_request, switch_user, user_info

_SCOPE = "_otel_segments_request"
_EXTENSION = "otel_segments"
_CARRIED = "_otel_segments_user"  # on a copied RequestContext: the user it was copied for, and its pushes' tokens


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
    follow_login = user_loader is None and loader is not None

    def before_request() -> None:
        try:
            info = loader() if loader is not None else None
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("flask.user_loader", "the Flask user loader raised")
            info = None
        _start(info, follow_login)

    app.before_request(before_request)
    app.teardown_request(_end)
    _follow_copies()
    if follow_login:
        _connect_login_signals()


def instrument() -> None:
    """Give every Flask app with a Flask-Login ``LoginManager`` the user context (the instrumentor calls this)."""
    import wrapt

    wrapt.wrap_function_wrapper(flask.app.Flask, "preprocess_request", _after_before_request_hooks)
    flask.request_tearing_down.connect(_end, weak=False)
    _follow_copies()
    _connect_login_signals()


def uninstrument() -> None:
    """Undo :func:`instrument`. The login receivers and the copy hooks stay: ``init_app`` apps share them."""
    from opentelemetry.instrumentation.utils import unwrap

    unwrap(flask.app.Flask, "preprocess_request")
    flask.request_tearing_down.disconnect(_end)


def _after_before_request_hooks(wrapped: Callable[..., Any], app: flask.Flask, args: Any, kwargs: Any) -> Any:
    response = wrapped(*args, **kwargs)
    try:
        if (
            _EXTENSION not in app.extensions
            and getattr(app, "login_manager", None) is not None
            and current_user() is None  # an app that says who the user is itself (set_user, a middleware) wins
            and _SCOPE not in flask.g
        ):
            try:
                info = _flask_login_user()
            except Exception:  # noqa: BLE001
                report_once("flask.current_user", "reading Flask-Login's current_user failed")
                info = None
            _start(info, follow_login=True)
    except Exception:  # noqa: BLE001 - whatever happens here, the request goes on
        report_once("flask.instrument", "setting the Flask request's user failed")
    return response


def _start(info: UserInfo | None, follow_login: bool) -> None:
    try:
        scope = start_request(info, follow_login=follow_login)
    except Exception:  # noqa: BLE001
        report_once("flask.activate", "the Flask user loader returned something that is not a user")
        return
    setattr(flask.g, _SCOPE, (scope, _request_context()))


def _request_context() -> Any:
    return flask.globals.request_ctx._get_current_object()


def _end(*_: Any, **__: Any) -> None:
    """``teardown_request`` hook and ``request_tearing_down`` receiver: whichever runs first restores.

    Only the request context that began the scope ends it: a nested one
    (``with app.test_request_context(...)`` in a view, to build a URL) shares
    ``g`` with the outer request, and a ``copy_current_request_context`` copy
    called in the request's own thread shares ``g`` and the request object; the
    teardown of either must leave the outer user alone.
    """
    held: tuple[RequestScope, Any] | None = flask.g.get(_SCOPE)
    if held is None or held[1] is not _request_context():
        return
    flask.g.pop(_SCOPE, None)
    end_request(held[0])


def _flask_login_user() -> UserInfo | None:
    import flask_login

    return user_info(flask_login.current_user._get_current_object())


def _flask_login_loader() -> Callable[[], UserInfo | None] | None:
    try:
        import flask_login  # noqa: F401
    except ImportError:
        return None
    return _flask_login_user


def _connect_login_signals() -> None:
    """One receiver for every app (connecting it twice keeps one): it acts only inside a request that follows logins."""
    import flask_login

    flask_login.user_logged_in.connect(_logged_in, weak=False)
    flask_login.user_logged_out.connect(_logged_out, weak=False)


def _logged_in(sender: Any, user: Any = None, **_: Any) -> None:
    if not flask.has_request_context():
        return
    try:
        switch_user(user_info(user))
    except Exception:  # noqa: BLE001
        report_once("flask.login_signal", "reading the user who just logged in failed")


def _logged_out(sender: Any, **_: Any) -> None:
    if not flask.has_request_context():
        return
    try:
        switch_user(None)
    except Exception:  # noqa: BLE001
        report_once("flask.logout_signal", "clearing the user who just logged out failed")


_copies_followed = False


def _follow_copies() -> None:
    """Wrap ``RequestContext.copy``, ``push`` and ``pop`` once for the process: a copy carries its request's user."""
    global _copies_followed
    if _copies_followed:
        return
    import wrapt

    _copies_followed = True
    wrapt.wrap_function_wrapper(flask.ctx.RequestContext, "copy", _copy)
    wrapt.wrap_function_wrapper(flask.ctx.RequestContext, "push", _push)
    wrapt.wrap_function_wrapper(flask.ctx.RequestContext, "pop", _pop)


def _copy(wrapped: Callable[..., Any], ctx: Any, args: Any, kwargs: Any) -> Any:
    copied = wrapped(*args, **kwargs)
    user = current_user()
    if user is not None:
        setattr(copied, _CARRIED, (user, []))
    return copied


def _push(wrapped: Callable[..., Any], ctx: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    carried: tuple[UserProperties, list[Any]] | None = getattr(ctx, _CARRIED, None)
    if carried is not None:
        carried[1].append(carry_user(carried[0]))
    return result


def _pop(wrapped: Callable[..., Any], ctx: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)  # the teardown hooks run in here, with the user still set
    finally:
        carried: tuple[UserProperties, list[Any]] | None = getattr(ctx, _CARRIED, None)
        if carried is not None and carried[1]:
            clear_user(carried[1].pop())
