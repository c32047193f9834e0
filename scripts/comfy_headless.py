"""Drive a real ComfyUI headlessly: start and stop a ``main.py`` server, turn UI-format workflows
(what users load and share) into API-format prompts, submit them and wait for the results.

Used by the main job (scripts/restore.py), the benchmark and the tests. Standard library only, so
it runs in any Python that can reach the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_LINK_NAME = "comfyui-diffbir"


def comfyui_root() -> Path:
    """The ComfyUI tree to run: COMFYUI_PATH, else the one scripts/setup.sh prepared in the environment
    folder (DIFFBIR_ENV, default this repository: ``.comfyui``)."""
    env_dir = Path(os.environ.get("DIFFBIR_ENV") or REPO)
    root = Path(os.environ.get("COMFYUI_PATH") or env_dir / ".comfyui")
    if not (root / "main.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {root}: run scripts/setup.sh first (or set COMFYUI_PATH)")
    return root.resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path, models_dir: Path | None = None, pack: Path = REPO) -> Path:
    """A ComfyUI --base-directory with this pack linked into custom_nodes and, optionally, the
    models folder linked to ``models_dir``."""
    base = Path(base)
    for sub in ("custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(Path(pack).resolve(), target_is_directory=True)
    models = base / "models"
    if models_dir is not None and not models.exists():
        models.symlink_to(Path(models_dir).resolve(), target_is_directory=True)
    models.mkdir(exist_ok=True)
    return base


class ComfyServer:
    """A headless ComfyUI ``main.py`` on a free loopback port. Use as a context manager."""

    def __init__(self, base_directory: Path, extra_args: list[str] | None = None, python: str | None = None,
                 ready_timeout: float = 180.0, env: dict | None = None, cwd: Path | None = None):
        self.base = Path(base_directory)
        self.cwd = cwd  # working directory of the server process (default: the ComfyUI folder)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args or [])
        self.python = python or sys.executable
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"
        self.client_id = uuid.uuid4().hex
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}

    def start(self) -> ComfyServer:
        root = comfyui_root()
        cmd = [self.python, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", *self.extra_args]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, cwd=self.cwd or root, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with code {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI server not ready after {self.ready_timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self, tail_chars: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail_chars:]
        except FileNotFoundError:
            return ""

    # -- HTTP ---------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return json.loads(body) if body.strip() else None  # /interrupt answers with an empty body
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            raise PromptRejected(f"POST {path} -> HTTP {error.code}: {body}") from None

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 1800, on_poll=None) -> dict:
        """Polls /history until the prompt finished; returns its history entry or raises with the
        node's error message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                history = self.get(f"/history/{prompt_id}")
            except (TimeoutError, urllib.error.URLError):  # on a loaded CPU the busy server may answer late
                history = {}
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error" or not status.get("completed", True):
                    raise PromptFailed(_error_text(status), entry)
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server died while running the prompt:\n{self.log()}")
            if on_poll:
                on_poll()
            time.sleep(0.5)
        self.post("/interrupt", {})
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 1800) -> dict:
        return self.wait(self.queue(prompt), timeout=timeout)

    def run_with_progress(self, prompt: dict, report, timeout: float = 86400) -> dict:
        """Like run(), calling ``report(event, data)`` for the server's websocket messages
        ("executing", "progress", ...) while the prompt runs. A live preview (a binary frame) is
        reported as ``("preview_image", {"format": "JPEG" or "PNG", "image": bytes})``, right after
        the "progress" message of its sampling step."""
        import threading

        stop, connected = threading.Event(), threading.Event()
        thread = threading.Thread(target=self._listen, args=(report, stop, connected), daemon=True)
        thread.start()
        # the server sends a prompt's messages only to sockets open when they happen
        connected.wait(timeout=30)
        try:
            return self.run(prompt, timeout=timeout)
        finally:
            stop.set()
            thread.join(timeout=5)

    def _listen(self, report, stop, connected) -> None:
        import asyncio

        import aiohttp  # a ComfyUI dependency

        async def listen():
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.url.replace('http', 'ws')}/ws?clientId={self.client_id}") as ws:
                    connected.set()
                    while not stop.is_set():
                        try:
                            message = await ws.receive(timeout=0.5)
                        except asyncio.TimeoutError:
                            continue
                        if message.type == aiohttp.WSMsgType.TEXT:
                            data = json.loads(message.data)
                            report(data.get("type"), data.get("data", {}))
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            preview = _preview_frame(message.data)
                            if preview is not None:
                                report("preview_image", preview)
                        elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            return

        try:
            asyncio.run(listen())
        except Exception as error:  # progress display is best effort; the result comes from /history
            report("progress_unavailable", {"error": str(error)})
        finally:
            connected.set()

    def output_images(self, entry: dict, node_id: str | None = None) -> list[Path]:
        """Paths of the images the prompt's output nodes saved."""
        paths = []
        for nid, output in entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for image in output.get("images", []):
                folder = {"output": "output", "temp": "temp", "input": "input"}[image.get("type", "output")]
                paths.append(self.base / folder / image.get("subfolder", "") / image["filename"])
        return paths


