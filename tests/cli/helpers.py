"""Helpers of the CLI tests: run ``stagecast`` as a real subprocess, in a pipe or a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = str(Path(sys.executable).with_name("stagecast"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without STAGECAST_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``stagecast ARGS`` with stdout and stderr captured (so not a terminal)."""
    return subprocess.run(
        [BIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        check=False,
    )


def run_in_terminal(
    *args: str, timeout: float = 60, interrupt_after: str | None = None
) -> tuple[int, str]:
    """Run ``stagecast ARGS`` on a pseudo-terminal; returns the exit code and the screen
    output with escape sequences removed. ``interrupt_after``: send SIGINT (Ctrl-C) once
    this text has appeared."""
    primary, secondary = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="100", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [BIN, *args], stdin=secondary, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
            if interrupt_after is not None:
                shown = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))
                if interrupt_after in shown:
                    proc.send_signal(signal.SIGINT)
                    interrupt_after = None
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r", "")
    return code, ANSI.sub("", text)


def read_until(fd: int, needle: bytes, timeout: float = 30) -> bytes:
    """Read a pipe until ``needle`` shows up (or fail)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} never arrived; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 65536)
            assert data, f"pipe closed before {needle!r}; got {seen!r}"
            seen += data
    return seen
