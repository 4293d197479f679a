"""Instrumentors that ``opentelemetry-instrument`` loads: the user context for Flask-Login, Flask-JWT-Extended,
Flask-HTTPAuth, Django, DRF, Starlette, no code.

Registered under the ``opentelemetry_instrumentor`` entry point as
``otel_segments_flask``, ``otel_segments_flask_jwt``, ``otel_segments_flask_httpauth``,
``otel_segments_django``, ``otel_segments_drf`` and ``otel_segments_starlette``, so
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_segments_flask`` turns one off by
name, as for the contrib instrumentations. What each one hooks is described in
:mod:`otel_segments.integrations.flask`, :mod:`otel_segments.integrations.flask_auth`,
:mod:`otel_segments.integrations.django`,
:mod:`otel_segments.integrations.rest_framework` and :mod:`otel_segments.integrations.starlette`.

Three rules, each from how the launcher treats instrumentors:

- This module imports neither framework: the launcher loads every registered
  instrumentor, and contrib 0.48b0 aborts the app's start-up on any exception
  from one (0.66b1 logs an ``ImportError`` with a traceback). A framework that is
  missing or outside ``instrumentation_dependencies()`` means doing nothing, quietly.
- The launcher checks dependencies per distribution (its ``instruments`` extra),
  and ours ships two instrumentors with different ones, so each checks its own.
- The plugin's gate decides (``configure()``, idempotent: under the launcher a
  configurator has run already). When it is closed nothing is hooked: reading the
  user runs the app's user-loading query, and the closed gate promises no work.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

_logger = logging.getLogger(__name__)


class _UserContextInstrumentor(BaseInstrumentor):
    _name = ""
    _dependencies: tuple[str, ...] = ()
    _hooked = False  # per subclass: BaseInstrumentor makes each one a singleton

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._dependencies

    def _instrument(self, **kwargs: Any) -> None:
        try:
            conflict = get_dependency_conflicts(self._dependencies)
            if conflict is not None:
                _logger.debug("otel_segments: %s is off: %s", self._name, conflict)
                return
            from ..configuration import configure_instrumented

            if not configure_instrumented().enabled:
                return
            self._hook()
            self._hooked = True
        except Exception:
            _logger.exception("otel_segments: %s could not hook in; the app runs without it", self._name)

    def _uninstrument(self, **kwargs: Any) -> None:
        if not self._hooked:
            return
        self._hooked = False
        try:
            self._unhook()
        except Exception:
            _logger.exception("otel_segments: %s could not unhook", self._name)

    def _hook(self) -> None:
        raise NotImplementedError

    def _unhook(self) -> None:
        raise NotImplementedError


class FlaskLoginInstrumentor(_UserContextInstrumentor):
    """Every Flask app with a Flask-Login ``LoginManager`` gets the request's user on its spans."""

    _name = "otel_segments_flask"
    _dependencies = ("flask >= 3", "flask-login >= 0.6")  # the flask extra's minimum, the oldest release CI tests

    def _hook(self) -> None:
        from . import flask

        flask.instrument()

    def _unhook(self) -> None:
        from . import flask

        flask.uninstrument()


class FlaskJWTInstrumentor(_UserContextInstrumentor):
    """Every Flask-JWT-Extended request gets the user its ``jwt_required`` check verified."""

    _name = "otel_segments_flask_jwt"
    _dependencies = ("flask >= 3", "flask-jwt-extended >= 4.6")

    def _hook(self) -> None:
        from . import flask_auth

        flask_auth.instrument_jwt()

    def _unhook(self) -> None:
        from . import flask_auth

        flask_auth.uninstrument_jwt()


class FlaskHTTPAuthInstrumentor(_UserContextInstrumentor):
    """Every Flask-HTTPAuth request gets the user its ``login_required`` check authenticated."""

    _name = "otel_segments_flask_httpauth"
    _dependencies = ("flask >= 3", "flask-httpauth >= 4.8")

    def _hook(self) -> None:
        from . import flask_auth

        flask_auth.instrument_httpauth()

    def _unhook(self) -> None:
        from . import flask_auth

        flask_auth.uninstrument_httpauth()


class DjangoAuthInstrumentor(_UserContextInstrumentor):
    """Every Django handler gets ``UserContextMiddleware`` after its authentication middleware."""

    _name = "otel_segments_django"
    _dependencies = ("django >= 4.2",)

    def _hook(self) -> None:
        from . import django

        django.instrument()

    def _unhook(self) -> None:
        from . import django

        django.uninstrument()


class RestFrameworkAuthInstrumentor(_UserContextInstrumentor):
    """Every DRF request gets the user its authentication classes found (token, JWT, ...), read after DRF set it."""

    _name = "otel_segments_drf"
    _dependencies = ("django >= 4.2", "djangorestframework >= 3.14")

    def _hook(self) -> None:
        from . import rest_framework

        rest_framework.instrument()

    def _unhook(self) -> None:
        from . import rest_framework

        rest_framework.uninstrument()


class StarletteAuthInstrumentor(_UserContextInstrumentor):
    """Every Starlette/FastAPI app with ``AuthenticationMiddleware`` gets the user its backend returned."""

    _name = "otel_segments_starlette"
    _dependencies = ("starlette >= 0.30",)

    def _hook(self) -> None:
        from . import starlette

        starlette.instrument()

    def _unhook(self) -> None:
        from . import starlette

        starlette.uninstrument()
