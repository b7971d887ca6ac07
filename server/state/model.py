"""What the state layer speaks in, whichever database holds it: uploads, hook events, errors.

The enums' values are what the database stores; they are ``str``, so a status compares
equal to its value and formats as it (``f"upload was {upload.status}"`` says ``expired``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Where an upload is in its life; every status but ``ACTIVE`` makes it a tombstone."""

    ACTIVE = "active"
    TERMINATED = "terminated"
    EXPIRED = "expired"
    REFUSED = "refused"
    """A final upload whose parts add up to more than ``max_size``: it is never assembled."""


class ConcatKind(StrEnum):
    """What an upload is to the concatenation extension (``Upload-Concat``)."""

    PARTIAL = "partial"
    FINAL = "final"


ACTIVE = Status.ACTIVE
TERMINATED = Status.TERMINATED
EXPIRED = Status.EXPIRED
REFUSED = Status.REFUSED


class UploadGone(Exception):
    """The upload a write was for is not active (any more): nothing was recorded."""


class LeaseLost(Exception):
    """The lease a write or a byte was for is no longer the caller's: another request took
    the upload over (its lease lapsed, or was given up). Nothing was recorded."""


class DatabaseUnusable(Exception):
    """The database cannot be opened, read or migrated; the message names it."""


class SchemaTooNew(DatabaseUnusable):
    """The database was written by a newer aiotusd than this one."""


class DatabaseUnavailable(Exception):
    """The database of a running server did not answer: the connection to it was lost or
    refused, it did not answer in time, another program held it locked past the wait, or
    its disk failed. The message names it and says why.

    Not a bug, and not the client's doing: the request may succeed once the database is
    back, which the server does not have to be restarted for. A write that raises this was
    not recorded, or (a connection lost during its commit) was recorded whole: a client
    that asks for the offset gets one that its stored bytes cover either way.
    """

    retry_after = 5
    """Seconds a client is told to wait (``Retry-After``) before it tries again."""


@dataclass(frozen=True)
class Upload:
    """An upload as recorded, or as a step is about to record it: a value.

    A step that changes an upload makes a new one (:meth:`but`) and hands it on; a write
    that fails leaves its caller holding the one still recorded, because the new one was
    never adopted. Nothing is rolled back by hand.
    """

    id: str
    length: int | None
    offset: int = 0
    metadata: str = ""
    """The ``Upload-Metadata`` header as the client sent it (echoed on HEAD)."""
    defer_length: bool = False
    concat: ConcatKind | None = None
    status: Status = ACTIVE
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    completed_at: float | None = None
    storage: Mapping[str, Any] = field(default_factory=dict)
    """The storage backend's record of the upload (JSON), which the backend gives back
    from the steps that change it. Never changed in place: read-only to the type checker,
    so that a value handed on is the value recorded. (A read-only proxy would guard only
    its top level, the parts lists inside stay lists, and JSON does not encode one.)"""
    repr_digest: str | None = None
    """The digests of the whole upload (RFC 9530) that its completion works out, in the
    form of ``Repr-Digest``: until then the ones its client gave (``sha-256=:…:``) and the
    ones it wants told (a bare ``sha-512``), from then on those of its stored bytes. None:
    no digest to work out, and no work at completion (see :mod:`server.digests`)."""

    def but(self, **changes: Any) -> Upload:
        """This upload with some fields changed, as ``dataclasses.replace`` makes it, in a
        fifth of the time: every step of every request makes a few, and ``replace`` runs
        ``__init__`` field by field (no field here needs ``__init__``'s work)."""
        assert changes.keys() <= _UPLOAD_FIELDS, changes.keys() - _UPLOAD_FIELDS
        new = object.__new__(Upload)
        state = new.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return new

    @property
    def is_complete(self) -> bool:
        return self.completed_at is not None

    def completed(self) -> Upload:
        """This upload recorded complete now: a finished upload never expires."""
        return self.but(completed_at=time.time(), expires_at=None)

    @property
    def is_final(self) -> bool:
        return self.concat == ConcatKind.FINAL


_UPLOAD_FIELDS = frozenset(item.name for item in fields(Upload))


@dataclass(frozen=True)
class Lease:
    """A lease on an upload: the lock on it that processes sharing the database respect.

    ``token`` grows with every lease any upload gets, so that a lease once lost is never
    the upload's again: writes under a lease name it (see :class:`~.interface.Leases`)."""

    upload_id: str
    owner: str
    """The store (one per process) whose lease it is."""
    token: int
    expires_in: float
    """Seconds until it lapses, by the database's clock when it was read."""
    release_requested: bool = False
    """Another request asked the holder to let go."""
    upload: Upload | None = field(default=None, compare=False)
    """The upload as it stood once the lease was taken, when the take read it too (a
    store may not): what a lookup right after the take would find, without its round trip
    to the database. None also when there is no such upload."""


@dataclass
class HookEvent:
    """A post-hook event in the outbox, from the state change that caused it until delivered."""

    id: str
    """The ``Hook-Id``: the same on every delivery attempt, for idempotent receivers."""
    upload_id: str
    type: str
    payload: bytes
    """The JSON body, fixed when the event is recorded."""
    created_at: float = field(default_factory=time.time)
    seq: int = 0
    """Outbox order; events of one upload are delivered in this order."""
    since: float = 0.0
    """When the current series of attempts began: creation, or the last ``hooks retry``."""
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    dead: bool = False
