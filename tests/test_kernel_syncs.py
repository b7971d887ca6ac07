"""Syncs handed to the kernel as asynchronous requests, with no thread
(storage_backends/kernel_syncs.py), and the threads where the kernel does not take them.

These run on Linux with x86_64 or aarch64, where the kernel takes the requests; CI's
machines are such."""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_backends import kernel_syncs
from storage_backends.base import StorageUnavailable
from storage_backends.blocking import CALLS, BlockingCalls
from storage_backends.kernel_syncs import IN_FLIGHT, Syncs


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """The functions run on the threads of storage_backends/blocking.py (they still run)."""
    ran: list[Callable[..., Any]] = []
    submit = CALLS.submit

    def counting(function: Callable[..., Any], *args: Any) -> Any:
        ran.append(function)
        return submit(function, *args)

    monkeypatch.setattr(kernel_syncs.CALLS, "submit", counting)
    return ran


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Callable[[], int]]:
    """Makes files of a few bytes not synced yet; their descriptors, closed at the end."""
    fds: list[int] = []

    def make() -> int:
        fd = os.open(tmp_path / str(len(fds)), os.O_WRONLY | os.O_CREAT, 0o640)
        fds.append(fd)
        os.pwrite(fd, b"unsynced bytes", 0)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


async def test_a_sync_is_handed_to_the_kernel_and_runs_on_no_thread(
    tmp_path: Path, written: Callable[[], int], thread_calls: list[Callable[..., Any]]
) -> None:
    syncs = Syncs()
    await syncs.fdatasync(written())
    await asyncio.gather(*(syncs.fdatasync(written()) for _ in range(10)))
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        await syncs.fsync(directory)
    finally:
        os.close(directory)
    assert syncs.in_kernel
    assert thread_calls == []


def _errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as raised:
        call()
    return raised.value.errno


@pytest.mark.parametrize("kind", ["pipe", "closed"])
async def test_a_sync_raises_what_fdatasync_raises(kind: str, written: Callable[[], int]) -> None:
    syncs = Syncs()
    await syncs.fdatasync(written())
    if kind == "pipe":  # a file that cannot be synced: EINVAL
        fd, other = os.pipe()
        os.close(other)
    else:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
    try:
        expected = _errno_of(lambda: os.fdatasync(fd))
        with pytest.raises(OSError) as raised:
            await syncs.fdatasync(fd)
        assert raised.value.errno == expected
        assert expected in (errno.EINVAL, errno.EBADF)
    finally:
        if kind == "pipe":
            os.close(fd)
    # A file that cannot be synced says nothing of the kernel: it still takes the syncs.
    assert syncs.in_kernel
    await syncs.fdatasync(written())


async def test_syncs_past_the_kernels_slots_go_to_threads(
    written: Callable[[], int], thread_calls: list[Callable[..., Any]]
) -> None:
    syncs = Syncs()
    fds = [written() for _ in range(IN_FLIGHT + 20)]
    await asyncio.wait_for(asyncio.gather(*(syncs.fdatasync(fd) for fd in fds)), 60)
    assert syncs.in_kernel
    # All were handed over in one turn of the event loop, before any completion was reaped.
    assert thread_calls == [os.fdatasync] * 20
    await syncs.fdatasync(fds[0])
    assert len(thread_calls) == 20  # the slots are free again


async def test_a_processor_of_unknown_system_calls_syncs_on_threads(
    written: Callable[[], int], thread_calls: list[Callable[..., Any]]
) -> None:
    syncs = Syncs(machine="unknown")
    await syncs.fdatasync(written())
    assert not syncs.in_kernel
    assert thread_calls == [os.fdatasync]


