"""What every handler needs: settings, state, storage, locks and hooks of one running server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from storage_backends.base import Finisher, StorageBackend, StoredUpload

from .config import Settings
from .hooks import Hooks
from .locks import ConcatLocks, UploadLocks
from .metrics import Metrics
from .protocol import parse_metadata
from .state import StateStore, Upload


@dataclass
class Context:
    settings: Settings
    store: StateStore
    backend: StorageBackend
    locks: UploadLocks
    hooks: Hooks
    concat_locks: ConcatLocks = field(default_factory=ConcatLocks)
    metrics: Metrics = field(default_factory=Metrics)
    finisher: Finisher | None = field(init=False)
    """The backend, if it has work to do once an upload's last byte is stored.

    Asked once: in Python 3.11, ``isinstance`` with a runtime-checkable protocol looks
    up each of its members on every call, which cost 5% of the server's Python time
    in W3 of the benchmark when it was asked for every finished upload.
    """

    def __post_init__(self) -> None:
        self.finisher = self.backend if isinstance(self.backend, Finisher) else None

    def expires_at(self) -> float | None:
        """When an unfinished upload written to now expires, or None if never."""
        if not self.settings.expiration:
            return None
        return time.time() + self.settings.expiration

    @staticmethod
    def stored(upload: Upload) -> StoredUpload:
        return StoredUpload(
            id=upload.id,
            length=upload.length,
            offset=upload.offset,
            metadata=parse_metadata(upload.metadata),
            storage=upload.storage,
        )


CONTEXT = web.AppKey("aiotusd", Context)
