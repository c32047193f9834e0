"""A small HTTP file server on loopback for the download tests (standard library only).

Serves in-memory files with HTTP Range support. The first path segment selects a behaviour:
``/ok/<name>`` normal; ``/cut/<name>`` the first full request stops after ``cut_at`` bytes and closes
the connection (Content-Length still announces the whole file); ``/bad/<name>`` sends the file with one
byte changed; ``/norange/<name>`` ignores Range headers (always 200 with the whole file);
``/missing/<name>`` answers 404. Every request is recorded as (method, path, Range header).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackFileServer:
    def __init__(self, files: dict[str, bytes], cut_at: int | None = None):
        self.files = dict(files)
        self.cut_at = cut_at
        self.requests: list[tuple[str, str, str | None]] = []
        self._cut_done: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append(("GET", self.path, self.headers.get("Range")))
                parts = self.path.strip("/").split("/", 1)
                if len(parts) != 2 or parts[1] not in server.files or parts[0] == "missing":
                    self.send_error(404)
                    return
                mode, name = parts
                data = server.files[name]
                if mode == "bad":
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                range_header = self.headers.get("Range")
                if range_header and mode != "norange":
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if mode == "cut" and name not in server._cut_done and server.cut_at is not None:
                    server._cut_done.add(name)
                    self.wfile.write(body[: server.cut_at - start])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
