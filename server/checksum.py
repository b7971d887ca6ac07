"""Checksum algorithms of the tus checksum extension."""

from __future__ import annotations

import hashlib
import zlib
from typing import Callable, Protocol

from .errors import BadRequest
from .protocol import parse_checksum


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """CRC-32 as a hasher; the digest is the 4-byte big-endian value."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "crc32": _Crc32,
}
_DIGEST_SIZES = {name: len(factory().digest()) for name, factory in ALGORITHMS.items()}


class ExpectedChecksum:
    """The ``Upload-Checksum`` of one request, with the hasher that checks it."""

    def __init__(self, header: str) -> None:
        algorithm, digest = parse_checksum(header)
        if algorithm not in ALGORITHMS:
            raise BadRequest(
                f"unsupported checksum algorithm {algorithm[:32]!r}; "
                f"supported: {','.join(ALGORITHMS)}"
            )
        if len(digest) != _DIGEST_SIZES[algorithm]:
            raise BadRequest(f"Upload-Checksum digest has the wrong length for {algorithm}")
        self.algorithm = algorithm
        self.digest = digest
        self.hasher = ALGORITHMS[algorithm]()

    def matches(self) -> bool:
        return self.hasher.digest() == self.digest
