"""A page opened in headless Chromium (Debian's `chromium-headless-shell`), driven over the
DevTools protocol with a small client on `websockets`: what a reader's browser shows of a
report, and what it complained about while loading it.

`open_page(html_file, screenshot)` loads the file, waits for its load event, saves a full-page
screenshot and returns a `Page`: console errors and exceptions, failed loads (Log domain),
images that did not decode, and the counts of the page's tables, figures and headings.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARY = "chromium-headless-shell"
INSTALL = f"{BINARY} is not installed: apt-get install -y {BINARY}"
WIDTH = 1280

# Read in the page after its load event: everything a test counts comes from the DOM.
PAGE_FACTS = """JSON.stringify({
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
                               .map(i => i.alt || i.src.slice(0, 40)),
  images: document.images.length,
  tables: document.querySelectorAll('table').length,
  figures: document.querySelectorAll('figure').length,
  headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  verdict: !!document.querySelector('section.verdict'),
  firstSection: (document.querySelector('body > section, body > h2') || {}).className || '',
  height: document.documentElement.scrollHeight,
  overflowing: [...document.querySelectorAll('img, table')]
      .filter(e => e.getBoundingClientRect().right
                   > document.body.getBoundingClientRect().right + 1)
      .map(e => e.alt || e.tagName),
})"""


@dataclass
class Page:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    facts: dict = field(default_factory=dict)  # PAGE_FACTS
    screenshot: Path | None = None


def binary() -> str | None:
    return shutil.which(BINARY)


class _Connection:
    """Commands and events over one DevTools websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.socket.recv(timeout=max(end - time.monotonic(),
                                                                      0.1))))


def _devtools_url(process: subprocess.Popen) -> str:
    """The browser's websocket address, from the line it prints on stderr at start."""
    for line in process.stderr:
        if m := re.search(r"DevTools listening on (ws://\S+)", line):
            return m.group(1)
    raise RuntimeError(f"{BINARY} exited before it listened (code {process.wait()})")


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled" and params["type"] in (
                "error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                 for a in params["args"]))
        elif event.get("method") == "Runtime.exceptionThrown":
            errors.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
    return errors


def open_page(html_file: Path, screenshot: Path) -> Page:
    """Load `html_file` in a fresh headless Chromium, full-page screenshot to `screenshot`."""
    path = binary()
    if path is None:
        raise FileNotFoundError(INSTALL)
    with tempfile.TemporaryDirectory(prefix="fedmem-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [path, "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", f"--window-size={WIDTH},900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # its helper processes in one group, ended together
        try:
            return _load(_devtools_url(process), html_file, screenshot)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _load(browser_url: str, html_file: Path, screenshot: Path) -> Page:
    browser = _Connection(browser_url)
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    page_url = browser_url.split("/devtools/")[0] + f"/devtools/page/{target}"
    tab = _Connection(page_url)
    for domain in ("Page", "Runtime", "Log"):
        tab.call(f"{domain}.enable")
    tab.call("Page.navigate", url=html_file.resolve().as_uri())
    tab.wait_for("Page.loadEventFired")
    facts = json.loads(tab.call("Runtime.evaluate", expression=PAGE_FACTS,
                                returnByValue=True)["result"]["value"])
    shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    page = Page(_errors(tab.events), facts, screenshot)
    tab.socket.close()
    browser.call("Target.closeTarget", targetId=target)
    browser.socket.close()
    return page
