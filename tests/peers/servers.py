"""Run an ASGI app under a real uvicorn server on a port the OS picks, in a thread."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from stagecast.api.push import PushingHttpToolsProtocol


class ServerThread:
    """A uvicorn server for ``app`` on 127.0.0.1, port 0, in a background thread."""

    def __init__(
        self, app: Any, *, lifespan: str = "on", http: Any = None, loop: str = "auto"
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan=lifespan,
            timeout_graceful_shutdown=3,
            # By default the HTTP protocol `stagecast serve` runs, which pushes streamed bodies.
            http=http or PushingHttpToolsProtocol,
            loop=loop,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died while starting")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 30s")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def serve(
    app: Any, *, lifespan: str = "on", http: Any = None, loop: str = "auto"
) -> Iterator[ServerThread]:
    """Serve ``app`` for the duration of the block (``http``: another uvicorn protocol;
    ``loop``: uvicorn's choice of event loop, ``auto`` being uvloop where installed)."""
    server = ServerThread(app, lifespan=lifespan, http=http, loop=loop)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    """A port nothing listens on right now (for servers that cannot take a socket)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port_url() -> str:
    """A base URL on which connections are refused."""
    return f"http://127.0.0.1:{free_port()}/v1"


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


BIN = str(Path(sys.executable).with_name("stagecast"))


@contextmanager
def gateway_process(
    config: Path, *, capture: bool = True
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`stagecast serve --config` as a subprocess on a free port, once /healthz answers.

    With ``capture`` its output is a pipe the test must read; otherwise it is discarded.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    proc = subprocess.Popen(
        [BIN, "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, timeout=30, interval=0.1), "stagecast serve did not start"
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
