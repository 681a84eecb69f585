"""A loopback HTTP file server for download tests (127.0.0.1 only, one thread, started per test).

It serves ``files`` (path -> bytes) with ``Range`` support and records every request (path,
``Range`` and ``If-Range`` headers, status, body bytes sent). Each file carries validators: an
``ETag`` (a hash of its bytes) and a ``Last-Modified``; a ``Range`` request whose ``If-Range``
does not match them gets the whole file with status 200, as RFC 9110 says (``if_range=False``
makes the server ignore ``If-Range``; ``validators=False`` sends none). ``redirects[path]`` is
a URL answered with ``302 Found``. ``plan[path]`` is a list of behaviours consumed by
successive requests for that path: ``"500"`` / ``"503"`` (an error answer), ``"404"``, or
``("drop", n)`` (announce the full length, send ``n`` bytes, close the connection).
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAST_MODIFIED = "Mon, 02 Mar 2026 10:00:00 GMT"


@dataclass
class Hit:
    path: str
    range: str | None
    status: int
    sent: int
    if_range: str | None = None


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


@dataclass
class LoopbackServer:
    files: dict[str, bytes] = field(default_factory=dict)
    plan: dict[str, list] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    redirects: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    validators: bool = True
    if_range: bool = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def bytes_sent(self) -> int:
        return sum(h.sent for h in self.hits)

    def start(self) -> LoopbackServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None, send: int | None = None):
                out = body if send is None else body[:send]
                # recorded before anything goes out, so a client that has the answer sees the hit
                server.hits.append(
                    Hit(self.path, self.headers.get("Range"), status, len(out), self.headers.get("If-Range"))
                )
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(out)
                self.wfile.flush()
                if send is not None:
                    self.close_connection = True

            def do_GET(self):
                if self.path in server.redirects:
                    return self._answer(302, b"", {"Location": server.redirects[self.path]})
                steps = server.plan.get(self.path) or []
                step = steps.pop(0) if steps else None
                if step in ("500", "502", "503"):
                    return self._answer(int(step), b"busy", {"Connection": "close"})
                body = server.files.get(self.path)
                if body is None or step == "404":
                    return self._answer(404, b"not found")
                start, status = 0, 200
                headers = {"ETag": etag_of(body), "Last-Modified": LAST_MODIFIED} if server.validators else {}
                m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                validator = self.headers.get("If-Range")
                fresh = validator is None or not server.if_range or validator in headers.values()
                if m and server.ranges and fresh:
                    start = int(m.group(1))
                    if start >= len(body):
                        return self._answer(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                send = step[1] if isinstance(step, tuple) and step[0] == "drop" else None
                self._answer(status, body[start:], headers, send=send)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
