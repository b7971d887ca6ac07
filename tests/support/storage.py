"""Test bytes, and where the filesystem backend keeps them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from support.http import upload_id

if TYPE_CHECKING:
    from server.config import Settings
    from support.processes import ServerProcess


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``: a shifted, lost or
    duplicated range shows."""
    return random.Random(seed).randbytes(size)


def data_file(owner: Settings | ServerProcess, path: str) -> Path:
    """The data file of upload ``path`` in the data directory of settings or a server."""
    return Path(owner.data_dir) / upload_id(path)


def data_files(settings: Settings) -> list[str]:
    """Sorted names of the data directory's upload files (the SQLite files left out)."""
    return sorted(p.name for p in Path(settings.data_dir).iterdir() if not p.name.startswith("aiotusd."))


def file_size(path: Path) -> int:
    """The size of the file at ``path``, or -1 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
