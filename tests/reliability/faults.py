"""Machinery for the fault tests and the fault benchmark: a breakable TCP port, the host app, its client load.

:class:`FaultyPort` stands between the app and a real peer (PostHog endpoint,
OTLP receiver, PostgreSQL) and breaks the connection the way networks break:
refused, hung, answers held back, or cut the moment a given query goes by.
:class:`HostApp` runs ``tests/apps/fault_app.py`` under ``opentelemetry-instrument``
with ``configure()`` doing everything, as in production. :class:`Load` is the
app's users: requests one after another, each timed and labelled with the phase
of the fault it fell in.
"""

from __future__ import annotations

import errno
import functools
import http.client
import math
import select
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import VENV_BIN, clean_env
from tests.delivery import wait_until

APP = Path(__file__).resolve().parent.parent / "apps" / "fault_app.py"

FORWARD = "forward"  # a healthy peer
REFUSE = "refuse"  # nothing listens: connections are refused
HANG = "hang"  # connections are accepted and nothing ever comes back (nor goes through)
HOLD = "hold"  # requests reach the peer, its answers never come back: the ambiguous timeout
MODES = (FORWARD, REFUSE, HANG, HOLD)


class FaultyPort:
    """A loopback TCP port in front of ``upstream`` that can be switched between :data:`MODES` at any moment.

    In :data:`REFUSE` the port stays bound but does not listen, so a connection is
    refused at once and no other process can take the port. Leaving :data:`HANG`
    drops the connections it froze, as a restarted peer would: what they carried
    is never delivered late. A connection that carried a request in :data:`HOLD`
    never gets its answer, whatever the mode later; new connections follow the
    mode. :meth:`cut_on` switches mode the moment the client sends a given byte
    string (e.g. a table name in a SQL query).
    """

    def __init__(self, upstream: tuple[str, int] | None = None, mode: str = FORWARD) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._socket = self._bind(0)
        self.port: int = self._socket.getsockname()[1]
        self._listening = False
        self._trip: tuple[bytes, str] | None = None
        self.tripped = threading.Event()
        self.held = 0  # requests whose answer was held back
        self._hold_once = False
        self.mode = REFUSE
        self._closed = False
        self.set_mode(mode)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    @staticmethod
    def _stop_listening(sock: socket.socket) -> None:
        # shutdown() takes the socket out of LISTEN at once; close() alone waits for the acceptor's poll to return.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        with self._lock:
            previous, self.mode = self.mode, mode
            if mode == REFUSE:
                self._drop(self._pipes)
                if self._listening:
                    self._stop_listening(self._socket)  # the acceptor notices and exits
                    self._socket = self._bind(self.port)
                    self._listening = False
                return
            if previous == HANG and mode != HANG:
                self._drop(self._pipes)
            if not self._listening:
                self._socket.listen(64)
                self._socket.settimeout(0.05)
                self._listening = True
                threading.Thread(target=self._accept, args=(self._socket,), daemon=True).start()

    def hold_once(self) -> None:
        """:data:`HOLD` for the next request only: the peer takes it, its answer never comes; later ones go through."""
        with self._lock:
            self._hold_once = True
        self.set_mode(HOLD)

    def cut_on(self, pattern: bytes, then: str = REFUSE) -> None:
        """When the client next sends ``pattern``, switch to ``then`` before it reaches the peer.

        With ``then=HOLD`` the bytes do reach the peer and that connection never gets
        its answer (as :meth:`hold_once`); with any other mode the connection drops.
        """
        with self._lock:
            self._trip = (pattern, then)
            self.tripped.clear()

    def close(self) -> None:
        self._closed = True
        self.set_mode(REFUSE)
        self._stop_listening(self._socket)

    def _drop(self, pipes: Iterable[_Pipe]) -> None:
        for pipe in list(pipes):
            pipe.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed: REFUSE
            client.settimeout(None)
            pipe = _Pipe(self, client)
            with self._lock:
                if listener is not self._socket:
                    client.close()
                    return
                self._pipes.add(pipe)
            threading.Thread(target=pipe.run, daemon=True).start()

    def _holding(self) -> bool:
        """Called with a request about to reach the peer; True when its answer is to be held back."""
        with self._lock:
            if self.mode != HOLD:
                return False
            self.held += 1
            if self._hold_once:
                self._hold_once = False
                self.mode = FORWARD
            return True

    def _seen(self, data: bytes) -> bool:
        """Called with client bytes before they are forwarded; True when they cut the connection."""
        trip = self._trip
        if trip is None or trip[0] not in data:
            return False
        with self._lock:
            self._trip = None
        self.tripped.set()
        if trip[1] == HOLD:
            self.hold_once()
            return False
        self.set_mode(trip[1])
        return True

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)


