"""What the storage backend can do beyond the core interface, asked once at start.

A backend implements :class:`~storage_backends.base.StorageBackend` and any of the
optional protocols beside it (finish work, concatenation, deferred lengths, download
redirects, health checks, storage locations for hooks). They are looked up here, once,
instead of ``isinstance`` at each call site: the handlers ask a field, and a
capability that is missing is plain ``None``. (In Python 3.11 an ``isinstance`` with a
runtime-checkable protocol also looks up each of its members on every call.)
"""

from __future__ import annotations

from dataclasses import dataclass

from storage_backends.base import (
    Concatenator,
    DownloadRedirector,
    Finisher,
    HealthChecker,
    LengthDeferrer,
    StorageBackend,
    StorageLocator,
)


@dataclass(frozen=True)
class Capabilities:
    finisher: Finisher | None
    """Has work to do once an upload's last byte is stored (S3: complete the object)."""
    concatenator: Concatenator | None
    """Assembles final uploads: the concatenation extensions."""
    length_deferrer: LengthDeferrer | None
    """Takes uploads whose length comes later: creation-defer-length."""
    download_redirector: DownloadRedirector | None
    """May send downloads elsewhere (S3: a presigned URL)."""
    health_checker: HealthChecker | None
    """Says whether the storage is usable, for ``/readyz``."""
    locator: StorageLocator | None
    """Says where an upload's bytes are, for hook events."""

    @classmethod
    def of(cls, backend: StorageBackend) -> Capabilities:
        return cls(
            finisher=backend if isinstance(backend, Finisher) else None,
            concatenator=backend if isinstance(backend, Concatenator) else None,
            length_deferrer=backend if isinstance(backend, LengthDeferrer) else None,
            download_redirector=backend if isinstance(backend, DownloadRedirector) else None,
            health_checker=backend if isinstance(backend, HealthChecker) else None,
            locator=backend if isinstance(backend, StorageLocator) else None,
        )
