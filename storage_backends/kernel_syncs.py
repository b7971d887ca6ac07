"""Syncs handed to the kernel, with no thread: Linux's asynchronous I/O.

A sync on a thread of :mod:`.blocking` costs far more than its own kernel work: the
thread wakes, and when the sync returns, the GIL goes over to it and back to the event
loop, a handful of futex calls each time (29 per small upload, measured with ``strace``).
Linux (4.18 and later) takes an ``fdatasync`` or ``fsync`` as an asynchronous request
(``IOCB_CMD_FDSYNC``, ``IOCB_CMD_FSYNC``): ``io_submit`` returns at once, a kernel worker
syncs the file, and the completion is counted on an eventfd that the event loop watches
beside its sockets. No thread of ours runs, and the error is the one the call would raise.

Where the kernel does not take them (another system or processor, a kernel older than
4.18, a sandbox that refuses the calls), and for the syncs past :data:`IN_FLIGHT`, the
threads sync as before; which is decided once per process. The calls go through
:mod:`ctypes`: the standard library has no binding for them.

A sync is waited for :data:`SYNC_SECONDS` at most: a disk or file server that takes
longer is not there for the upload now. Its caller then gets :class:`StorageUnavailable`
(503, try again later) and records nothing, and lets go of the upload; the sync itself
goes on (the kernel's request holds the file, which may be closed meanwhile).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import platform
import sys
from collections.abc import Callable

from .base import StorageUnavailable
from .blocking import CALLS, Uncancellable

log = logging.getLogger("aiotusd")

IN_FLIGHT = 128
"""Syncs one process hands to the kernel at once; more wait on the threads."""
SYNC_SECONDS = 60.0
"""How long a caller waits for a sync; it is told so up to a tenth of that later."""

# io_setup, io_destroy, io_submit and io_getevents: their numbers differ by processor.
_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4)}
_IOCB_CMD_FSYNC = 2
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
"""Count the completion on the eventfd in ``aio_resfd``."""


class _Iocb(ctypes.Structure):
    """``struct iocb`` of ``linux/aio_abi.h``, little-endian (both processors above)."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_uint32), ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    """``struct io_event``: the request's ``aio_data``, and its result (``-errno``)."""

    _fields_ = [
        ("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64), ("res2", ctypes.c_int64),
    ]


class _Kernel:
    """One process's context of asynchronous I/O: ``IN_FLIGHT`` request slots, each with
    the future of its caller, and the eventfd its completions are counted on."""

    def __init__(self, numbers: tuple[int, int, int, int]) -> None:
        """Raises :class:`OSError` when the kernel refuses the context."""
        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.syscall
        self._call.restype = ctypes.c_long
        setup, self._destroy, self._submit, self._get = (ctypes.c_long(n) for n in numbers)
        self._context = ctypes.c_ulong(0)
        if self._call(setup, ctypes.c_long(IN_FLIGHT), ctypes.byref(self._context)) < 0:
            raise OSError(ctypes.get_errno(), "io_setup")
        self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._iocbs = (_Iocb * IN_FLIGHT)()
        self._pointers = (ctypes.POINTER(_Iocb) * IN_FLIGHT)(
            *(ctypes.pointer(iocb) for iocb in self._iocbs)
        )
        for slot, iocb in enumerate(self._iocbs):
            iocb.aio_data = slot
            iocb.aio_flags, iocb.aio_resfd = _IOCB_FLAG_RESFD, self.eventfd
        self._free = list(range(IN_FLIGHT))
        self._waiting: list[Uncancellable[None] | None] = [None] * IN_FLIGHT
        self._events = (_Event * IN_FLIGHT)()
        self._no_wait = (ctypes.c_long * 2)(0, 0)
        self._one = ctypes.c_long(1)
        self._pointer_size = ctypes.sizeof(ctypes.POINTER(_Iocb))

    def submit(self, fd: int, opcode: int, done: Uncancellable[None]) -> int:
        """Hand the sync of ``fd`` to the kernel, settling ``done``; 0, or the ``errno``
        of a refusal (``EAGAIN`` when every slot is taken)."""
        if not self._free:
            return errno.EAGAIN
        slot = self._free.pop()
        iocb = self._iocbs[slot]
        iocb.aio_fildes, iocb.aio_lio_opcode = fd, opcode
        pointer = ctypes.byref(self._pointers, slot * self._pointer_size)
        if self._call(self._submit, self._context, self._one, pointer) != 1:
            self._free.append(slot)
            return ctypes.get_errno() or errno.EIO
        self._waiting[slot] = done
        return 0

    def reap(self) -> None:
        """Settle the futures of the syncs that completed (the eventfd is readable)."""
        try:
            os.eventfd_read(self.eventfd)
        except BlockingIOError:  # reaped with the completions counted before
            pass
        while True:
            count = self._call(
                self._get, self._context, ctypes.c_long(0), ctypes.c_long(IN_FLIGHT),
                self._events, self._no_wait,
            )
            if count < 0:
                error = ctypes.get_errno()
                if error == errno.EINTR:
                    continue
                # Not seen: the context and the buffers are this process's own. Said, not
                # hidden: the syncs under way wait until a later completion reaps them.
                log.warning("reaping finished syncs failed: %s", os.strerror(error))
            for event in self._events[:max(count, 0)]:
                slot = event.data
                done, self._waiting[slot] = self._waiting[slot], None
                self._free.append(slot)
                # A future of an event loop closed since (a test's) has no one waiting.
                if done is not None and not done.done() and not done.get_loop().is_closed():
                    if event.res < 0:
                        done.set_exception(OSError(-event.res, os.strerror(-event.res)))
                    else:
                        done.set_result(None)
            if count < IN_FLIGHT:
                return

    @property
    def idle(self) -> bool:
        """Whether no sync is under way."""
        return len(self._free) == IN_FLIGHT

    def close(self, *, destroy: bool) -> None:
        """Close the eventfd; ``destroy`` the context too (a forked child has none: the
        kernel keeps it per address space, and its eventfd counts the parent's syncs)."""
        if destroy:
            self._call(self._destroy, self._context)
        os.close(self.eventfd)


class Syncs:
    """``fdatasync`` and ``fsync`` for the event loop: handed to the kernel where it takes
    them, else on the threads of :mod:`.blocking`. Completions are reaped on the event
    loop that asked last: one at a time (a server has one, the tests one after another)."""

    def __init__(self, machine: str = platform.machine()) -> None:
        """``machine``: the processor, whose system call numbers are used (if known)."""
        self._numbers = _SYSCALLS.get(machine) if sys.platform == "linux" else None
        self._kernel: _Kernel | None = None
        self._tried = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._under_way: dict[Uncancellable[None], float] = {}
        """The syncs waited for, with when (the event loop's time) their callers give up."""
        self._overdue_check: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        """Looks for syncs past their time while there are any, on the loop they run on:
        one timer for all, not a timer for each."""
        os.register_at_fork(after_in_child=self._forget)

    @property
    def in_kernel(self) -> bool:
        """Whether syncs go to the kernel (known once one was asked for)."""
        return self._kernel is not None

    async def fdatasync(self, fd: int) -> None:
        """``os.fdatasync(fd)``, raising what it would, or :class:`StorageUnavailable` once
        it took :data:`SYNC_SECONDS`. A cancelled caller waits for the sync all the same,
        up to then."""
        await self._sync(fd, _IOCB_CMD_FDSYNC, os.fdatasync)

    async def fsync(self, fd: int) -> None:
        """``os.fsync(fd)``, as :meth:`fdatasync` is ``os.fdatasync``."""
        await self._sync(fd, _IOCB_CMD_FSYNC, os.fsync)

    async def _sync(self, fd: int, opcode: int, on_thread: Callable[[int], None]) -> None:
        kernel = self._kernel if self._tried else self._open()
        refused = errno.ENOSYS
        if kernel is not None:
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._watch(kernel, loop)
            done: Uncancellable[None] = Uncancellable(loop=loop)
            refused = kernel.submit(fd, opcode, done)
            if refused not in (0, errno.EAGAIN, errno.EINVAL):
                raise OSError(refused, os.strerror(refused))
        if refused:
            # EINVAL: a file that cannot be synced, or a kernel that takes no sync requests.
            done = CALLS.submit(on_thread, fd)
        # Waited for at most SYNC_SECONDS, here rather than in a coroutine more per sync.
        loop = done.get_loop()
        self._under_way[done] = loop.time() + SYNC_SECONDS
        if self._overdue_check is None or self._overdue_check[0] is not loop:
            self._check_overdue_later(loop)
        try:
            await done
        finally:
            del self._under_way[done]
        if refused == errno.EINVAL and kernel is not None and kernel.idle:
            log.info("the kernel refused a sync request: files are synced on threads")
            self._drop(kernel)

    def _fail_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for done, give_up_at in self._under_way.items():
            if give_up_at <= now and not done.done() and done.get_loop() is loop:
                done.set_exception(StorageUnavailable(
                    f"a sync of the upload's storage took longer than {SYNC_SECONDS:g} s: "
                    "the disk or file server does not answer"
                ))
        self._overdue_check = None
        if self._under_way:
            self._check_overdue_later(loop)

    def _check_overdue_later(self, loop: asyncio.AbstractEventLoop) -> None:
        check = loop.call_later(SYNC_SECONDS / 10, self._fail_overdue, loop)
        self._overdue_check = (loop, check)

    def _open(self) -> _Kernel | None:
        self._tried = True
        if self._numbers is not None:
            try:
                self._kernel = _Kernel(self._numbers)
            except OSError as exc:
                log.info("files are synced on threads: the kernel refused io_setup (%s)", exc)
        return self._kernel

    def _watch(self, kernel: _Kernel, loop: asyncio.AbstractEventLoop) -> None:
        """Count completions on ``loop`` (the first, or one that came after another)."""
        old, self._loop = self._loop, loop
        if old is not None and not old.is_closed():
            old.remove_reader(kernel.eventfd)
        loop.add_reader(kernel.eventfd, kernel.reap)

    def _drop(self, kernel: _Kernel) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(kernel.eventfd)
        kernel.close(destroy=True)
        self._kernel, self._loop = None, None

    def _forget(self) -> None:
        if self._kernel is not None:
            self._kernel.close(destroy=False)
        self._kernel, self._loop, self._tried = None, None, False
        self._under_way, self._overdue_check = {}, None


SYNCS = Syncs()
"""This process's syncs."""
