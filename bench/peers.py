"""The processes of the benchmark: start, pin, measure and always stop them.

The mock upstream, stagecast and LiteLLM's proxy each run as their own process (one event loop
each), started in a new session so that the whole process group can be stopped, and pinned
with ``taskset`` when the machine allows: gateways on one core, the mock and the load client on
another. CPU time and memory come from ``/proc`` and include child processes.

``python -m bench.peers stagecast --port P --upstream URL`` is the stagecast launcher: it
builds ``Settings`` in code and calls ``stagecast.server.run_server``, which is exactly what
``stagecast serve`` does (uvicorn with uvloop and httptools). On SIGUSR1 it collects garbage and
writes ``tracked_objects N`` to its log (stderr): the objects the garbage collector tracks,
for ``bench.objects``; nothing else of the benchmark sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.load_client import http_json
from bench.mock_upstream import raise_nofile_limit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PEERS_VENV = BENCH_DIR / ".peers-venv"
LITELLM_CONFIG = BENCH_DIR / "litellm_config.yaml"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# A dead local proxy: if a peer ever tried to reach the internet, the attempt would end here
# at once instead of leaving the machine (LiteLLM's model cost map is the known case).
NO_EGRESS_ENV = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def pinning() -> tuple[bool, str]:
    """Whether processes can be pinned to separate cores, and why not if they cannot."""
    if shutil.which("taskset") is None:
        return False, "taskset is not installed: processes are not pinned"
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False, f"only {len(cores)} core available: processes are not pinned"
    return True, f"gateway pinned to core {cores[1]}; mock and load client to core {cores[0]}"


def cores() -> tuple[int, int]:
    """(core for the mock and the client, core for the gateway under test)."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[-1]


def pin_client() -> tuple[bool, str, int, int]:
    """Pin this process (the load client) to its core where the machine allows (see
    ``pinning``); returns (pinned, why or why not, client core, gateway core)."""
    pin, note = pinning()
    client_core, gateway_core = cores()
    if pin:
        os.sched_setaffinity(0, {client_core})
    return pin, note, client_core, gateway_core


def free_port() -> int:
    """A free loopback port (the peer binds it a moment later; a collision is very unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes (all their threads), from /proc/<pid>/stat."""
    return sum(user_system_seconds(pids))


def user_system_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU time of these processes (all their threads), from /proc/<pid>/stat."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / CLK_TCK, system / CLK_TCK


