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


@dataclasses.dataclass
class ServerProcess:
    """A real ``aiotusd`` process on loopback, restartable on the same port and data."""

    data_dir: Path
    port: int
    extra_args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self, timeout: float = 20) -> None:
        with open(self.log_path, "ab") as log:  # the child has its own copy once started
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
            )
        wait_listening(self.process, self.port, "aiotusd", self.log_path.read_text, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text()


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
