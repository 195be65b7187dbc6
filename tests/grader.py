"""A reward webhook for tests: a real HTTP server on loopback with good and bad routes.

/reward    {"reward": 0} when the answer contains "7", else {"reward": -1}
/garbage   200 with a body that is not the reward JSON
/nan       {"reward": NaN}
/slow      answers after 3 s
/redirect  302 to /reward (must not be followed)
/error     HTTP 500
/huge      {"reward": -1e300}: a finite Python float, -inf in float32
/trickle   sends its status line and headers one byte a second (for up to 60 s); records
           in `closed` when the client hung up on it
/hold      answers after 2 s (a slow but honest grader, for the pool-sharing test)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        self.server.calls.append((self.path, payload))
        if self.path == "/reward":
            reward = 0.0 if "7" in payload.get("answer", "") else -1.0
            self._send(200, json.dumps({"reward": reward}).encode())
        elif self.path == "/garbage":
            self._send(200, b"<html>not json</html>")
        elif self.path == "/nan":
            self._send(200, b'{"reward": NaN}')
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, b'{"reward": 0}')
        elif self.path == "/huge":
            self._send(200, b'{"reward": -1e300}')
        elif self.path == "/hold":
            time.sleep(2)
            self._send(200, b'{"reward": 0}')
        elif self.path == "/trickle":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: x" * 60
            try:
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:  # the client hung up: what a bounded exchange must do
                self.server.closed.append((self.path, time.monotonic()))
                self.close_connection = True
        elif self.path == "/redirect":
            self._send(302, b"", {"Location": "/reward"})
        else:
            self._send(500, b"boom")


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many webhooks connect at once in the load tests


class Grader:
    def __enter__(self) -> Grader:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.calls = []
        self.httpd.closed = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def calls(self) -> list:
        return self.httpd.calls

    @property
    def closed(self) -> list:
        return self.httpd.closed

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
