"""Headless Chromium (Debian's package) driven over the Chrome DevTools Protocol with aiohttp (a
ComfyUI dependency): no browser download, no extra Python package. Used to open the example
workflows in ComfyUI's real web UI."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-port=0", "--hide-scrollbars"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One Chromium page. ``evaluate(js)`` returns the value of an (awaited) JS expression."""

    def __init__(self, window=(1600, 1000)):
        self.profile = tempfile.mkdtemp(prefix="diffbir-chromium-")
        size = f"--window-size={window[0]},{window[1]}"
        self.process = subprocess.Popen([chromium_path(), *CHROMIUM_FLAGS, size, f"--user-data-dir={self.profile}",
                                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        self.browser_ws = None
        while time.monotonic() < deadline and self.browser_ws is None:
            line = self.process.stderr.readline()
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                self.browser_ws = match.group(1)
        if self.browser_ws is None:
            self.close()
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        port = re.search(r":(\d+)/", self.browser_ws).group(1)
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        self.page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.session = self.ws = None
        self.loop.run_until_complete(self._connect())
        self.next_id = 0
        self.console = []

    async def _connect(self):
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.page_ws, max_msg_size=0)

    async def _call(self, method, params=None, timeout=60):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(message.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            if data.get("id") == my_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise TimeoutError(method)

    def call(self, method, params=None, timeout=60):
        return self.loop.run_until_complete(self._call(method, params, timeout))

    def evaluate(self, expression: str, timeout: float = 60):
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, timeout)
        if result.get("exceptionDetails"):
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 120):
        self.call("Runtime.enable")
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(ready):
                    return
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"page {url} not ready ({ready}) in {timeout:.0f} s; console: {self.console[-20:]}")

    def screenshot(self, path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            if self.ws is not None:
                self.loop.run_until_complete(self.ws.close())
                self.loop.run_until_complete(self.session.close())
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)
