"""Headless Chromium driven over its DevTools pipe (`--remote-debugging-pipe`: JSON commands on
fd 3, replies and events on fd 4, each message ended by a NUL byte), so a test can wait in real
time for what the page reports. `--virtual-time-budget` cannot: a video's decoding runs on media
threads in real time, while virtual time races ahead, and the DOM was dumped before it settled."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserError(RuntimeError):
    """Chromium ended, answered with an error, or did not answer in time."""


@dataclass
class DevToolsPipe:
    to_browser: int
    from_browser: int
    pending: bytearray = field(default_factory=bytearray)
    next_id: int = 0

    def call(self, method: str, session: str | None = None, timeout_s: float = 30.0, **params):
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._next_message(deadline)
            if reply.get("id") != self.next_id:
                continue  # an event, or the reply to an earlier call
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error']}")
            return reply.get("result", {})

    def _next_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise BrowserError("chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise BrowserError("chromium closed its DevTools pipe")
            self.pending += chunk
        end = self.pending.index(b"\0")
        message = json.loads(self.pending[:end])
        del self.pending[: end + 1]
        return message


@dataclass
class Page:
    pipe: DevToolsPipe
    session: str

    def evaluate(self, expression: str) -> Any:
        result = self.pipe.call(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0) -> Any:
        """Poll `expression` until it is truthy; its last value either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self.pipe.call("Page.captureScreenshot", self.session)["data"])


@contextmanager
def open_page(executable: str, profile: Path, url: str, size: tuple[int, int]) -> Iterator[Page]:
    """A fresh headless Chromium (own profile: nothing cached) showing `url`, once loaded."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def hand_over_fds() -> None:  # in the child: it reads fd 3 and writes fd 4
        reads, writes = os.dup(to_browser_r), os.dup(from_browser_w)  # neither is then 3 and 4
        os.dup2(reads, 3)
        os.dup2(writes, 4)

    width, height = size
    command = [
        executable,
        *FLAGS,
        "--remote-debugging-pipe",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    browser = subprocess.Popen(
        command,
        preexec_fn=hand_over_fds,
        pass_fds=(3, 4),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = DevToolsPipe(to_browser_w, from_browser_r)
    try:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(pipe, session)
        pipe.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        pipe.call("Page.navigate", session, url=url)
        page.wait_for("document.readyState === 'complete'")
        yield page
    finally:
        try:
            pipe.call("Browser.close", timeout_s=5)
        except BrowserError:
            pass
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)
