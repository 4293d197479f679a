"""Every ```python block of README.md and docs/*.md runs as written (issue 15, item 4): a claim cannot drift.

Each block runs in a fresh process from an empty folder, with the gate open and real local peers behind
the standard variables: an OTLP/HTTP receiver at ``OTEL_EXPORTER_OTLP_ENDPOINT``, a PostHog stand-in at
``POSTHOG_HOST`` and, for the made-up hosts the docs call (``http://billing.internal``), the same stand-in as
``HTTP_PROXY``. A block that must not run says so in the doc, visibly, in the line before it:
``<!-- docs-test: skip (reason) -->``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN, _free_port, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Bystander

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<directive>[^>]*) -->\n)?^(?P<indent>[ ]*)```python\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)
TOKEN = "tok-docs-61c0"


def python_blocks() -> list[tuple[str, str, str | None]]:
    """(where, code, directive) for every python block of the docs."""
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("indent")) + 1
            indent = len(match["indent"])
            code = "".join(row[indent:] for row in match["code"].splitlines(keepends=True))
            blocks.append((f"{doc.relative_to(ROOT)}:{line}", code, match["directive"]))
    return blocks


BLOCKS = python_blocks()


@pytest.fixture
def peer() -> Iterator[Bystander]:
    """PostHog stand-in and HTTP proxy: answers 200 to every request and keeps what it got."""
    other = Bystander()
    yield other
    other.close()


def test_the_docs_have_the_blocks_this_test_knows() -> None:
    where = {w.split(":")[0] for w, _, _ in BLOCKS}
    assert {"README.md", "docs/integrations.md", "docs/segments.md", "docs/sinks.md"} <= where
    assert len(BLOCKS) >= 11


@pytest.mark.parametrize(("where", "code", "directive"), BLOCKS, ids=[w for w, _, _ in BLOCKS])
def test_doc_snippet_runs_as_written(
    where: str, code: str, directive: str | None, tmp_path: Path, http_receiver: Receiver, peer: Bystander
) -> None:
    if directive is not None:
        assert directive.startswith("skip (") and directive.endswith(")"), f"{where}: unknown docs-test directive"
        pytest.skip(f"{where}: {directive}")
    env = clean_env(
        OTEL_SERVICE_NAME="docs",
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        POSTHOG_API_KEY="phc_docs",
        POSTHOG_HOST=peer.url,
        HTTP_PROXY=peer.url,
        http_proxy=peer.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.pop("PYTHONPATH", None)
    (tmp_path / "snippet.py").write_text(code)
    result = subprocess.run(
        [str(VENV_BIN / "python"), "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{where} fails as written:\n{code}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]

    # What the snippets that talk to a peer say they do, as the peer saw it.
    if "user_baggage()" in code and "requests.get(" in code:
        [(_, _, headers)] = [r for r in peer.requests if "billing.internal" in r[1]]
        assert "app.user.id=42" in headers.get("baggage", ""), headers
    if "PostHogSink(" in code and ".deliver(" in code:
        assert [path for method, path, _ in peer.requests if method == "POST"] == ["/batch/"]
    if "OtlpSegmentSink(" in code and ".deliver(" in code:
        [record] = http_receiver.logs()
        assert record.resource["user.id"] == "42"
        assert {e.headers.get("authorization") for e in http_receiver.of("logs")} == {f"Bearer {TOKEN}"}


# -- shell blocks (issue 24, item 4) ------------------------------------------------------------------------------
SHELL = re.compile(
    r"(?:<!-- docs-test: (?P<directive>[^>]*) -->\n)?^(?P<indent>[ ]*)```(?P<lang>sh|console)\n(?P<code>.*?)^(?P=indent)```",
    re.S | re.M,
)


def shell_blocks() -> list[tuple[str, str, str, str | None]]:
    """(where, language, code, directive) for every ```sh and ```console block of the docs."""
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for match in SHELL.finditer(text):
            line = text.count("\n", 0, match.start("indent")) + 1
            indent = len(match["indent"])
            code = "".join(row[indent:] for row in match["code"].splitlines(keepends=True))
            blocks.append((f"{doc.relative_to(ROOT)}:{line}", match["lang"], code, match["directive"]))
    return blocks


SHELL_BLOCKS = shell_blocks()


def test_every_shell_block_is_run_or_says_why_not() -> None:
    """A block is run below, or marked in the doc, visibly, with the reason it cannot run here."""
    assert len(SHELL_BLOCKS) >= 12
    for where, _, _, directive in SHELL_BLOCKS:
        if directive is not None:
            assert re.fullmatch(r"skip \(.{12,}\)", directive), f"{where}: a skip must give its reason: {directive!r}"


def _console(code: str) -> tuple[str, list[list[str]]]:
    """A ```console block: the commands (after ``$ ``) as one script, and each command's shown output lines."""
    commands: list[str] = []
    shown: list[list[str]] = []
    for row in code.splitlines():
        if row.startswith("$ "):
            commands.append(row[2:])
            shown.append([])
        elif row.strip() and shown:
            shown[-1].append(row)
    return "\n".join(commands) + "\n", shown


def _checkout(folder: Path) -> Path:
    """``folder`` as the checkout a reader pastes into: every top-level entry of the repository linked, not copied, so
    ``examples/``, ``scripts/``, ``.venv/`` and ``.venv-phoenix/`` are where the docs say, and what a block writes
    (databases, cookie jars, logs) lands in ``folder``, never in the repository."""
    folder.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != ".git" and entry.suffix != ".db":
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.parametrize(("where", "lang", "code", "directive"), SHELL_BLOCKS, ids=[w for w, _, _, _ in SHELL_BLOCKS])
def test_shell_block_runs_as_written(where: str, lang: str, code: str, directive: str | None, tmp_path: Path) -> None:
    """In a fresh bash (``-euo pipefail``) from a checkout's folder, the package's venv first on PATH, no OTEL_ variable:
    as a new user pastes it. A ```console block's shown output must be what its command prints (``...`` elides).

    The ports a block's servers listen on are the variables it names with their usual value as default (``PORT``,
    ``PHOENIX_PORT``, ``PHOENIX_GRPC_PORT``): here free ones, so runs side by side never share one. Whatever a block
    left running (a server it started with ``&``) is stopped with its process group when the block ends."""
    if directive is not None:
        pytest.skip(f"{where}: {directive}")
    script, shown = _console(code) if lang == "console" else (code, [])
    env = clean_env(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        PORT=str(_free_port()),
        PHOENIX_PORT=str(_free_port()),
        PHOENIX_GRPC_PORT=str(_free_port()),
    )
    env.pop("PYTHONPATH", None)
    folder = _checkout(tmp_path / "checkout")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        bash = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script], cwd=folder, env=env, stdout=stdout, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            bash.wait(timeout=300)
        finally:
            _stop_group(bash.pid)
    result = subprocess.CompletedProcess(
        bash.args, bash.returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
    )
    assert result.returncode == 0, f"{where} fails as written:\n{code}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    printed = result.stdout.splitlines()
    for lines in shown:
        for line in lines:
            if line.strip() != "...":
                assert line in printed, f"{where}: shown {line!r}, printed:\n{result.stdout[-3000:]}"
    for written in re.findall(r"> (\S+\.jsonl)", code):  # what a block says it writes, it writes: one user a line
        rows = [json.loads(row) for row in (folder / written).read_text().splitlines()]
        assert rows and all(set(row) == {"distinct_id", "$set", "$set_once"} for row in rows), f"{where}: {written}"


def _stop_group(pid: int) -> None:
    """SIGTERM to what the block left running, then SIGKILL to what outlives a few seconds."""
    for how in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, how)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


#: README's "Configuration" table, one row per variable: ``| `NAME` | default | meaning |``.
CONFIG_ROW = re.compile(r"^\| `(?P<name>[A-Z_]+)` \| (?P<default>[^|]+) \|", re.M)


def test_readme_states_the_defaults_the_code_applies() -> None:
    """A default is stated once, in README's configuration table (the docs point there): it is the code's."""
    from otel_segments.settings.config import Settings

    stated = {m["name"]: m["default"].strip().strip("`") for m in CONFIG_ROW.finditer((ROOT / "README.md").read_text())}
    applied = Settings.from_env({"POSTHOG_API_KEY": "phc_x"})
    fields = {
        "OTEL_SEGMENTS_SCHEMA": applied.schema,
        "OTEL_SEGMENTS_CHANGE_CAPTURE": applied.change_capture,
        "OTEL_SEGMENTS_REFRESH_INTERVAL": applied.refresh_interval_ms,
        "OTEL_SEGMENTS_MAX_SEGMENT_AGE": applied.max_segment_age_ms,
        "OTEL_SEGMENTS_CACHE_SIZE": applied.cache_size,
        "OTEL_SEGMENTS_SPAN_PROPERTIES": applied.span_properties,
        "POSTHOG_HOST": applied.posthog_host,
    }
    assert {name: stated.get(name) for name in fields} == {name: str(value) for name, value in fields.items()}