# ComfyUI's binary websocket frames: a big-endian uint32 event type, then the payload. A preview
# image (event 1, what a client that announces no feature flags gets) is a uint32 image type
# (1 JPEG, 2 PNG) followed by the encoded image.
PREVIEW_IMAGE_EVENT = 1
PREVIEW_IMAGE_FORMATS = {1: "JPEG", 2: "PNG"}


def _preview_frame(frame: bytes) -> dict | None:
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != PREVIEW_IMAGE_EVENT:
        return None
    image_format = PREVIEW_IMAGE_FORMATS.get(int.from_bytes(frame[4:8], "big"), "unknown")
    return {"format": image_format, "image": bytes(frame[8:])}


class PromptRejected(RuntimeError):
    """The server refused the prompt (validation failed)."""


class PromptFailed(RuntimeError):
    def __init__(self, message, entry):
        super().__init__(message)
        self.entry = entry


def _error_text(status: dict) -> str:
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return (f"{data.get('node_type')} (node {data.get('node_id')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
        if event == "execution_interrupted":
            return f"interrupted at {data.get('node_type')} (node {data.get('node_id')})"
    return f"prompt failed: {status}"


# -- UI-format workflow -> API-format prompt ---------------------------------------------------
SEED_WIDGET_NAMES = {"seed", "noise_seed"}  # the web UI adds a "control_after_generate" widget after these


def _widget_input_names(node_info: dict) -> list[tuple[str, dict]]:
    """Widget inputs of a node, in the order the web UI stores them in ``widgets_values``."""
    names = []
    required = node_info["input"].get("required", {})
    optional = node_info["input"].get("optional", {})
    order = node_info.get("input_order", {})
    for group, spec in (("required", required), ("optional", optional)):
        for name in order.get(group, list(spec)):
            kind, options = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) \
                    and not options.get("forceInput"):  # socket only: no widget value is stored
                names.append((name, options))
    return names


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """Converts a UI-format workflow (nodes + links) into the API format ``POST /prompt`` takes.

    Widget values are matched to input names with the node definitions from ``/object_info``;
    links become ``[source_node_id, output_index]``. Muted/bypassed nodes and UI-only nodes (notes,
    reroutes, primitives) are resolved or dropped as the web UI does for the cases used here.
    """
    links = {link[0]: link for link in workflow.get("links", [])}  # id, from, from_slot, to, to_slot, type
    nodes_by_id = {node["id"]: node for node in workflow["nodes"]}
    prompt = {}

    def source_of(link_id):
        link = links[link_id]
        node = nodes_by_id[link[1]]
        if node["type"] == "Reroute":
            return source_of(node["inputs"][0]["link"])
        return [str(link[1]), link[2]]

    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode") or node.get("mode", 0) in (2, 4):
            continue
        if node_type not in object_info:
            raise KeyError(f"workflow node {node['id']} has type {node_type!r}, which this ComfyUI does not know "
                           "(a missing custom node pack?)")
        info = object_info[node_type]
        inputs = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            inputs.update(node["widgets_values"])
        else:
            position = 0
            for name, options in _widget_input_names(info):
                if position >= len(values):
                    break
                inputs[name] = values[position]
                position += 1
                if name in SEED_WIDGET_NAMES or options.get("control_after_generate"):
                    position += 1  # skip the web UI's "control_after_generate" value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                inputs[slot["name"]] = source_of(slot["link"])
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs,
                                   "_meta": {"title": node.get("title", node_type)}}
    return prompt


def load_workflow(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def scratch_base(prefix="diffbir-comfy-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
