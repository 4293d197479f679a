"""SQLAlchemy engines for the app's database and our state, with errors that say what to do.

A URL names a driver, sometimes implicitly: plain ``postgresql://`` is psycopg2 on
SQLAlchemy 2.0 and psycopg 3 on 2.1. When that driver is not installed, the
user needs its name and the command that installs it, not "is not a usable
URL". Messages never quote the URL: it may carry a password.

Our engines are the app's guests, not its engines: listeners the app registers on
SQLAlchemy's ``Engine``, ``Connection`` or ``Pool`` *classes* (a slow-query logger
that touches ``flask.g``, a per-connection PRAGMA) would otherwise run on every
query of ours, log our SQL as the app's and, when they raise, fail our cycle.
SQLAlchemy's event registry offers the switch itself: a class whose
``_sa_propagate_class_events`` is false gets none of its base classes' listeners,
neither those registered before it was made nor after (``event/attr.py``,
``_ClsLevelDispatch``; ``engine/base.py``'s ``OptionEngine`` uses it). Our engine
and our pool are such subclasses; listeners on an instance (a URL's plugins) still
run. The cost: the class check SQLAlchemy does at each event point anyway, and an
app's class-level ``connect`` listener (e.g. a SQLite ``PRAGMA``) does not set up
our connections, which read and write with SQLAlchemy's defaults. Listeners on the
``Dialect`` class (``do_execute``, ``do_connect``) are not isolated: create_engine
builds the dialect from the URL, with no class of ours to give it.

Our connections are the driver's own, not an instrumentation's: OpenTelemetry's DB-API instrumentations (sqlite3,
psycopg, psycopg2) wrap the driver's ``connect`` and, for every connection, build an integration that asks the
global TracerProvider for a tracer under its lock, suppressed or not. Under eventlet that lock is a green one
(eventlet swaps the locks it finds when it patches), and the job connects from an OS thread: a request of the app
waiting for that lock while our thread held it would be woken on our thread's hub, which cannot switch to it
(``greenlet.error: Cannot switch to a different thread``, the waiter asleep for good). Our I/O is never traced
anyway (:mod:`otel_segments.runtime.untraced`), so the engine connects through what the wrappers wrap.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

# Not used here, imported so it is whole before the job's threads start. Importing any part of SQLAlchemy's ORM
# registers its inspectors with SQLAlchemy Core at once, and every select() of ours consults them: while the app's
# main thread was still importing the ORM, the job's first cycle hit a half-made sqlalchemy.orm.exc
# ("partially initialized module ... has no attribute 'UnmappedClassError'"). Imported here, in the thread that
# calls configure(), the app's own import of the ORM later is a lookup. It costs the ORM's import time (0.2 s
# measured on a busy 2-core machine) in an app that does not use the ORM.
import sqlalchemy.orm  # noqa: F401
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import Pool

from . import native

#: SQLAlchemy's driver name -> (module it imports, how to install it).
DRIVERS: dict[str, tuple[str, str]] = {
    "psycopg": ("psycopg", "pip install 'otel-segments[postgresql]'"),
    "psycopg2": ("psycopg2", "pip install psycopg2-binary"),
    "pg8000": ("pg8000", "pip install pg8000"),
    "pysqlite": ("sqlite3", "a Python built with the sqlite3 module"),
    "mysqldb": ("MySQLdb", "pip install mysqlclient"),
    "pymysql": ("pymysql", "pip install PyMySQL"),
    "mysqlconnector": ("mysql.connector", "pip install mysql-connector-python"),
    "pyodbc": ("pyodbc", "pip install pyodbc"),
    "oracledb": ("oracledb", "pip install oracledb"),
}
#: A blocking driver per backend, in order of preference, for the hint after an asyncio or missing driver.
_BLOCKING = {
    "postgresql": ("psycopg", "psycopg2"),
    "sqlite": ("pysqlite",),
    "mysql": ("mysqldb", "pymysql"),
}
EXAMPLE = "e.g. sqlite:///app.db or postgresql+psycopg://user@host/db"


class DatabaseURLError(ValueError):
    """The URL cannot give an engine; the message is safe to log (no URL, no password)."""


def engine_for(url: str) -> Engine:
    """An engine for ``url`` that fails fast: at a missing driver now, at a dead server within a minute."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseURLError(f"is not a database URL ({EXAMPLE})") from None
    backend = parsed.get_backend_name()
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise DatabaseURLError(f"names a database SQLAlchemy does not know ({parsed.drivername!r}; {EXAMPLE})") from None
    if getattr(dialect, "is_async", False):
        raise DatabaseURLError(
            f"names the asyncio driver {dialect.driver}; the refresh job runs in a thread of its own and needs a "
            f"blocking driver: {_blocking_hint(backend)}"
        )
    try:
        # pre_ping: a database restarted between cycles costs one reconnect, not a failed cycle.
        engine = create_engine(
            parsed, pool_pre_ping=True, connect_args=_connect_args(parsed), poolclass=_own_pool(dialect.get_pool_class(parsed))
        )
    except ImportError as error:
        raise DatabaseURLError(_missing_driver(parsed, dialect.driver, error)) from None
    except (ArgumentError, ValueError, TypeError) as error:
        raise DatabaseURLError(f"has a malformed part ({type(error).__name__}; {EXAMPLE})") from None
    event.listen(engine, "do_connect", _driver_connect)
    return _own(engine)


