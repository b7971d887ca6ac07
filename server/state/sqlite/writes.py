"""How the writes of many requests share the SQLite database.

:class:`WriteGate` decides who may write: single statements side by side, a transaction
alone. :class:`StatementBatch` runs the single statements of one turn of the event loop
together, in one transaction, on the event loop's own thread; transactions, and the
statements that find the database locked, go to aiosqlite's connection and its thread,
which runs everything in the order it is given and waits for locks there. This is the one
place that uses aiosqlite's private API: ``Connection._execute`` (run a function on the
connection's thread) and ``Connection._connection`` (the ``sqlite3`` connection there); the
tests of the batch fail on an aiosqlite that renamed either.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from storage_backends.blocking import Uncancellable

from .marks import Stamps, WriteMarks

log = logging.getLogger("aiotusd")

LOCKED_RETRIES = 10
"""How often single statements that found the database locked try again on the event
loop's thread before they go to the connection's thread (which waits for the lock)."""
LOCKED_RETRY_SECONDS = 0.0005
"""The pause before each of those tries: another worker's commit holds the write lock
for some tens of microseconds."""

FollowUps = tuple[tuple[str, tuple[Any, ...]], ...]
"""Statements (SQL, parameters) that go with one into its transaction, run only when it
changed a row: the hook events that report its change."""
Statement = tuple[str, tuple[Any, ...], bool, FollowUps]
"""SQL, its parameters, whether its outcome is the id of the row it inserted (0 when it
inserted none) rather than the rows it changed, and its follow-ups: a write with its
events, which commit together or not at all."""


def _run_one(cursor: sqlite3.Cursor, statement: Statement) -> int:
    """Run ``statement`` and, when it changed a row, its follow-ups; its outcome."""
    sql, values, row_id, follow_ups = statement
    cursor.execute(sql, values)
    changed = cursor.rowcount
    outcome = (cursor.lastrowid or 0) if row_id and changed > 0 else changed
    if changed > 0:
        for sql, values in follow_ups:
            cursor.execute(sql, values)
    return outcome


class WriteGate:
    """Single statements side by side, a transaction alone, each in its turn.

    Single statements need not wait for each other: those that come in one turn of the
    event loop run together (:class:`StatementBatch`), which is what makes many small
    uploads fast. A transaction must run alone, so that no other request's statement
    slips into it (and is rolled back with it): it waits for the statements under way,
    and statements that come after it wait for it.

    Turns go in the order of arrival: neither a stream of statements nor one of
    transactions (every creation with a post-create hook is one) keeps the other out.
    """

    def __init__(self) -> None:
        self._statements = 0
        self._transaction = False
        self._waiting: collections.deque[tuple[bool, asyncio.Future[None]]] = (
            collections.deque()
        )
        """Who waits for a turn, first come first: (is a transaction, woken when in)."""

    def statement(self) -> _Turn:
        """``async with gate.statement():`` a turn for a single statement."""
        return _Turn(self, transaction=False)

    def transaction(self) -> _Turn:
        """``async with gate.transaction():`` a turn for a transaction, alone."""
        return _Turn(self, transaction=True)

    def _may_enter(self, transaction: bool) -> bool:
        return not self._transaction and not (transaction and self._statements)

    def _let_in(self, transaction: bool) -> None:
        if transaction:
            self._transaction = True
        else:
            self._statements += 1

    async def _enter(self, transaction: bool) -> None:
        if not self._waiting and self._may_enter(transaction):
            self._let_in(transaction)
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((transaction, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():
                # Its place is given up: those behind it may now go in.
                self._wake()
            else:
                self._leave(transaction)  # let in, but cancelled before it could go on
            raise

    def _leave(self, transaction: bool) -> None:
        if transaction:
            self._transaction = False
        else:
            self._statements -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            transaction, turn = self._waiting[0]
            if turn.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if not self._may_enter(transaction):
                return
            self._waiting.popleft()
            self._let_in(transaction)
            turn.set_result(None)


class _Turn:
    """A turn at a :class:`WriteGate`, held for an ``async with`` block.

    A class rather than an async generator (``contextlib.asynccontextmanager``): every
    write takes a turn, and an async generator's context took some eight calls more.
    """

    __slots__ = ("_gate", "_transaction")

    def __init__(self, gate: WriteGate, transaction: bool) -> None:
        self._gate = gate
        self._transaction = transaction

    async def __aenter__(self) -> None:
        await self._gate._enter(self._transaction)

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate._leave(self._transaction)


def _in_one_transaction(
    connection: sqlite3.Connection, statements: Sequence[Statement],
    leave: Callable[[], None] | None, begin: str,
) -> list[int]:
    """Run ``statements`` between ``begin`` and COMMIT, calling ``leave`` (the marks of
    :mod:`.marks`) before the COMMIT, while the transaction holds the write lock; the
    outcome of each. Raises what fails, the transaction left to the caller. (One cursor
    for them all: ``connection.execute`` makes one each time.)"""
    cursor = connection.cursor()
    cursor.execute(begin)
    changed = [_run_one(cursor, statement) for statement in statements]
    if leave is not None:
        leave()
    cursor.execute("COMMIT")
    return changed


def _run_together(
    connection: sqlite3.Connection, statements: list[Statement],
    leave: Callable[[], None] | None = None,
) -> list[Exception | int]:
    """Run ``statements`` in one transaction; when one fails, each alone: every statement
    gets its own outcome, as if it had been sent by itself: the rows it changed, or its
    exception. ``leave`` is called in each transaction that runs (see
    :func:`_in_one_transaction`), which a statement with it never runs without; nor one
    with follow-ups. On the connection's thread."""
    # IMMEDIATE with marks: the write lock is theirs even if no statement writes a row.
    begin = "BEGIN" if leave is None else "BEGIN IMMEDIATE"
    if len(statements) > 1 or leave is not None or statements[0][3]:
        try:
            return [*_in_one_transaction(connection, statements, leave, begin)]
        except Exception as exc:
            # A full disk may have rolled back already; a failed COMMIT may have not.
            if not _rolled_back(connection) or len(statements) == 1:
                return [exc] * len(statements)  # none of them may go into that one
    outcomes: list[Exception | int] = []
    for statement in statements:
        try:
            if leave is None and not statement[3]:
                outcomes.append(_run_one(connection.cursor(), statement))
            else:
                outcomes += _in_one_transaction(connection, (statement,), leave, begin)
        except Exception as exc:
            if not _rolled_back(connection):
                return [*outcomes, *[exc] * (len(statements) - len(outcomes))]
            outcomes.append(exc)
    return outcomes


