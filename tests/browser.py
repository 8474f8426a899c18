"""Open a page in a real headless Chromium and report what a user's browser would show:
console messages, uncaught exceptions, failed loads, and the value of a JavaScript expression.

A small Chrome DevTools Protocol client over `--remote-debugging-pipe` (file descriptors 3 and
4, NUL-terminated JSON messages), so no Python package beyond the standard library is needed:
only the browser (Debian: `apt-get install chromium`; `make test` installs it when root).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    def __init__(self, browser: str, profile: str) -> None:
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def give_fds() -> None:  # in the child: the pipe ends become fds 3 and 4
            # Through copies above 10 first: either end may itself be fd 3 or 4.
            read_copy = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_copy = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_copy, 3)
            os.dup2(write_copy, 4)

        self.process = subprocess.Popen(
            [
                browser,
                "--headless",
                "--no-sandbox",  # we run as root in CI containers
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            preexec_fn=give_fds,
            pass_fds=(3, 4, to_browser_read, from_browser_write),  # 3, 4: kept after give_fds
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(timeout=30)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def receive(self, timeout: float) -> dict:
        """The next message; events are also kept in self.events."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser exited")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def wait_for(self, method: str, timeout: float = 30) -> None:
        while not any(e["method"] == method for e in self.events):
            self.receive(timeout)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.to_browser)
        os.close(self.from_browser)


def render(page: Path | str, expression: str) -> tuple[list[str], object]:
    """Load `page` (a file, or an http:// URL) and evaluate `expression` once loaded.

    Returns (problems, value): problems are the console errors and warnings, uncaught
    exceptions and failed loads (log entries of level error), one line each.
    """
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no chromium installed")
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            url = page if str(page).startswith("http") else Path(page).resolve().as_uri()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            result = pipe.send(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True, "awaitPromise": True},
                session=session,
            )
        finally:
            pipe.close()
    problems = []
    for event in pipe.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
            problems.append(f"console {params['type']}: {params['args']}")
        elif event["method"] == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails']}")
        elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
    if "exceptionDetails" in result:
        problems.append(f"the test's expression failed: {result['exceptionDetails']}")
    return problems, result.get("result", {}).get("value")