def _driver_connect(dialect: Dialect, record: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
    """Connect as SQLAlchemy's default dialect does, through the driver's own ``connect``, not a wrapper of it."""
    connect = dialect.loaded_dbapi.connect
    # OpenTelemetry's DB-API instrumentations wrap with wrapt, whose proxy types carry ``__wrapped__`` (a function's
    # own ``__wrapped__``, from functools.wraps, is the driver's business and stays)
    while hasattr(type(connect), "__wrapped__"):
        connect = connect.__wrapped__
    return connect(*cargs, **cparams)


class OwnConnection(Connection):
    """A :class:`~sqlalchemy.engine.Connection` that listeners on the ``Connection`` class never see."""

    _sa_propagate_class_events = False


class OwnEngine(Engine):
    """An :class:`~sqlalchemy.engine.Engine` that listeners on the ``Engine`` or ``Connection`` class never see."""

    _sa_propagate_class_events = False
    _connection_cls = OwnConnection


@functools.cache
def _own_pool(pool_class: type[Pool]) -> type[Pool]:
    """The dialect's pool class, less the listeners registered on ``Pool`` (or any pool class) by the app, and
    with a marker that tells when eventlet greened its locks (:func:`pool_greened`)."""

    def init(self: Pool, *args: Any, **kwargs: Any) -> None:
        pool_class.__init__(self, *args, **kwargs)
        # Set last, after every lock of the pool: see pool_greened.
        self._otel_segments_marker = native.InterpreterRLock()  # type: ignore[attr-defined]

    # In the pool class's module: SQLAlchemy names a pool's logger after its class, and pool messages stay under
    # "sqlalchemy.pool", where an app's logging set-up looks for them, not under ours.
    namespace = {"_sa_propagate_class_events": False, "__module__": pool_class.__module__, "__init__": init}
    return type(f"Own{pool_class.__name__}", (pool_class,), namespace)


def pool_greened(engine: Engine) -> bool:
    """Whether eventlet swapped the locks of ``engine``'s pool for green ones since the pool was made.

    Such a pool fails every check-in ("cannot notify on un-acquired lock"): its queue's Conditions keep the
    methods of the lock they were made with. ``eventlet.monkey_patch()`` ends by walking everything reachable
    from ``sys.modules`` and replacing each RLock of the interpreter's type, an object's attributes in the order
    they were set; our pools set a marker RLock after their own locks, so a swapped marker means a swapped queue
    lock. Why not ask eventlet whether it patched: it says so from the start of ``monkey_patch()``, before it
    patches ``threading`` and walks, and a pool made in between is greened after it was taken for a new one.
    """
    marker = getattr(engine.pool, "_otel_segments_marker", None)
    return marker is not None and type(marker) is not native.InterpreterRLock


def _own(engine: Engine) -> OwnEngine:
    """``engine`` as an :class:`OwnEngine`: create_engine takes no Engine class, so the instance changes class.

    Its own listeners (a URL's plugins) are carried over; its dispatch is made again only if create_engine
    already made it for the ``Engine`` class, whose class-level listeners it would otherwise keep.
    """
    made = vars(engine).pop("dispatch", None)
    engine.__class__ = OwnEngine
    if made is not None:
        engine.dispatch._update(made, only_propagate=False)
    return engine  # type: ignore[return-value]


#: ``application_name`` of our PostgreSQL connections: an operator finds them in ``pg_stat_activity``.
APPLICATION_NAME = "otel_segments"

#: How long one of our statements waits for a lock (the lease row, the state table) before giving up. An
#: operator's ``SELECT ... FOR UPDATE`` or a holder frozen inside the lease transaction then fails one cycle,
#: with one line, and frees the connection, instead of holding one connection per process until the app's
#: own role is refused for want of ``max_connections``. SQLite's busy timeout is the same wait.
LOCK_TIMEOUT_S = 5
#: The longest one of our statements may run: far above the refresh's batched queries on a large app.
STATEMENT_TIMEOUT_S = 300
#: A session of ours left idle inside a transaction (its process frozen by SIGSTOP, a debugger) is ended by
#: the server after this long, so the locks it holds do not outlive the lease it was taken under.
IDLE_IN_TRANSACTION_TIMEOUT_S = 60


def _connect_args(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        # libpq settings: a database that is away fails the cycle instead of hanging it, and a peer that
        # vanished mid-query (partition, dead host) is noticed in about a minute, not the kernel's two hours.
        args: dict[str, Any] = {
            "connect_timeout": 10,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 60_000,
        }
        if "application_name" not in url.query:  # the operator's own name in the URL wins
            args["application_name"] = APPLICATION_NAME
        # Ours first: an ``options`` in the URL comes after them, and PostgreSQL lets the last -c win.
        args["options"] = " ".join(
            [
                f"-c lock_timeout={LOCK_TIMEOUT_S * 1000}",
                f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}",
                f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_S * 1000}",
                *([str(url.query["options"])] if "options" in url.query else []),
            ]
        )
        return args
    if url.get_backend_name() == "sqlite" and "timeout" not in url.query:
        return {"timeout": float(LOCK_TIMEOUT_S)}  # the busy timeout: how long a write waits for another's lock
    return {}


def _missing_driver(url: URL, driver: str, error: ImportError) -> str:
    module, install = DRIVERS.get(driver, (error.name or driver, f"pip install {error.name or driver}"))
    implicit = "" if "+" in url.drivername else f" (SQLAlchemy's default for {url.get_backend_name()}://)"
    message = f"needs the {driver} driver{implicit}, and its module {error.name or module!r} is not installed: {install}"
    others = [d for d in _BLOCKING.get(url.get_backend_name(), ()) if d != driver and _installed(d)]
    if others:
        message += f"; or name an installed driver in the URL: {url.get_backend_name()}+{others[0]}://..."
    return message


def _blocking_hint(backend: str) -> str:
    drivers = _BLOCKING.get(backend)
    if not drivers:
        return "use the blocking driver of the same database"
    installed = [d for d in drivers if _installed(d)]
    driver = (installed or drivers)[0]
    scheme = "sqlite:///..." if backend == "sqlite" else f"{backend}+{driver}://..."
    return f"use {scheme}" + ("" if installed else f" ({DRIVERS[driver][1]})")


def _installed(driver: str) -> bool:
    module = DRIVERS[driver][0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