def _rolled_back(connection: sqlite3.Connection) -> bool:
    """End the transaction under way, if one is; False when it could not be."""
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            return False
    return True


def _alone_in_this_turn(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether nothing else runs in this turn of the event loop after the caller: nothing
    could join a batch sent at the end of it, which may then be sent now, without the
    turns of the loop that waiting for it takes (for one request at a time, 7-8 % of a
    small upload's instructions). asyncio's loop keeps what it runs next in ``_ready``
    (private); a loop without it (uvloop) has every batch wait for the end of the turn."""
    return not getattr(loop, "_ready", True)


class _Locked(Exception):
    """Another process holds the database's write lock: nothing was run."""


def _run_here(
    connection: sqlite3.Connection, statements: list[Statement],
    leave: Callable[[], None] | None = None,
) -> list[int] | None:
    """Run ``statements`` in one transaction on ``connection``, which never waits for a lock,
    with ``leave`` called before its COMMIT (see :func:`_in_one_transaction`); the rows each
    changed, or None when that failed and nothing of it was kept; :class:`_Locked` when
    another process holds the write lock.

    On the event loop's thread: in WAL mode with ``synchronous=NORMAL`` a commit writes the
    log and syncs nothing, and writes by key take microseconds. What cannot run at once
    (another process of ``--workers`` holds the write lock) or fails goes to the connection's
    thread instead, which waits for the lock and gives each statement its own outcome."""
    try:
        if len(statements) == 1 and leave is None and not statements[0][3]:
            return [_run_one(connection.cursor(), statements[0])]
        # IMMEDIATE: a statement that reads before it writes cannot find, at its write,
        # that another process wrote since its read (which SQLite fails without waiting).
        return _in_one_transaction(connection, statements, leave, "BEGIN IMMEDIATE")
    except Exception as exc:  # an OverflowError of a parameter as well: the thread reports it
        if connection.in_transaction:
            connection.execute("ROLLBACK")  # raises when it cannot: see the caller
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            raise _Locked from None
        return None


def _is_busy(error: sqlite3.OperationalError) -> bool:
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class StatementBatch:
    """Single statements that come within one turn of the event loop run together, in one
    transaction: on this thread with ``here``, the connection for that; else, or when that
    cannot, as one call to the aiosqlite connection's thread.

    A round trip to that thread costs far more than an UPDATE by key (measured: 83 us
    against 11 us a statement when 32 go together), and hands the GIL back and forth with
    the event loop: a POST and PATCH of 64 KiB took 20 % less CPU, and twice as many went
    through a second, once their writes ran here. A statement is answered once its batch
    is committed.

    With ``--workers``, another worker's commit holds the write lock now and then: the
    batch tries again here a moment later (:data:`LOCKED_RETRIES`), joined by what came
    meanwhile, and goes to the thread only when the lock stays taken (a checkpoint, a
    transaction). Sent to the thread at once, 3 % of the batches had cost two workers
    some 17,000 futex calls per 3,000 uploads, the thread and the loop taking the GIL
    from each other.
    """

    def __init__(
        self, connection: aiosqlite.Connection, here: sqlite3.Connection | None = None,
        committed_here: Callable[[], None] = lambda: None,
    ) -> None:
        """``committed_here`` is called after each commit made here."""
        self._connection = connection
        self.here = here
        self._committed_here = committed_here
        self.marks: WriteMarks | None = None
        """Where the stamps of the statements are left (:mod:`.marks`), with ``--workers``."""
        self._waiting: list[tuple[Statement, Uncancellable[int]]] = []
        self._stamps: list[tuple[int, int]] = []
        """The stamps of the statements waiting, left in the transaction that runs them."""
        self._locked_tries = 0
        """How often the batch now waiting found the database locked."""

    async def run(self, statement: Statement, stamps: Stamps = ()) -> int:
        """Run ``statement`` in a transaction that leaves ``stamps`` (see :mod:`.marks`),
        and return its outcome (see :data:`Statement`); a cancelled caller waits for it to
        have run all the same (the interface's promise, see :mod:`server.state.interface`)."""
        loop = asyncio.get_running_loop()
        first = not self._waiting
        self._stamps += stamps
        answer: Uncancellable[int] = Uncancellable(loop=loop)
        self._waiting.append((statement, answer))
        if first:
            if _alone_in_this_turn(loop):
                self._send()
            else:
                loop.call_soon(self._send)
        if answer.done():
            return answer.result()
        try:
            return await answer  # answered together with the others
        except asyncio.CancelledError:
            if not answer.cancelled():
                answer.exception()  # looked at: no "exception never retrieved"
            raise

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        stamps, self._stamps = self._stamps, []
        statements = [statement for statement, _ in batch]
        leave = None
        if stamps and self.marks is not None:
            leave = functools.partial(self.marks.leave, stamps)
        if self.here is not None:
            try:
                changed = _run_here(self.here, statements, leave)
            except _Locked:
                if self._locked_tries < LOCKED_RETRIES:
                    self._locked_tries += 1
                    self._waiting[:0] = batch  # ahead of what came meanwhile
                    self._stamps[:0] = stamps
                    asyncio.get_running_loop().call_later(LOCKED_RETRY_SECONDS, self._send)
                    return
                changed = None
            except sqlite3.Error as exc:
                # A transaction here that cannot end: every write goes to the thread now.
                log.warning("writing on the event loop's thread stopped: %s", exc)
                self.here.close()
                self.here, changed = None, None
            self._locked_tries = 0
            if changed is not None:
                for (_, done), outcome in zip(batch, changed):
                    done.set_result(outcome)
                self._committed_here()
                return
        self._send_to_thread(batch, statements, leave)

    def _send_to_thread(
        self,
        batch: list[tuple[Statement, Uncancellable[int]]],
        statements: list[Statement],
        leave: Callable[[], None] | None,
    ) -> None:
        sent = asyncio.ensure_future(self._connection._execute(
            _run_together, self._connection._connection, statements, leave
        ))

        def answer(sent: asyncio.Future[list[Exception | int]]) -> None:
            if sent.cancelled():  # the loop is closing
                for _, done in batch:
                    done.abandon()
                return
            failure = sent.exception()
            outcomes: Sequence[BaseException | int] = (
                sent.result() if failure is None else [failure] * len(batch)
            )
            for (_, done), outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

        sent.add_done_callback(answer)
