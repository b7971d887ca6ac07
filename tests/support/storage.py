"""Test bytes, and what a storage backend holds of an upload: files, or S3 and its spool."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.config import Settings
from support.http import upload_id

if TYPE_CHECKING:
    from storage_backends.s3 import S3Settings
    from support.processes import ServerProcess


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes, the same for the same ``seed``: a shifted, lost or
    duplicated range shows."""
    return random.Random(seed).randbytes(size)


def data_file(owner: Settings | ServerProcess, path: str) -> Path:
    """The data file of upload ``path`` in the data directory of settings or a server."""
    data_dir = owner.storage.data_dir if isinstance(owner, Settings) else owner.data_dir
    return Path(data_dir) / upload_id(path)


def data_files(settings: Settings) -> list[str]:
    """Sorted names of the data directory's upload files (the SQLite files left out)."""
    return sorted(
        p.name for p in Path(settings.storage.data_dir).iterdir()
        if not p.name.startswith("aiotusd.")
    )


def file_size(path: Path) -> int:
    """The size of the file at ``path``, or -1 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


# --- what a backend holds of an upload, seen from outside the server ------------------------


class StorageView(ABC):
    """Where tests look to see that a backend made, kept or removed an upload's bytes; the
    ``storage_view`` fixture gives the one of the test's backend."""

    @abstractmethod
    def ids(self) -> list[str]:
        """The sorted ids of the uploads that storage holds anything of."""

    @abstractmethod
    def size(self, path: str) -> int:
        """The bytes held of upload ``path`` (its path or id), or -1 if nothing at all."""

    def holds(self, path: str) -> bool:
        """Whether storage holds anything of upload ``path``, be it no byte."""
        return self.size(path) >= 0


@dataclass(frozen=True)
class FilesystemView(StorageView):
    """The data directory: one file per upload, made at creation."""

    data_dir: Path

    def ids(self) -> list[str]:
        """Every name in the data directory but the database's."""
        return sorted(
            p.name for p in self.data_dir.iterdir() if not p.name.startswith("aiotusd.sqlite3")
        )

    def size(self, path: str) -> int:
        return file_size(self.data_dir / _id(path))


@dataclass(frozen=True)
class S3View(StorageView):
    """The bucket (objects, tail objects ``{key}.part{n}.{start}.{token}``, multipart
    uploads and their parts) and the local spool.

    S3 makes nothing at creation for an upload of one part (known length, at most the
    part size); its bytes are in tail objects between requests, then in its object.
    """

    s3: Any
    """A blocking boto3 client of the endpoint."""
    settings: S3Settings

    def _key(self, upload: str) -> str:
        return self.settings.prefix + upload

    def ids(self) -> list[str]:
        bucket, prefix = self.settings.bucket, self.settings.prefix
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        multipart = self.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        # Upload ids hold no dot: what follows one in a key is a tail object's suffix.
        keys = {item["Key"].removeprefix(prefix).split(".")[0] for item in [*listed, *multipart]}
        spool = self.settings.spool
        spooled = {p.name for p in spool.iterdir()} if spool.exists() else set()
        return sorted(keys | spooled)

    def _parts(self, key: str) -> dict[int, int]:
        """The sizes of the parts S3 holds of the multipart uploads of ``key``, by number."""
        bucket = self.settings.bucket
        found: dict[int, int] = {}
        for mpu in self.s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if mpu["Key"] == key:
                listed = self.s3.list_parts(Bucket=bucket, Key=key, UploadId=mpu["UploadId"])
                found |= {p["PartNumber"]: p["Size"] for p in listed.get("Parts", [])}
        return found

    def size(self, path: str) -> int:
        """What a server would find: the object's size once there is one; else the larger of
        what S3 holds (the parts before the part of the last tail objects, and the bytes of
        that part they reach; the parts alone, from the first on, without any) and what the
        spool holds, which
        while a request is under way is the bytes received of it; -1 when nothing is held."""
        upload = _id(path)
        key = self._key(upload)
        listed = self.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=key)
        sizes = {item["Key"]: int(item["Size"]) for item in listed.get("Contents", [])}
        if key in sizes:
            return sizes[key]
        tails = []  # (part, end) of each tail object, ``{key}.part{n}.{start}.{token}``
        for name, size in sizes.items():
            if name.startswith(key + ".part"):
                part, start, _ = name.removeprefix(key + ".part").split(".")
                tails.append((int(part), int(start) + size))
        parts = self._parts(key)
        if tails:
            number, end = max(tails)
            held = sum(part for n, part in parts.items() if n < number) + end
        else:
            count = 0
            while count + 1 in parts:
                count += 1
            held = sum(parts[n] for n in range(1, count + 1))
        spooled = self.settings.spool / upload
        if spooled.is_dir():
            held = max(held, sum(p.stat().st_size for p in spooled.iterdir() if p.name.isdigit()))
        return held if held or upload in self.ids() else -1


def _id(path: str) -> str:
    return upload_id(path) if "/" in path else path
