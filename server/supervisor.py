"""``--workers N``: N processes that serve one port, and the process that keeps them.

The process started as ``aiotusd`` binds the ports (:mod:`server.listeners`) and, with
SQLite, owns the database (:func:`server.database.own_database`); then it forks the
workers, which inherit both: the sockets, on which the kernel hands each new connection
to one of them, and the database's lock, which stays held while any of them lives. It
serves nothing itself. It:

- starts worker 0 alone, then the others: a start that cannot succeed (storage or a
  database that cannot be used) is told once, in one line, by worker 0, which also runs
  the migrations alone; and announces the server once every worker serves;
- starts again a worker that dies, after a delay that doubles with each death in the
  last :data:`RESTART_WINDOW` seconds, and stops the server (exit status 1) once more
  than :data:`RESTARTS` have died in that time: a server that cannot stay up says so;
- on SIGTERM or SIGINT sends each worker SIGTERM and waits for them to finish their
  requests, as one process does; one that has not ended in time is killed.

A worker stops by itself when the supervisor is gone, killed even (its lifeline, a pipe
only the supervisor writes to, ends): no worker serves unsupervised, and the database's
lock goes with the last of them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import selectors
import shutil
import signal
import ssl
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from .config import Settings
from .listeners import Listeners
from .logs import name_worker
from .metrics import count_across_processes
from .serving import announce, exit_status, serve
from .workers import Worker, share_of

log = logging.getLogger("aiotusd")

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
"""What the supervisor handles: the two that stop the server, and the end of a worker."""

RESTART_DELAY = 0.5
"""Seconds before a worker that died is started again, doubled for each further death."""
MAX_RESTART_DELAY = 30.0
RESTARTS = 5
"""Most deaths of workers within :data:`RESTART_WINDOW` that are met with a restart."""
RESTART_WINDOW = 60.0
MAX_WAIT = 3600.0
"""Longest single wait of the loop (which waits again): the OS takes no longer timeout, and
``shutdown_timeout`` may be a century."""
STOP_MARGIN = 5.0
"""Seconds a stopping worker gets beyond ``shutdown_timeout`` and ``hooks_timeout`` (the
requests' and the deliveries' time) to close its database and storage."""


@dataclass
class _Process:
    index: int
    pid: int
    ready: int | None
    """The supervisor's end of the pipe the worker says it serves on, until it has."""
    serving: bool = False


