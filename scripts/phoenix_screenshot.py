"""Screenshots of Arize Phoenix's span view filtered by a segment, and of one span's attributes, in headless Chromium.

    python scripts/phoenix_screenshot.py --url http://127.0.0.1:6006 --token ADMIN_SECRET --project timetracker \\
        --filter "app.user.engagement_level == 'low'" --out docs/

Writes ``<out>/phoenix-filtered-spans.png`` (the project's spans with the filter applied, as the URL
``/projects/<id>/spans?spanFilterCondition=...`` opens it), ``<out>/phoenix-span-attributes.png`` (a listed request's
server span, its attributes), and the rows the filtered page lists, read from its DOM, as JSON (``--rows``, default
``<out>/phoenix-filtered-spans.json``), so a test can check the page shows the spans it should and no others.

Debian's ``chromium`` is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, NUL-separated JSON): standard library only, no Playwright, no WebSocket client. With Phoenix's
auth on, every request carries ``authorization: Bearer <token>`` (``Network.setExtraHTTPHeaders``): the admin secret
opens the UI without the login page (whose first admin login would force a password change).
``scripts/screenshot`` refreshes the pictures in docs/ from the end-to-end test's data.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    # As root in a container: no sandbox. The rest keeps Chromium off the network it would otherwise call at start.
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
WIDTH, HEIGHT = 1440, 900

# The rows of Phoenix's spans table, as text cells; waits until the table has settled (same rows twice).
ROWS_JS = """
(() => {
  const rows = [...document.querySelectorAll('table tbody tr')];
  return JSON.stringify(rows.map(r => [...r.querySelectorAll('td')].map(td => td.innerText.trim())));
})()
"""


# Opens a request's server span (its name is the HTTP method and route), else the first span listed.
CLICK_SERVER_SPAN_JS = """
(() => {
  const rows = [...document.querySelectorAll('table tbody tr')];
  const server = rows.find(r => [...r.querySelectorAll('td')].some(td => /^(GET|POST) \\//.test(td.innerText.trim())));
  const row = server || rows[0];
  if (!row) return false;
  row.click();
  return true;
})()
"""


class Browser:
    """One headless Chromium page, driven over the DevTools pipe."""

    def __init__(self, chromium: str, token: str | None) -> None:
        self._profile = tempfile.mkdtemp(prefix="otel-segments-chromium-")
        to_chromium_r, self._to_chromium = os.pipe()
        self._from_chromium, from_chromium_w = os.pipe()

        def fds() -> None:  # Chromium reads commands on fd 3 and writes answers on fd 4
            # Move both ends above 4 first: a pipe end that already is fd 3 or 4 would keep its close-on-exec flag.
            high_r, high_w = fcntl.fcntl(to_chromium_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chromium_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            preexec_fn=fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium_r)
        os.close(from_chromium_w)
        self._buffer = b""
        self._next_id = 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Network.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
        )
        if token:
            self.send("Network.setExtraHTTPHeaders", session=True, headers={"authorization": f"Bearer {token}"})

    def send(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer.get("result", {})
            chunk = os.read(self._from_chromium, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raise TimeoutError(method)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        os.close(self._to_chromium)
        os.close(self._from_chromium)
        shutil.rmtree(self._profile, ignore_errors=True)


def project_id(base: str, token: str | None, project: str) -> str:
    request = urllib.request.Request(f"{base}/v1/projects/{urllib.parse.quote(project)}")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)["data"]["id"]


def settled_rows(browser: Browser, expected: int | None, timeout: float) -> list[list[str]]:
    """The table's rows once they stop changing (and, with ``expected``, once there are that many)."""
    deadline = time.monotonic() + timeout
    last: list[list[str]] | None = None
    while time.monotonic() < deadline:
        rows = json.loads(browser.evaluate(ROWS_JS) or "[]")
        rows = [r for r in rows if len(r) > 1]  # a one-cell row is the table's "no data" or loading line
        if rows and rows == last and (expected is None or len(rows) >= expected):
            return rows
        last = rows
        time.sleep(0.5)
    return last or []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="Phoenix's base URL, e.g. http://127.0.0.1:6006")
    parser.add_argument(
        "--token", default=os.environ.get("PHOENIX_ADMIN_SECRET"), help="bearer token (default $PHOENIX_ADMIN_SECRET)"
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--filter", required=True, help="span filter condition, e.g. \"app.user.engagement_level == 'low'\"")
    parser.add_argument("--expect-rows", type=int, default=None, help="wait until the filtered table lists this many rows")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    parser.add_argument("--rows", type=Path, default=None, help="where to write the listed rows as JSON (default: --out)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)

    base = args.url.rstrip("/")
    args.out.mkdir(parents=True, exist_ok=True)
    pid = project_id(base, args.token, args.project)
    filtered = f"{base}/projects/{pid}/spans?" + urllib.parse.urlencode({"spanFilterCondition": args.filter})
    browser = Browser(args.chromium, args.token)
    try:
        browser.goto(filtered)
        rows = settled_rows(browser, args.expect_rows, timeout=40)
        browser.screenshot(args.out / "phoenix-filtered-spans.png")
        rows_file = args.rows or args.out / "phoenix-filtered-spans.json"
        rows_file.write_text(json.dumps({"url": filtered, "rows": rows}, indent=1) + "\n")
        clicked = browser.evaluate(CLICK_SERVER_SPAN_JS)
        if clicked:
            # Tall enough for every attribute of a request's span, the app.user.* ones included.
            browser.send(
                "Emulation.setDeviceMetricsOverride", session=True, width=WIDTH, height=1700, deviceScaleFactor=1, mobile=False
            )
            time.sleep(3)
            browser.evaluate(
                "(() => { const t = [...document.querySelectorAll('[role=tab], button')]"
                ".find(e => e.innerText.trim() === 'Attributes'); if (t) t.click(); })()"
            )
            time.sleep(2)
            browser.screenshot(args.out / "phoenix-span-attributes.png")
    finally:
        browser.close()
    print(f"{len(rows)} rows; screenshots in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