@dataclass(eq=False)
class _Pipe:
    port: FaultyPort
    client: socket.socket
    upstream: socket.socket | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    held: bool = False  # carried a request in HOLD: its answer never comes

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def run(self) -> None:
        try:
            self._relay()
        except OSError:
            pass
        finally:
            self.closed.set()
            for sock in (self.client, self.upstream):
                if sock is not None:
                    sock.close()
            self.port._forget(self)

    def _relay(self) -> None:
        while not self.closed.is_set():
            mode = self.port.mode
            if mode not in (FORWARD, HOLD) or self.port.upstream is None:
                time.sleep(0.02)  # HANG: read nothing, answer nothing
                continue
            if self.upstream is None:
                self.upstream = socket.create_connection(self.port.upstream, timeout=5)
                self.upstream.settimeout(None)
            sources = [self.client] if self.held or mode == HOLD else [self.client, self.upstream]
            readable, _, _ = select.select(sources, [], [], 0.05)
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                if source is self.client:
                    if self.port._seen(data):
                        return
                    self.held = self.held or self.port._holding()
                    self.upstream.sendall(data)
                else:
                    self.client.sendall(data)


# -- the host app ------------------------------------------------------------------------------------------------


@dataclass
class LogLine:
    at: float
    text: str


class HostApp:
    """``fault_app.py`` under ``opentelemetry-instrument`` in its own process; its stderr kept line by line."""

    def __init__(
        self,
        workdir: Path,
        *,
        command_prefix: Sequence[str] = (),
        **env: str,
    ) -> None:
        shutil.copy(APP, workdir / APP.name)
        self.command_prefix = list(command_prefix)
        self.env = clean_env(**env)
        self.env.pop("PYTHONPATH", None)  # the app sees the installed package only, as a user's app would
        self.workdir = workdir
        self.lines: list[LogLine] = []
        self.out: list[LogLine] = []  # stdout, line by line ("listening <port>", then "stopped" as main returns)
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self, timeout_s: float = 60) -> HostApp:
        self.process = subprocess.Popen(
            [*self.command_prefix, str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), APP.name],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_stderr, daemon=True).start()
        ready = threading.Event()
        threading.Thread(target=self._read_stdout, args=(ready,), daemon=True).start()
        if not ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"the app did not start within {timeout_s}s:\n{self.stderr}")
        return self

    def _read_stdout(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.out.append(LogLine(time.monotonic(), line.rstrip("\n")))
            if line.startswith("listening "):
                self.port = int(line.split()[1])
                ready.set()

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(LogLine(time.monotonic(), line.rstrip("\n")))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def ours(self, since: float = 0.0, until: float = math.inf) -> list[str]:
        """The plugin's log lines (logger ``otel_segments...``) written between two ``time.monotonic()`` moments.

        A line logged before the app configured logging (a cycle at start-up, while the app still imports) is
        printed by Python's last-resort handler, the message alone (``otel_segments: ...``), WARNING or worse:
        it is given the app's format's level here, so that it counts as the warning it is.
        """
        out = []
        for line in list(self.lines):
            if not since <= line.at <= until:
                continue
            if line.text.startswith("otel_segments:"):
                out.append(f"WARNING (last resort) {line.text}")
            elif " otel_segments" in line.text:
                out.append(line.text)
        return out

    def wait_for_log(self, text: str, since: float = 0.0, timeout_s: float = 30) -> str:
        def found() -> list[str]:
            return [line for line in self.ours(since) if text in line]

        return wait_until(found, f"a log line with {text!r}", timeout_s, lambda: self.stderr)[0]

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, as a process manager would; the app's normal exit path (and our atexit shutdown) runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the app did not exit within {timeout_s}s of SIGTERM:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def exit_seconds(app: HostApp, timeout_s: float = 60) -> float:
    """SIGTERM; seconds from the app's last line (``stopped``, as its ``main`` returns) to the process's end.

    The exit must be clean: code 0, no traceback, neither secret in the app's output.
    """
    code = app.stop(timeout_s)
    ended = time.monotonic()
    assert code == 0, app.stderr
    stopped = [line.at for line in app.out if line.text == "stopped"]
    assert stopped, f"the app never printed its last line:\n{app.stderr}"
    assert "Traceback" not in app.stderr, app.stderr
    for secret in (app.env.get("OTEL_EXPORTER_OTLP_TOKEN"), app.env.get("POSTHOG_API_KEY")):
        assert not secret or secret not in app.stderr, app.stderr
    return ended - stopped[-1]


def exits_side_by_side(apps: Mapping[str, HostApp], timeout_s: float = 60) -> dict[str, float]:
    """Stop every app at the same moment (a thread each), so that each exit is timed on the same machine."""
    with ThreadPoolExecutor(len(apps)) as pool:
        futures = {name: pool.submit(exit_seconds, app, timeout_s) for name, app in apps.items()}
    return {name: future.result() for name, future in futures.items()}


def side_by_side_noise(baseline_s: float) -> float:
    """How far two exits timed side by side may differ by chance.

    What neither the job nor a fix touches (the app's own exports, the interpreter's teardown) took 1.4-2.3 s in
    the app without the job on a calm 2-core machine, about 1 s of which differs between two processes. On a busy
    machine all of it stretches (the same app took 7 s beside a full test run): the app without the job, timed
    beside the one with it, shows by how much.
    """
    return max(1.0, 0.5 * baseline_s)


def plugin_env(
    *,
    collector: str,
    posthog: str,
    database_url: str,
    token: str,
    api_key: str,
    protocol: str = "http/protobuf",
    interval_ms: int = 300,
    **extra: str,
) -> dict[str, str]:
    """The variables that turn the plugin and its refresh job on in the app: nothing else configures it."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector}",
        "OTEL_EXPORTER_OTLP_TOKEN": token,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_SERVICE_NAME": "timetracker",
        "OTEL_SEGMENTS_DATABASE_URL": database_url,
        "OTEL_SEGMENTS_REFRESH_INTERVAL": str(interval_ms),
        "POSTHOG_API_KEY": api_key,
        "POSTHOG_HOST": f"http://{posthog}",
        **extra,
    }


# -- the app's users ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    phase: str
    seconds: float
    status: int | None
    error: str | None = None


def http_get(port: int, timeout_s: float = 30) -> Callable[[str], int]:
    """One request to the app's ``/work`` as ``user``, on a new connection (as a browser's first request); its status."""

    def get(user: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        try:
            conn.request("GET", "/work", headers={"X-User-Id": user})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    return get


class Load:
    """The app's users: ``request(user)`` again and again from one thread, each timed and labelled with :attr:`phase`.

    ``request`` returns a status (200 is success) or raises; for the app over HTTP, :func:`http_get`.
    """

    def __init__(self, request: Callable[[str], int], users: Sequence[str], pause_s: float = 0.005) -> None:
        self.request = request
        self.users = list(users)
        self.pause_s = pause_s
        self.phase = "start"
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            user = self.users[i % len(self.users)]
            i += 1
            phase = self.phase
            start = time.perf_counter()
            status: int | None
            try:
                status, error = self.request(user), None
            except Exception as exc:  # noqa: BLE001 - a failed request is a sample, counted as a failure
                status, error = None, f"{type(exc).__name__}: {exc}"
            self.samples.append(Sample(phase, time.perf_counter() - start, status, error))
            self._stop.wait(self.pause_s)

    def of(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]


@dataclass(frozen=True)
class Latency:
    phase: str
    count: int
    p50_ms: float
    p99_ms: float

    def __str__(self) -> str:
        return f"{self.phase:<10} n={self.count:<5} p50={self.p50_ms:7.2f} ms  p99={self.p99_ms:7.2f} ms"


def latency(samples: Sequence[Sample], *phases: str) -> Latency:
    """p50 and p99 of the samples taken in any of ``phases``."""
    times = sorted(s.seconds * 1000 for s in samples if s.phase in phases)
    label = "+".join(phases)
    if not times:
        return Latency(label, 0, math.nan, math.nan)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return Latency(label, len(times), statistics.median(times), p99)


class FullDisk:
    """A directory (for the state database) on a disk that the test fills and frees while the app runs.

    Where the kernel lets a process make its own user and mount namespaces
    (``unshare -Urm``), the directory is a small tmpfs mounted in the app's private
    mount namespace, so nothing outside sees it and it vanishes with the app;
    filling it is a real full disk (ENOSPC: SQLite says "database or disk is
    full"). The test reaches it through ``/proc/<pid>/root``. Elsewhere the app's
    RLIMIT_FSIZE drops to 0 instead, with SIGXFSZ ignored: every write fails with
    EFBIG (SQLite says "disk I/O error"). Methods take the app's pid.
    """

    def __init__(self, directory: Path, size_kib: int = 2048) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.size_kib = size_kib
        self.tmpfs = _can_unshare()

    @property
    def command_prefix(self) -> tuple[str, ...]:
        """The app's command line starts with this: namespaces and mount (or SIGXFSZ ignored), then ``exec`` the app.

        The app keeps the pid. (A shell, not ``preexec_fn``: running Python in the
        child of a process with threads, e.g. a gRPC server, can deadlock.)
        """
        if not self.tmpfs:
            return ("sh", "-c", 'trap "" XFSZ && exec "$@"', "sh")
        mount = f'mount -t tmpfs -o size={self.size_kib}k tmpfs "$0" && exec "$@"'
        return ("unshare", "-Urm", "sh", "-c", mount, str(self.directory))

    @property
    def error(self) -> str:
        """SQLite's words for the fault."""
        return "database or disk is full" if self.tmpfs else "disk I/O error"

    def here(self, pid: int) -> Path:
        """The directory as this process sees it."""
        return Path(f"/proc/{pid}/root{self.directory}") if self.tmpfs else self.directory

    def fill(self, pid: int) -> None:
        if not self.tmpfs:
            set_file_size_limit(pid, 0)
            return
        block = b"\0" * 65536
        with open(self.here(pid) / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(block)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise

    def free(self, pid: int) -> None:
        if self.tmpfs:
            (self.here(pid) / "filler").unlink()
        else:
            set_file_size_limit(pid, None)

    def snapshot(self, pid: int, name: str, into: Path) -> Path | None:
        """A consistent copy of the SQLite database ``name`` in ``into``; None before it exists or while a write is under way.

        Why a copy: SQLite resolves symbolic links in a database path, and
        ``/proc/<pid>/root`` reads as ``/``, so SQLite would open the file of that
        name in *this* mount namespace instead. Plain reads follow the link properly.
        """
        source, journal = self.here(pid) / name, self.here(pid) / f"{name}-journal"
        if journal.exists() or not source.exists():
            return None
        data = source.read_bytes()
        if journal.exists() or source.read_bytes() != data:
            return None
        copy = into / name
        copy.write_bytes(data)
        return copy


@functools.cache
def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, check=False).returncode == 0


def set_file_size_limit(pid: int, limit: int | None) -> None:
    """RLIMIT_FSIZE of a running process (``None`` lifts it): writes past ``limit`` bytes fail as on a full disk."""
    import resource

    soft = resource.RLIM_INFINITY if limit is None else limit
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


def demo_sqlite(folder: Path, users: int) -> str:
    """The URL of a SQLite app database in ``folder`` holding ``users`` TimeTracker-shaped users (seed 5)."""
    from sqlalchemy import create_engine

    from otel_segments.segments.demo import create_demo_database

    url = f"sqlite:///{folder / 'app.db'}"
    engine = create_engine(url)
    create_demo_database(engine, users_count=users, seed=5)
    engine.dispose()
    return url
