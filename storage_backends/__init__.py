"""Storage backends: where the bytes of uploads live."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StorageBackend
from .filesystem import FilesystemBackend

if TYPE_CHECKING:
    from server.config import Settings


def make_backend(settings: Settings) -> StorageBackend:
    """The backend the settings name."""
    if settings.storage.backend == "s3":
        from .s3 import S3Backend, S3Settings

        return S3Backend(S3Settings.from_settings(settings))
    return FilesystemBackend(settings.storage.data_dir, fsync=settings.storage.fsync == "always")
