"""The otel-segments command from an interactive terminal, its stdout redirected: ``compute --format jsonl > file``.

Rich draws progress on the terminal and, by default, captures ``sys.stdout`` while it draws: the JSON lines then
go to the screen and the file stays empty (issue 24). Here stdin and stderr are a pseudo-terminal (the standard
library's ``pty``), as in a shell, and stdout is a file, as after ``>``.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import clean_env

USERS = 60


def _on_a_terminal(args: list[str], stdout_path: Path) -> tuple[int, str]:
    """Run the command with stdin/stderr on a pseudo-terminal and stdout to a file; its exit status and the screen."""
    master, slave = pty.openpty()
    screen = bytearray()

    def drain() -> None:  # a full pty would block the child's writes to stderr
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its side
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = clean_env(TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    with stdout_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otel_segments.cli", *args], stdin=slave, stdout=out, stderr=slave, env=env
        )
        os.close(slave)
        status = proc.wait(timeout=60)
    reader.join(timeout=10)
    os.close(master)
    return status, screen.decode(errors="replace")


def test_compute_jsonl_redirected_from_a_terminal_writes_every_user(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    create_demo_database(create_engine(f"sqlite:///{db}"), users_count=USERS, seed=5)
    out = tmp_path / "segments.jsonl"
    status, screen = _on_a_terminal(["compute", "--database-url", f"sqlite:///{db}", "--format", "jsonl"], out)
    assert status == 0, screen
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(int(line["distinct_id"]) for line in lines) == list(range(1, USERS + 1))
    assert '"distinct_id"' not in screen  # the data went to the file only


def test_compute_changed_redirected_from_a_terminal_writes_data_only(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    create_demo_database(create_engine(f"sqlite:///{db}"), users_count=USERS, seed=5)
    out = tmp_path / "changed.jsonl"
    status, screen = _on_a_terminal(["compute", "--changed", "--database-url", f"sqlite:///{db}"], out)
    assert status == 0, screen
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == USERS  # the first --changed run: everyone is new
    assert "users recomputed" in screen  # the summary is for the person, on the terminal
