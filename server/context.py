"""What every handler needs: settings, state, storage, locks and hooks of one running server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from storage_backends.base import StorageBackend, StoredUpload

from .capabilities import Capabilities
from .config import Settings
from .hooks import Hooks
from .locks import ConcatLocks, UploadLocks
from .metrics import Metrics
from .protocol import parse_metadata
from .state import Store, Upload


@dataclass
class Context:
    settings: Settings
    store: Store
    backend: StorageBackend
    locks: UploadLocks
    hooks: Hooks
    can: Capabilities
    """What the backend can do beyond the core, asked once (see :mod:`server.capabilities`)."""
    concat_locks: ConcatLocks = field(default_factory=ConcatLocks)
    metrics: Metrics = field(default_factory=Metrics)

    def expires_at(self) -> float | None:
        """When an unfinished upload written to now expires, or None if never."""
        if not self.settings.uploads.expiration:
            return None
        return time.time() + self.settings.uploads.expiration

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
