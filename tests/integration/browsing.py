"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for page tests.

:meth:`Browser.start` runs ``chromium --headless=new --remote-debugging-port=0`` with a
throw-away profile, reads the browser's DevTools websocket address from its stderr and attaches
to its one tab in flat session mode; :class:`Tab` then navigates, evaluates JavaScript and takes
screenshots. The flags keep Chromium off the network (no component updates, no background
requests): a page test reaches only the loopback server it opens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect

FLAGS: Final = (
    "--headless=new",
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--no-pings",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)
LISTENING: Final = "DevTools listening on "


def executable() -> str | None:
    return shutil.which("chromium")


class Tab:
    """One page of the browser, reached through its flat-mode CDP session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    async def navigate(self, url: str, timeout: float = 10.0) -> None:
        await self.send("Page.navigate", {"url": url})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.evaluate("document.readyState") != "complete":
            if loop.time() > deadline:
                raise TimeoutError(f"{url} did not load in {timeout} s")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-able), or RuntimeError on a throw."""
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self) -> bytes:
        """The whole page as PNG, not only the window."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        reply = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                         "scale": 1},
            },
        )  # fmt: skip
        return base64.b64decode(reply["data"])


class Browser:
    def __init__(self, proc: asyncio.subprocess.Process, ws: ClientConnection) -> None:
        self.proc = proc
        self.ws = ws
        self.stderr: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self._drain = asyncio.create_task(self._drain_stderr())

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, profile: Path, *, timeout: float = 20.0) -> AsyncIterator[Browser]:
        binary = executable()
        if binary is None:
            raise FileNotFoundError("chromium is not installed (Debian package chromium)")
        proc = await asyncio.create_subprocess_exec(
            binary, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        browser = None
        try:
            url = await asyncio.wait_for(_devtools_url(proc), timeout)
            ws = await connect(url, max_size=None, open_timeout=timeout)
            browser = cls(proc, ws)
            yield browser
        finally:
            if browser is not None:
                await browser._close()
            await _stop(proc, grace=5.0 if browser is not None else 0.0)

    async def tab(self) -> Tab:
        """The tab Chromium opened (about:blank)."""
        targets = await self.send("Target.getTargets")
        page = next(t for t in targets["targetInfos"] if t["type"] == "page")
        attached = await self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )
        return Tab(self, attached["sessionId"])

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        reply = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = reply
        await self.ws.send(json.dumps(message))
        return await asyncio.wait_for(reply, 30.0)

    async def _read(self) -> None:
        """Hand each reply to its caller; events are not used."""
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                reply = self._waiting.pop(message.get("id", -1), None)
                if reply is None or reply.done():
                    continue
                if "error" in message:
                    reply.set_exception(RuntimeError(f"CDP error: {message['error']}"))
                else:
                    reply.set_result(message.get("result", {}))
        finally:
            for reply in self._waiting.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("the DevTools connection closed"))

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5.0)
        await self.ws.close()
        for task in (self._reader, self._drain):
            task.cancel()
        await asyncio.gather(self._reader, self._drain, return_exceptions=True)


async def _devtools_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    seen = []
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").strip()
        if line.startswith(LISTENING):
            return line.removeprefix(LISTENING)
        seen.append(line)
    raise RuntimeError("chromium exited before DevTools listened:\n" + "\n".join(seen))


async def _stop(proc: asyncio.subprocess.Process, *, grace: float) -> None:
    """Wait ``grace`` seconds for Chromium to exit by itself, then terminate, then kill it."""
    for stop in (None, proc.terminate, proc.kill):
        if proc.returncode is not None:
            return
        if stop is not None:
            stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace if stop is None else 5.0)
