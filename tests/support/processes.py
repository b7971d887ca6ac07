"""Real processes on loopback: free ports, ``aiotusd`` servers, and its command line."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]
"""The repository: what ``python -m server`` must import."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    process: subprocess.Popen[bytes], port: int, name: str, log: Callable[[], str],
    timeout: float = 20,
) -> None:
    """Wait until ``process`` accepts connections on loopback ``port``; fail with its ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not start listening:\n{log()}")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM ``process`` if it still runs, and wait; SIGKILL it after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


START_LINE = "aiotusd listening on "
"""What the line begins with that a server logs once every one of its processes serves."""
WHOLE_SERVER_SIGNALS = (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT)
"""Signals that reach every process of a server with workers, as a crash or a paused host
would: the others go to its supervisor, which handles them for its workers."""


@dataclasses.dataclass
class ServerProcess:
    """A real ``aiotusd`` process on loopback, restartable on the same port and data.

    With ``workers`` above 1 it is started with ``--workers`` (unless its arguments choose
    their own count), in a process group of its own: :meth:`send_signal` then kills, pauses or
    resumes the supervisor and its workers at once, as a crash or a stalled host does."""

    data_dir: Path
    port: int
    extra_args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    @property
    def grouped(self) -> bool:
        """Whether the server runs in a process group of its own (it has workers)."""
        return self.workers > 1 and "--workers" not in self.extra_args

    def start(self, timeout: float = 20) -> None:
        workers = ["--workers", str(self.workers)] if self.grouped else []
        started = self.log().count(START_LINE) if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child has its own copy once started
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *workers, *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=self.grouped,
                env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
            )
        wait_listening(self.process, self.port, "aiotusd", self.log_path.read_text, timeout)
        if self.grouped and self.logs_info:
            # Its supervisor listens before its workers serve: wait for all of them. (Else
            # connections wait in its socket's queue until the first worker takes them.)
            wait_serving(self, started, timeout)

    @property
    def logs_info(self) -> bool:
        """Whether the server logs its info lines (the start line among them)."""
        args = self.extra_args
        level = args[args.index("--log-level") + 1] if "--log-level" in args else "info"
        return level.lower() in ("info", "debug")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the server: to its every process for :data:`WHOLE_SERVER_SIGNALS`
        when it has workers."""
        assert self.process is not None
        if self.grouped and sig in WHOLE_SERVER_SIGNALS:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.process is not None
        workers = children(self.process.pid) if self.grouped else []
        if self.process.poll() is None:
            self.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        # Its workers hold the SQLite lock and the port until they are gone.
        deadline = time.monotonic() + timeout
        while not all(ended(pid) for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their server"
            time.sleep(0.02)
        self.process = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text()


def wait_serving(server: ServerProcess, started: int, timeout: float) -> None:
    """Wait until the log of ``server`` has more start lines than ``started``."""
    deadline = time.monotonic() + timeout
    assert server.process is not None
    while server.log().count(START_LINE) <= started:
        if server.process.poll() is not None:
            raise RuntimeError(f"aiotusd exited early:\n{server.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"aiotusd's workers did not all serve:\n{server.log()}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The pids of the children of process ``pid`` (a server's workers)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in listed.split()]


def ended(pid: int) -> bool:
    """Whether process ``pid`` is gone, or a zombie (which holds no lock and no port)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of this process without ``AIOTUSD_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``aiotusd *args`` in ``cwd`` to its end (at most 30 s), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        check=False, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=30,
    )


def refused_start(cwd: Path, *args: str, deadline: float = 10.0) -> str:
    """Run ``aiotusd *args`` (on a free port unless ``--port`` is among them), which must
    exit 1 within ``deadline`` seconds, Python's start-up included, with one stderr line
    and no traceback; returns that line."""
    port = () if "--port" in args else ("--port", str(free_port()))
    result = subprocess.run(
        [sys.executable, "-m", "server", *port, *args],
        check=False, cwd=cwd, env=clean_env(), capture_output=True, text=True,
        timeout=deadline,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class Served:
    """``python -m server ARGS`` (``--port PORT`` among them) in ``tmp_path``, its output
    in ``tmp_path/server.log``: listening inside the block, stopped with SIGTERM at its end,
    which it must survive with status 0 and no traceback."""

    def __init__(self, tmp_path: Path, port: int, *args: str, **env: str) -> None:
        self.port, self.log = port, tmp_path / "server.log"
        with open(self.log, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", *args], cwd=tmp_path, env=clean_env(**env),
                stdout=log_file, stderr=subprocess.STDOUT,
            )

    def __enter__(self) -> Self:
        try:
            wait_listening(self.process, self.port, "aiotusd", self.log.read_text)
        except BaseException:
            self.process.kill()
            self.process.wait(timeout=20)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text()