def _sync_in_child(path: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    fd = os.open(path, os.O_WRONLY)
    try:
        asyncio.run(kernel_syncs.SYNCS.fdatasync(fd))
        results.put(kernel_syncs.SYNCS.in_kernel)
    finally:
        os.close(fd)


async def test_a_forked_process_hands_its_syncs_to_a_context_of_its_own(
    tmp_path: Path, written: Callable[[], int]
) -> None:
    """The kernel keeps a context of asynchronous I/O per address space, which a fork does
    not copy (--workers forks the supervisor); nor may a child reap its parent's syncs."""
    await kernel_syncs.SYNCS.fdatasync(written())  # this process has its context
    path = tmp_path / "child"
    path.write_bytes(b"child's bytes")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_sync_in_child, args=(str(path), results))
    child.start()
    try:
        await asyncio.to_thread(child.join, 20)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    assert results.get(timeout=5) is True
    await kernel_syncs.SYNCS.fdatasync(written())
    assert kernel_syncs.SYNCS.in_kernel


def test_syncs_follow_the_event_loop_that_asks(tmp_path: Path) -> None:
    """One event loop after another (as the tests run): completions are reaped on the one
    that asked last."""
    syncs = Syncs()
    fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        for _ in range(3):
            os.pwrite(fd, b"more", 0)
            asyncio.run(asyncio.wait_for(syncs.fdatasync(fd), 20))
        assert syncs.in_kernel
    finally:
        os.close(fd)


async def _give_up_on(sync: Awaitable[None]) -> float:
    """Await ``sync``, which must fail as storage that does not answer; how long it took."""
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="took longer than 0.2 s"):
        await asyncio.wait_for(sync, 5)
    return time.monotonic() - started


async def test_a_sync_the_kernel_never_completes_is_given_up_on_in_time(
    monkeypatch: pytest.MonkeyPatch, written: Callable[[], int]
) -> None:
    """A disk or file server that does not answer: its caller is told so (503, try again
    later) after SYNC_SECONDS and up to a tenth of that more, and goes on (letting go of
    the upload); the request stays the kernel's, its slot taken until it completes. Other
    syncs meanwhile are not held up."""
    monkeypatch.setattr(kernel_syncs, "SYNC_SECONDS", 0.2)
    syncs = Syncs()
    await syncs.fdatasync(written())  # the kernel's context is made
    assert syncs.in_kernel
    taken: list[Any] = []

    def never_completes(self: Any, fd: int, opcode: int, done: Any) -> int:
        taken.append(done)
        return 0  # taken, as io_submit would

    hung = asyncio.ensure_future(_give_up_on(_one_hung_sync(syncs, written, never_completes,
                                                            monkeypatch)))
    for _ in range(10):  # a few turns of the loop: it is handed to the kernel
        if taken:
            break
        await asyncio.sleep(0)
    assert len(taken) == 1
    await syncs.fdatasync(written())  # another file's sync goes on meanwhile
    assert not hung.done()
    took = await hung
    assert 0.2 <= took < 0.2 + 0.02 + 1.0, took
    assert len(taken) == 1


async def _one_hung_sync(
    syncs: Syncs, written: Callable[[], int], never_completes: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = kernel_syncs._Kernel.submit
    calls = iter((never_completes, real))

    def submit(self: Any, fd: int, opcode: int, done: Any) -> int:
        return next(calls, real)(self, fd, opcode, done)

    monkeypatch.setattr(kernel_syncs._Kernel, "submit", submit)
    await syncs.fdatasync(written())


async def test_a_sync_on_a_thread_that_never_returns_is_given_up_on_in_time(
    monkeypatch: pytest.MonkeyPatch, written: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    """The same where the threads sync; when the call returns at last, nobody waits for it
    and nothing is said (a future settled twice would be an error on the event loop)."""
    monkeypatch.setattr(kernel_syncs, "SYNC_SECONDS", 0.2)
    # One thread: the sync after it runs there once the held one has returned, and is
    # answered after that one's late answer was handed to the event loop.
    monkeypatch.setattr(kernel_syncs, "CALLS", BlockingCalls(threads=1))
    syncs = Syncs(machine="a processor of unknown system calls")
    release = threading.Event()
    real = os.fdatasync

    def held(fd: int) -> None:
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", held)
    took = await _give_up_on(syncs.fdatasync(written()))
    assert 0.2 <= took < 0.2 + 0.02 + 1.0, took
    release.set()
    monkeypatch.setattr(os, "fdatasync", real)
    await syncs.fdatasync(written())  # the thread goes on
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
