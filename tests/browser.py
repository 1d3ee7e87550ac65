"""Load a local HTML file in headless Chromium and report what a person would notice: broken images, console errors,
script dialogs, the visible text, and a screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3, replies and
events on fd 4, NUL-separated JSON), so no Python package and no network port is needed. Tests that use
:func:`load_page` skip with a clear reason on machines without Chromium (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PageLoad", "ParsedHtml", "chromium_path", "load_page", "parse_html"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)
_BROKEN_IMAGES_JS = """JSON.stringify(Array.from(document.images)
  .filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => (i.getAttribute('src') || '').slice(0, 120)))"""


@dataclass
class PageLoad:
    """What loading one page showed."""

    broken_images: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    text: str = ""
    images: int = 0
    image_sizes: list[tuple[float, float]] = field(default_factory=list)
    """Each image's rendered (width, height) in CSS pixels."""


def chromium_path() -> str | None:
    """The Chromium executable on PATH (or ``$CHROMIUM``), or ``None``."""
    explicit = os.environ.get("CHROMIUM")
    if explicit and Path(explicit).exists():
        return explicit
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _move_fds(read_end: int, write_end: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4 (inheritable), whatever numbers they had."""
    high_read, high_write = os.dup(read_end), os.dup(write_end)  # fresh copies, so the moves cannot collide
    os.dup2(high_read, 3, inheritable=True)
    os.dup2(high_write, 4, inheritable=True)
    # A copy may itself have landed on 3 or 4 (when those were free): dup2 onto the same number is a no-op that
    # leaves the copy close-on-exec, so set the flags explicitly.
    os.set_inheritable(3, True)
    os.set_inheritable(4, True)


class _Pipe:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, executable: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        self._proc = subprocess.Popen(
            [executable, *_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            close_fds=False,  # the pipe ends are moved to fds 3 and 4 in the child, which close_fds would close
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _move_fds(to_chrome_r, from_chrome_w),  # noqa: PLW1509
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._next_id += 1
        wanted = self._next_id
        message: dict[str, Any] = {"id": wanted, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise TimeoutError(f"Chromium did not answer {method}")
            if reply.get("id") == wanted:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return True
        while True:
            event = self._read(deadline)
            if event is None:
                return False
            self.events.append(event)
            if event.get("method") == method:
                return True

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (event := self._read(deadline)) is not None:
            self.events.append(event)

    def _read(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._from_chrome], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":  # a dialog blocks the page: dismiss it at once
            self._next_id += 1
            answer = {"id": self._next_id, "method": "Page.handleJavaScriptDialog", "params": {"accept": True},
                      "sessionId": message.get("sessionId")}
            os.write(self._to_chrome, json.dumps(answer).encode() + b"\0")
        return message

    def close(self) -> None:
        try:
            os.write(self._to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self._proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - whatever happened, make sure the browser is gone
            self._proc.kill()
            self._proc.wait()
        finally:
            os.close(self._to_chrome)
            os.close(self._from_chrome)


def _describe_console(event: dict[str, Any]) -> str | None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return details.get("exception", {}).get("description") or details.get("text", "exception")
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def load_page(path: Path, screenshot: Path | None = None, width: int = 1280, timeout: float = 60.0) -> PageLoad:
    """Open ``path`` in headless Chromium and report what went wrong on it.

    Args:
        path: a local HTML file.
        screenshot: if given, a full-page PNG screenshot is written there.
        width: the viewport width in CSS pixels.
        timeout: seconds to wait for the page's load event.

    Returns:
        A :class:`PageLoad`. Calls ``pytest.skip`` when no Chromium is installed.
    """
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium on this machine (install Debian's 'chromium' to run the browser tests)")
    with tempfile.TemporaryDirectory(prefix="cnn-explain-chromium-") as profile:
        browser = _Pipe(executable, profile)
        try:
            return _inspect(browser, Path(path).resolve(), screenshot, width, timeout)
        finally:
            browser.close()


def _inspect(browser: _Pipe, path: Path, screenshot: Path | None, width: int, timeout: float) -> PageLoad:
    targets = browser.send("Target.getTargets")["targetInfos"]
    page_id = next(t["targetId"] for t in targets if t["type"] == "page")
    session = browser.send("Target.attachToTarget", {"targetId": page_id, "flatten": True})["sessionId"]
    for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
        browser.send(domain, session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
    browser.events.clear()
    browser.send("Page.navigate", {"url": path.as_uri()}, session=session)
    if not browser.wait_event("Page.loadEventFired", timeout):
        raise TimeoutError(f"{path.name} did not finish loading in {timeout:.0f} s")
    browser.drain(0.5)

    result = PageLoad()
    for event in browser.events:
        if event.get("method") == "Page.javascriptDialogOpening":
            result.dialogs.append(event["params"].get("message", ""))
        elif (message := _describe_console(event)) is not None:
            result.console_errors.append(message)

    def evaluate(expression: str) -> Any:
        reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        return reply["result"].get("value")

    result.broken_images = json.loads(evaluate(_BROKEN_IMAGES_JS))
    result.images = int(evaluate("document.images.length"))
    result.image_sizes = [tuple(size) for size in json.loads(evaluate(
        "JSON.stringify(Array.from(document.images).map(i => [i.getBoundingClientRect().width, "
        "i.getBoundingClientRect().height]))"))]
    result.text = evaluate("document.body ? document.body.innerText : ''") or ""
    if screenshot is not None:
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": max(width, size["width"]), "height": min(size["height"], 16000), "scale": 1}
        shot = browser.send("Page.captureScreenshot",
                            {"format": "png", "clip": clip, "captureBeyondViewport": True}, session=session)
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    return result


class ParsedHtml(HTMLParser):
    """Start tags with their attributes, and text chunks, of an HTML document (no browser needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: D102
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:  # noqa: D102
        self.text.append(data)


def parse_html(document: str | Path) -> ParsedHtml:
    """Parse a document given as text or as a file path."""
    parser = ParsedHtml()
    parser.feed(document.read_text(encoding="utf-8") if isinstance(document, Path) else document)
    return parser