def run_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of every live thread of these processes (/proc/<pid>/task/*/schedstat).

    Precise, unlike the 10 ms ticks of /proc/<pid>/stat, but blind to threads that exited:
    good for telling whether a process is quiet, not for accounting.
    """
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes, from ``VmRSS`` in /proc/<pid>/status."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class Proc:
    """One started process (group): its port, its log, and its resource use."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.port = 0
        self._tree: list[int] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The process and its children, looked up once the peer is ready (it is then stable)."""
        if self._tree is None:
            self._tree = process_tree(self.pid)
        return self._tree

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def rss_bytes(self) -> int:
        return rss_bytes(self.pids())

    def run_ns(self) -> int:
        return run_ns(self.pids())

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def freeze(self) -> None:
        """Stop the process group (SIGSTOP): it uses no CPU until ``thaw``."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen process group run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, then SIGKILL if it is still there after ``timeout``."""
        if self.popen.poll() is not None:
            return
        self.thaw()  # a frozen process would not act on SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)


class Processes:
    """Starts the peers and stops every one of them on exit, whatever happened."""

    def __init__(self, *, pin: bool) -> None:
        self.pin = pin
        self.procs: list[Proc] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="stagecast-bench-"))

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every process started here, newest first."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()

    def stop(self, proc: Proc) -> None:
        """Stop one process now."""
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        *,
        core: int | None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        if self.pin and core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        log_path = self.log_dir / f"{name}-{len(self.procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it; closed with the Popen
        base = {k: v for k, v in os.environ.items() if not k.startswith("STAGECAST_")}
        popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**base, **NO_EGRESS_ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    async def start_mock(self, core: int | None) -> Proc:
        """The mock upstream; its port comes from its ``READY <port>`` line."""
        proc = self._spawn(
            "mock", [sys.executable, "-m", "bench.mock_upstream"], core=core, stdout_pipe=True
        )
        proc.port = _ready_port(proc)
        return proc

    async def start_floor(
        self,
        upstream_port: int,
        core: int | None,
        *,
        wrapper: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> Proc:
        """The bare TCP splice relay to the mock (see ``bench.floor_relay``); ``wrapper`` is
        a command it runs under (valgrind, say), and ``timeout`` how long it may take to start."""
        cmd = [*wrapper, sys.executable, "-m", "bench.floor_relay"]
        cmd += ["--upstream-port", str(upstream_port)]
        proc = self._spawn("floor", cmd, core=core, stdout_pipe=True)
        proc.port = await asyncio.to_thread(_ready_port, proc, timeout)
        return proc

    async def start_stagecast(
        self,
        upstream: str,
        core: int | None,
        *,
        wrapper: Sequence[str] = (),
        timeout: float = 60.0,
        args: Sequence[str] = (),
    ) -> Proc:
        """stagecast as ``stagecast serve`` runs it, with one role pointing at the mock
        (``wrapper`` and ``timeout`` as for ``start_floor``; ``args``: more launcher options,
        such as ``--inside``)."""
        port = free_port()
        cmd = [*wrapper, sys.executable, "-m", "bench.peers", "stagecast", "--port", str(port)]
        cmd += args
        # Records are written as in production, to a scratch file beside the run's logs.
        records = self.log_dir / f"records-{len(self.procs)}.db"
        cmd += ["--upstream", upstream, "--database-path", str(records)]
        proc = self._spawn("stagecast", cmd, core=core)
        proc.port = port
        await _wait_ready(proc, "/healthz", timeout=timeout)
        return proc

    async def start_litellm(self, upstream: str, core: int | None) -> tuple[Proc, str] | str:
        """LiteLLM's proxy pointed at the mock; returns (process, key) or why it was skipped."""
        exe = PEERS_VENV / "bin" / "litellm"
        if not exe.exists():
            return f"LiteLLM not installed ({exe} missing; run `make bench-peers`)"
        port = free_port()
        key = "sk-bench-" + secrets.token_hex(16)
        env = {
            "BENCH_MOCK_BASE_URL": upstream,
            # A master key as a real deployment has (the proxy refuses to start without one);
            # with no database, checking it is a comparison, not a lookup.
            "LITELLM_MASTER_KEY": key,
            # Use the bundled model cost map: never fetch it from the internet at startup.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            # LiteLLM caps its upstream pool at 1,000 connections, 500 per host, by default
            # (and 0 falls back to aiohttp's 100); stagecast runs with max_concurrency 10,000.
            "AIOHTTP_CONNECTOR_LIMIT": "10000",
            "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "10000",
        }
        cmd = [
            str(exe),
            "--config",
            str(LITELLM_CONFIG),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        proc = self._spawn("litellm", cmd, core=core, env=env)
        proc.port = port
        try:
            await _wait_ready(proc, "/health/liveliness", timeout=120)
        except RuntimeError as exc:
            self.stop(proc)
            return f"LiteLLM did not start: {exc}"
        return proc, key


def _ready_port(proc: Proc, timeout: float = 20.0) -> int:
    """The port from a child's ``READY <port>`` line (within ``timeout`` seconds)."""
    stdout = proc.popen.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and proc.alive():
        ready, _, _ = select.select([stdout], [], [], 0.2)
        if ready:
            line = stdout.readline()
            break
    if not line.startswith(b"READY "):
        raise RuntimeError(f"{proc.name} did not start: {line!r}\n{proc.log_tail()}")
    return int(line.split()[1])


async def _wait_ready(proc: Proc, path: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            status, _ = await http_json(HOST, proc.port, "GET", path, timeout=5)
            if status == 200:
                return
            last = f"HTTP {status}"
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout:g}s ({last}):\n{proc.log_tail()}")


def report_tracked_objects(signum: int, frame: object) -> None:
    """SIGUSR1: the live objects the garbage collector tracks, after a collection, on stderr."""
    gc.collect()
    print(f"tracked_objects {len(gc.get_objects())}", file=sys.stderr, flush=True)


def serve_stagecast(
    port: int, upstream: str, database_path: str, *, inside: bool = False, collector: bool = True
) -> None:
    """Run stagecast the way ``stagecast serve`` does, with the benchmark's one role (and,
    with ``inside``, the timing of ``bench.inside``)."""
    from stagecast.config import ModelConfig, Settings
    from stagecast.server import run_server

    raise_nofile_limit()
    signal.signal(signal.SIGUSR1, report_tracked_objects)
    if inside:
        from bench.inside import install

        install(collector=collector)
    settings = Settings(
        host=HOST,
        port=port,
        models={
            "bench": ModelConfig(
                kind="openai",
                base_url=upstream,
                model="mock",
                retries=0,
                max_concurrency=10_000,
                first_token_timeout=60,
                idle_timeout=60,
                total_timeout=3600,
            )
        },
        heartbeat_interval=30,
        log_level="warning",
        # Records are written as in production, but to a scratch file, not the checkout.
        database_path=database_path,
    )
    run_server(settings)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.peers stagecast --port P --upstream URL --database-path FILE``."""
    parser = argparse.ArgumentParser(description="benchmark peer launcher")
    sub = parser.add_subparsers(dest="peer", required=True)
    sc = sub.add_parser("stagecast", help="serve stagecast with one role at --upstream")
    sc.add_argument("--port", type=int, required=True)
    sc.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:P/v1")
    sc.add_argument("--database-path", required=True, help="the SQLite file for stage records")
    sc.add_argument("--inside", action="store_true", help="time chunks in the gateway (SIGUSR2)")
    sc.add_argument("--collector-off", action="store_true", help="with --inside: no gc")
    args = parser.parse_args(argv)
    if args.peer == "stagecast":
        serve_stagecast(
            args.port,
            args.upstream,
            args.database_path,
            inside=args.inside,
            collector=not args.collector_off,
        )


if __name__ == "__main__":
    main()
