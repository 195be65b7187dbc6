"""Real servers for tests and benchmarks: an app under uvicorn in a background thread
(`LiveServer`), or `latentserve serve` (or another OpenAI server, such as `vllm serve`)
as a child process (`ServerProcess`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn


class LiveServer:
    """`app` under uvicorn on a free loopback port. With `config` (a ServerConfig), uvicorn
    runs as `latentserve serve` runs it (server/transport.py: header timeout); without,
    a stock uvicorn."""

    def __init__(self, app, config=None):
        if config is not None:
            from server.transport import uvicorn_config

            settings = uvicorn_config(
                app, config, host="127.0.0.1", port=0, log_level="warning", log_config=None
            )
        else:
            settings = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(settings)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def metric(url: str, name: str) -> float:
    """The sum of a running server's /metrics samples whose line starts with `name`
    (a metric name, optionally with the start of its labels)."""
    text = httpx.get(url + "/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`latentserve serve ARGS --port P` as a child process, ready (/health 200) on enter.

    `command` replaces `latentserve serve` (e.g. `vllm serve MODEL`); ARGS and `--port P`
    follow it. `proc` is the Popen, `url` its root. On exit a still-running server gets
    SIGTERM (so it can stop its own children, as vLLM's engine process), then SIGKILL.
    """

    def __init__(
        self,
        args: list[str],
        stdout=subprocess.DEVNULL,
        start_timeout: float = 300,
        command: list[str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = command or [sys.executable, "-m", "server.cli", "serve"]
        self.args = [*command, *args, "--port", str(self.port)]
        self.stdout = stdout
        self.start_timeout = start_timeout

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            self.args, stdout=self.stdout, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"server did not start: {' '.join(self.args)}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
