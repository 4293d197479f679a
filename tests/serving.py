"""A server process for the tests: started, waited for until its health URL answers 200, stopped at the end."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class Served:
    """The running server; ``output`` is everything it printed, filled in when the block ends."""

    process: subprocess.Popen[bytes]
    output: str = ""


@contextmanager
def serving(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    health_url: str,
    what: str,
    stop: signal.Signals = signal.SIGINT,
    start_timeout_s: float = 30.0,
) -> Iterator[Served]:
    """Run ``argv`` until the block ends; fail the test, with the end of its log, when it does not come up."""
    with log.open("w+") as out:
        served = Served(subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT))
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    if httpx.get(health_url, timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if served.process.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    pytest.fail(f"{what} did not start:\n{out.read()[-3000:]}")
                time.sleep(0.05)
            yield served
        finally:
            served.process.send_signal(stop)
            try:
                served.process.wait(15)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait(5)
            out.seek(0)
            served.output = out.read()
