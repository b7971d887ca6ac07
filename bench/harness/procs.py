"""Server processes: start, wait until they answer HTTP, watch memory and CPU, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import aiohttp

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings that would change a server (AIOTUSD_*, AWS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOTUSD_", "AWS_"))}
    return {**env, **extra}


def _log_tail(log: Path, lines: int = 8) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerFailed(RuntimeError):
    """A server process did not start, or died."""


async def _wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    """Poll until ``url`` answers any HTTP status; bounded by READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise ServerFailed(f"exited with {process.returncode}: {_log_tail(log)}")
            try:
                async with session.options(url, headers={"Tus-Resumable": "1.0.0"}):
                    return
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.05)
    raise ServerFailed(f"no answer at {url} within {READY_TIMEOUT:.0f} s: {_log_tail(log)}")


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)


@asynccontextmanager
async def running(command: Command, ready_url: str, log: Path) -> AsyncIterator[int]:
    """Start ``command`` (output to ``log``), wait until it answers, yield its pid, stop it."""
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *command.argv, env=command.env, cwd=command.cwd,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )
    finally:
        os.close(output)
    try:
        await _wait_ready(ready_url, process, log)
        yield process.pid
        if process.returncode is not None:
            raise ServerFailed(f"died during the run: {_log_tail(log)}")
    finally:
        await _stop(process)


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found += [int(child) for child in children.split()]
    return found


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants, at most 1,000."""
    pids, queue = [], [pid]
    while queue and len(pids) < 1000:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def _peak_and_cpu(pid: int) -> tuple[int, int] | None:
    """(VmHWM in bytes, CPU time in nanoseconds) of one process, None once it is gone.

    The CPU time is the sum of its threads' run times (``/proc/PID/task/*/schedstat``, in
    nanoseconds): ``utime`` and ``stime`` count clock ticks of 10 ms, a sixth of what 200
    small uploads cost the bare sink. A thread that ended takes its time with it; the
    servers' threads live as long as they do."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    hwm = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmHWM:")), 0)
    nanoseconds = 0
    for task in tasks:
        with contextlib.suppress(OSError, IndexError, ValueError):
            nanoseconds += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return hwm, nanoseconds


def tree_cpu_ns(pid: int) -> int:
    """CPU time so far of ``pid`` and every descendant it has now, all their threads, in
    nanoseconds (see :func:`_peak_and_cpu`)."""
    return sum(found[1] for process in tree_pids(pid) if (found := _peak_and_cpu(process)))


@dataclass
class TreeMonitor:
    """Peak resident set and CPU time of a process and every descendant it has while watched.

    A thread samples the tree every ``interval`` seconds. The peak is the sum of each
    process's VmHWM (the kernel's own high-water mark), so a child that lived only
    between two samples is missed, and peaks of different processes are added even when
    they did not coincide: an upper bound for multi-process servers, exact for one process.
    """

    pid: int
    interval: float = 0.05
    _peaks: dict[int, int] = field(default_factory=dict)
    _cpu_first: dict[int, int] = field(default_factory=dict)
    _cpu_last: dict[int, int] = field(default_factory=dict)
    _halt: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def _loop(self) -> None:
        while not self._halt.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        readings = {pid: _peak_and_cpu(pid) for pid in tree_pids(self.pid)}
        with self._lock:
            for pid, reading in readings.items():
                if reading is None:
                    continue
                hwm, nanoseconds = reading
                self._peaks[pid] = max(self._peaks.get(pid, 0), hwm)
                self._cpu_first.setdefault(pid, nanoseconds)
                self._cpu_last[pid] = nanoseconds

    def cpu_now(self) -> float:
        """CPU seconds the tree spent since watching began, read now."""
        self._sample()
        return self.cpu_seconds

    @property
    def peak_bytes(self) -> int:
        with self._lock:
            return sum(self._peaks.values())

    @property
    def cpu_seconds(self) -> float:
        with self._lock:
            nanoseconds = sum(self._cpu_last[pid] - self._cpu_first[pid] for pid in self._cpu_last)
        return nanoseconds / 1e9
