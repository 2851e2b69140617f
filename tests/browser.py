"""Headless Chromium for the tests, driven through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4), so that no
websocket client or browser-automation package is needed.

``load_page(path)`` opens a file, waits for its load event and returns the console errors,
uncaught exceptions, failed loads, images that did not decode, and a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROKEN_IMAGES = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                 ".map(i => i.getAttribute('src'))")


def find_chromium() -> str | None:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Loaded:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    broken_images: list[str] = field(default_factory=list)
    image_count: int = 0
    screenshot: bytes = b""


class Chromium:
    """One headless browser; ``call`` sends a command and returns its result, keeping the
    events that arrive meanwhile."""

    def __init__(self, binary: str, timeout: float = 60.0):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        self.timeout = timeout
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-pipe", "--no-first-run", "--window-size=1280,1024",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=_move_fds(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.events: list[dict] = []
        self.next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted = self.send(method, params, session)
        while True:
            message = self.receive()
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> dict:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            message = self.receive()
            if message.get("method") == method:
                return message
            self.events.append(message)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)


def _move_fds(read_end: int, write_end: int):
    """In the child: the command pipe on fd 3 and the reply pipe on fd 4, where Chromium looks
    for them (through copies above 9, in case either end is 3 or 4 already). Python's own
    descriptors are not inherited, so ``close_fds=False`` passes these two alone."""
    def move() -> None:
        read_copy = fcntl.fcntl(read_end, fcntl.F_DUPFD, 10)
        write_copy = fcntl.fcntl(write_end, fcntl.F_DUPFD, 10)
        os.dup2(read_copy, 3)
        os.dup2(write_copy, 4)
    return move


def load_page(path: str | Path, binary: str | None = None, width: int = 1280) -> Loaded:
    """Open ``path`` in headless Chromium; what went wrong while loading, and a screenshot."""
    browser = Chromium(binary or find_chromium())
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                         "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
                     "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        loaded = Loaded()
        loaded.broken_images = browser.call("Runtime.evaluate", {
            "expression": BROKEN_IMAGES, "returnByValue": True}, session=session)["result"]["value"]
        loaded.image_count = browser.call("Runtime.evaluate", {
            "expression": "document.images.length", "returnByValue": True},
            session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png",
                                                      "captureBeyondViewport": True},
                            session=session)
        loaded.screenshot = base64.b64decode(shot["data"])
        loaded.errors = page_errors(browser.events)
        return loaded
    finally:
        browser.close()


def page_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and failed network loads."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                 for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed":
            errors.append(f"network: {params.get('errorText')}")
    return errors