def _ended(status: int) -> str:
    """How a process ended, from its wait status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    return f"was killed by {signal.Signals(-code).name}"


class Supervisor:
    """The process of ``--workers``: see the module's docstring."""

    def __init__(
        self, settings: Settings, listeners: Listeners, tls: ssl.SSLContext | None
    ) -> None:
        self._settings = settings
        self._listeners = listeners
        self._tls = tls
        self._count = settings.server.workers
        self._processes: dict[int, _Process] = {}
        """The workers alive, by pid."""
        self._due: dict[int, float] = {}
        """Workers to start again, by index: when (monotonic)."""
        self._deaths: collections.deque[float] = collections.deque()
        self._stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._metrics_dir = ""

    def run(self) -> int:
        """Start the workers, keep them until told to stop; the exit status."""
        for end in (self._wake_r, self._wake_w):
            os.set_blocking(end, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._metrics_dir = tempfile.mkdtemp(prefix="aiotusd-metrics-")
        handlers = {signum: signal.signal(signum, self._on_signal) for signum in _SIGNALS}
        wakeup = signal.set_wakeup_fd(self._wake_w)
        started = False
        try:
            status = self._start()
            if status is None:
                started = True
                announce(self._settings, self._listeners, self._tls is not None)
                status = self._supervise()
                log.info("shutting down")
            return status
        finally:
            self._stop_all()
            signal.set_wakeup_fd(wakeup)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self._selector.close()
            for end in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
                os.close(end)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            if started:
                log.info("stopped")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM and SIGINT stop the server; SIGCHLD only wakes the loop (the wakeup fd)."""
        if signum != signal.SIGCHLD:
            self._stopping = True

    def _start(self) -> int | None:
        """Start worker 0, then the others; None once every one serves, else the exit status
        (0 when told to stop meanwhile)."""
        for indices in ((0,), range(1, self._count)):
            for index in indices:
                self._spawn(index)
            while not all(process.serving for process in self._processes.values()):
                if self._stopping:
                    return 0
                self._wait(None)
                for _, status in self._reap():
                    # It told why in its one line; its status is the server's.
                    return max(os.waitstatus_to_exitcode(status), 1)
        return None

    def _supervise(self) -> int:
        """Keep the workers until told to stop (0), or until they die too often (1)."""
        while not self._stopping:
            now = time.monotonic()
            self._wait(max(min(self._due.values()) - now, 0.0) if self._due else None)
            for process, status in self._reap():
                if not self._restart_later(process, status):
                    return 1
            now = time.monotonic()
            for index, when in list(self._due.items()):
                if when <= now and not self._stopping:
                    del self._due[index]
                    self._spawn(index)
        return 0

    def _restart_later(self, process: _Process, status: int) -> bool:
        """Plan the start of a worker that died; False when too many died of late."""
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] < now - RESTART_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) > RESTARTS:
            log.error("worker %d (pid %d) %s: %d workers died within %g s; stopping",
                      process.index, process.pid, _ended(status), len(self._deaths),
                      RESTART_WINDOW)
            return False
        delay = min(RESTART_DELAY * 2 ** (len(self._deaths) - 1), MAX_RESTART_DELAY)
        log.warning("worker %d (pid %d) %s; starting it again in %g s",
                    process.index, process.pid, _ended(status), delay)
        self._due[process.index] = now + delay
        return True

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to those not ended within their time to stop."""
        self._stopping = True
        for pid in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        settings = self._settings
        deadline = (time.monotonic() + settings.server.shutdown_timeout
                    + settings.hooks.timeout + STOP_MARGIN)
        while self._processes and (left := deadline - time.monotonic()) > 0:
            self._wait(left)
            self._reap()
        if self._processes:
            log.warning("workers %s did not stop in time: killed",
                        ", ".join(str(process.index) for process in self._processes.values()))
        for pid in list(self._processes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self._forget(self._processes[pid])

    def _wait(self, timeout: float | None) -> None:
        """Wait for a signal or a worker that says it serves, at most ``timeout`` seconds."""
        for key, _ in self._selector.select(None if timeout is None else min(timeout, MAX_WAIT)):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                # Nothing to read: it died before serving, and _reap() finds it once
                # SIGCHLD comes.
                key.data.serving = bool(os.read(key.fd, 1))
                self._forget_ready(key.data)

    def _reap(self) -> list[tuple[_Process, int]]:
        """The workers that ended since the last call, with their wait statuses."""
        ended = []
        while self._processes:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            process = self._processes.get(pid)
            if process is not None:
                self._forget(process)
                ended.append((process, status))
        return ended

    def _forget(self, process: _Process) -> None:
        self._forget_ready(process)
        del self._processes[process.pid]

    def _forget_ready(self, process: _Process) -> None:
        if process.ready is not None:
            self._selector.unregister(process.ready)
            os.close(process.ready)
            process.ready = None

    def _spawn(self, index: int) -> None:
        ready_r, ready_w = os.pipe()
        # Blocked across the fork: a SIGTERM sent to the new worker before it has given
        # up the supervisor's handlers is held until it has, not taken by them and lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                self._be_worker(index, ready_w)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        os.close(ready_w)
        process = _Process(index, pid, ready_r)
        self._processes[pid] = process
        self._selector.register(ready_r, selectors.EVENT_READ, process)

    def _be_worker(self, index: int, ready: int) -> NoReturn:
        """The life of a forked worker, which ends the process: it never returns into the
        supervisor's code."""
        status = 1
        supervisor = os.getppid()
        try:
            signal.set_wakeup_fd(-1)
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            self._selector.close()
            for end in (self._wake_r, self._wake_w, self._lifeline_w):
                os.close(end)
            for process in self._processes.values():  # the others' pipes are not its own
                if process.ready is not None:
                    os.close(process.ready)
            name_worker(index)
            count_across_processes(self._metrics_dir)
            worker = Worker(index, self._count, self._metrics_dir, ready, self._lifeline_r)
            settings = share_of(self._settings, self._count)
            try:
                status = exit_status(
                    lambda: asyncio.run(serve(settings, self._listeners, self._tls, worker))
                )
            except Exception:
                # A failure exit_status does not know: a bug. os._exit below would end
                # the process before Python printed it, as it does for one process.
                log.exception("stopped by an unexpected error")
            if os.getppid() != supervisor:
                # The supervisor died without removing the metrics' files: its workers do.
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(status)
