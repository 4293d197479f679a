"""Django REST Framework: the user DRF's authentication classes found, on the request's spans, with no code.

DRF authenticates inside the view (``APIView.initial`` reads ``request.user``),
after Django's middleware ran, so a token or JWT request is anonymous to
:class:`~otel_segments.integrations.django.UserContextMiddleware`. Under
``opentelemetry-instrument`` the ``otel_segments_drf`` instrumentor wraps
``rest_framework.request.Request._authenticate``, the one place where DRF asks
its authenticators and sets ``request.user``, and reads what they returned
afterwards: the app's authentication (a token look-up, a JWT check) never runs
a second time. The authenticated user is the request's for the rest of it, and
its server span gets them too. ``auth_method`` names the authenticator that
succeeded: ``session``, ``token``, ``basic``, ``jwt`` (the class name without
``Authentication``, lowercased), unless the user model has its own.

It rides on the Django integration's request scope (``otel_segments_django``),
which restores the user when the response is ready: where that one is off, or
left the request to a user the app set itself, this does nothing, so a pooled
thread never keeps a user. Nothing is imported until the app imports DRF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import report_once, switch_user
from .django import django_user_info

_MODULE = "rest_framework.request"
#: Where stock authenticators live (DRF's own, Simple JWT's, and a few other packages), and the bases that name nothing.
_STOCK = ("rest_framework.", "rest_framework_simplejwt.", "knox.", "oauth2_provider.", "dj_rest_auth.")
_BASES = frozenset({"BaseAuthentication", "object"})


def auth_method(authenticator: object) -> str:
    """``TokenAuthentication`` -> ``token``, ``JWTAuthentication`` -> ``jwt``: short, and free of anything personal.

    An app's subclass of a stock authenticator (a counting or caching
    ``TokenAuthentication``) is named by the stock one; an authenticator of the
    app's own by its own class.
    """
    cls = type(authenticator)
    named = next((c for c in cls.__mro__ if c.__module__.startswith(_STOCK) and c.__name__ not in _BASES), cls)
    name = named.__name__
    return (name.removesuffix("Authentication") or name).lower()


def _authenticated(request: Any) -> None:
    """After DRF's own authentication: switch the request to the user it found (an anonymous result changes nothing)."""
    try:
        authenticator = getattr(request, "_authenticator", None)
        if authenticator is None:
            return
        info = django_user_info(getattr(request, "_user", None))
        if info is None:
            return
        info.setdefault("auth_method", auth_method(authenticator))
        switch_user(info)
    except Exception:  # noqa: BLE001 - the app's request must not fail because of us
        report_once("drf.authenticate", "reading the user DRF authenticated failed")


def _authenticate(wrapped: Callable[..., Any], request: Any, args: Any, kwargs: Any) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        _authenticated(request)


def _hook(module: Any) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "Request._authenticate", _authenticate)


def instrument() -> None:
    """Wrap ``Request._authenticate`` when DRF is imported (at once if it is already)."""
    import wrapt

    wrapt.register_post_import_hook(_hook, _MODULE)


def uninstrument() -> None:
    import sys

    from opentelemetry.instrumentation.utils import unwrap

    module = sys.modules.get(_MODULE)
    if module is not None:
        unwrap(module.Request, "_authenticate")
