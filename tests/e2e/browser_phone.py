"""A real browser phone for the e2e suite: JsSIP (npm, bundled by ``npm ci`` in
``tests/e2e/browser``) in Debian's headless ``chromium``, driven over the DevTools protocol.

* :class:`PageServer` serves ``tests/e2e/browser`` (``phone.html`` and ``dist/jssip.js``) on
  127.0.0.1 from a thread: ``http://127.0.0.1`` is a secure context, so the page may ask for a
  microphone (chromium's fake one).
* :class:`Browser` starts chromium with the page, reads the DevTools port chromium picked
  (``DevToolsActivePort`` in its profile folder), connects to the page's DevTools WebSocket
  with the ``websockets`` client and evaluates JavaScript there (``Runtime.evaluate``);
  :meth:`Browser.wait_event` waits (bounded) for an entry of the page's ``phone.events``.

What is missing is a failure that names it, never a skip: the ``chromium`` Debian package,
or JsSIP (``make test`` runs ``npm ci`` in tests/e2e/browser, with Debian's ``nodejs`` and
``npm``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.harness import LOOPBACK

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
JSSIP = BROWSER_DIR / "dist" / "jssip.js"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    # the proxy's test certificate is not in chromium's store
    "--ignore-certificate-errors", "--remote-debugging-port=0", "--remote-allow-origins=*",
)


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise AssertionError("chromium is missing: install the Debian package chromium "
                             "(make test installs it)")
    return path


def jssip() -> Path:
    if not JSSIP.exists():
        raise AssertionError(f"JsSIP is missing ({JSSIP}): run `make test`, which installs the "
                             "Debian packages nodejs and npm and runs `npm ci` in "
                             f"{BROWSER_DIR}")
    return JSSIP


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class PageServer:
    """``tests/e2e/browser`` over HTTP on 127.0.0.1 (a free port), from a thread."""

    def __init__(self) -> None:
        jssip()
        handler = functools.partial(_Quiet, directory=str(BROWSER_DIR))
        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
        self.port = self.httpd.server_address[1]
        self.origin = f"http://{LOOPBACK}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       name="page-server")
        self.thread.start()

    def url(self, **query: str) -> str:
        return f"{self.origin}/phone.html?{urlencode(query)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Browser:
    """Headless chromium showing one page, and a DevTools connection to that page."""

    def __init__(self, proc: asyncio.subprocess.Process, profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self.cdp: ClientConnection | None = None
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, url: str, profile: Path, log: Path) -> Browser:
        profile.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its helper processes go with its group
        self = cls(proc, profile)
        try:
            await self._attach(log)
        except BaseException:
            await self.close()
            raise
        return self

    async def _attach(self, log: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        active = self.profile / "DevToolsActivePort"
        while not active.exists() or not active.read_text().strip():
            if self.proc.returncode is not None or loop.time() > deadline:
                raise AssertionError("chromium did not start its DevTools endpoint:\n"
                                     + log.read_text("utf-8", "replace")[-3000:])
            await asyncio.sleep(0.05)  # chromium writes the file once it listens
        port = int(active.read_text().split()[0])
        while True:
            targets = await asyncio.to_thread(_json, f"http://{LOOPBACK}:{port}/json/list")
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if loop.time() > deadline:
                raise AssertionError(f"chromium shows no page: {targets}")
            await asyncio.sleep(0.05)  # bounded poll: the page appears with no event to await
        self.cdp = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                                 open_timeout=10)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (JSON-able), or AssertionError with the
        exception the page raised."""
        assert self.cdp is not None
        n = next(self._ids)
        await self.cdp.send(json.dumps({"id": n, "method": "Runtime.evaluate", "params": {
            "expression": expression, "returnByValue": True, "awaitPromise": True}}))
        while True:
            answer = json.loads(await asyncio.wait_for(self.cdp.recv(), 10))
            if answer.get("id") == n:
                break
        result = answer.get("result", {})
        if "exceptionDetails" in result or "error" in answer:
            raise AssertionError(f"{expression}: {answer}")
        return result.get("result", {}).get("value")

    async def events(self) -> list[dict[str, Any]]:
        found = await self.evaluate("window.phone ? window.phone.events : []")
        return list(found or [])

    async def wait_event(self, kind: str, timeout: float = 20.0, after: int = 0
                         ) -> dict[str, Any]:
        """The first event ``kind`` at index >= ``after`` of ``phone.events``; fails early on
        a ``failed``/``registrationFailed``/``error`` event, and after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            events = await self.events()
            for e in events[after:]:
                if e["kind"] == kind:
                    return e
                if e["kind"] in ("failed", "registrationFailed", "error") and kind != e["kind"]:
                    raise AssertionError(f"waiting for {kind}: {e}; all: {events}")
            if loop.time() > deadline:
                raise AssertionError(f"no {kind} event in {timeout} s: {events}")
            await asyncio.sleep(0.1)  # the page is polled: its events raise nothing here

    async def close(self) -> None:
        if self.cdp is not None:
            await self.cdp.close()
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                _signal_group(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        _signal_group(self.proc.pid, signal.SIGKILL)  # a helper left behind


def _signal_group(pgid: int, sig: int) -> None:
    """Signal chromium's process group (it leads it: start_new_session)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback DevTools
        return json.loads(r.read())
