"""What differs between the interop versions of the draft, in one table.

Every draft request goes through the same steps (:mod:`server.uploads`) whatever its
version; a :class:`Codec` reads the headers of its version and writes the answers its
clients expect. The differences, oldest first:

- 3 (draft -01): completeness is ``Upload-Incomplete``, the inverse of ``Upload-Complete``;
- 5 (draft -03): ``Upload-Complete``; ``104`` interim responses tell the offset while a
  body arrives;
- 6 (drafts -04, -05): ``PATCH`` bodies must be ``application/partial-upload``; the
  ``Upload-Limit`` header (the lifetime as ``expires``); problem documents;
- 8 (drafts -09 to -11): the lifetime is ``max-age``; answers to appends carry
  ``Upload-Complete`` only, no ``Upload-Offset``; ``Upload-Limit`` also on ``OPTIONS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from ..errors import BadRequest

PARTIAL_UPLOAD = "application/partial-upload"
_SF_INTEGER = re.compile(r"[0-9]{1,15}")
"""An RFC 9651 Integer has at most 15 digits; the draft's are never negative."""


@dataclass(frozen=True)
class Limits:
    """What ``Upload-Limit`` says: the largest upload, if any, and the seconds an upload has
    left to live (or, before there is one, the seconds each write gives it), if it expires."""

    max_size: int | None
    age: int | None


@dataclass(frozen=True)
class Codec:
    """The headers of one interop version."""

    version: int
    inverted: bool = False
    """Completeness is sent as ``Upload-Incomplete`` (version 3)."""
    partial_upload: bool = True
    """``PATCH`` needs ``Content-Type: application/partial-upload`` (6 on)."""
    age_key: str | None = "max-age"
    """The name of the lifetime in ``Upload-Limit``; None: the version has no ``Upload-Limit``."""
    append_offset: bool = False
    """Answers to appends carry ``Upload-Offset`` (up to 6)."""
    problems: bool = True
    """Refusals that have a problem type are answered with its problem document (6 on)."""
    progress: bool = True
    """``104`` interim responses tell the offset while a body arrives (5 on)."""

    @property
    def complete_name(self) -> str:
        return "Upload-Incomplete" if self.inverted else "Upload-Complete"

    def read_complete(self, request: web.Request) -> bool:
        """Whether the request completes the upload (400 without a valid header saying so)."""
        value = request.headers.get(self.complete_name)
        if value is None:
            raise BadRequest(f"{self.complete_name} is required")
        return read_boolean(value, self.complete_name) != self.inverted

    def complete(self, done: bool) -> dict[str, str]:
        """The header that says whether the upload is complete."""
        return {self.complete_name: "?1" if done != self.inverted else "?0"}

    def limit(self, limits: Limits) -> dict[str, str]:
        """``Upload-Limit``, in the versions that have it: ``min-size=0`` at least, which
        says "no limits" to the clients that look for the header."""
        if self.age_key is None:
            return {}
        members = {"min-size": 0}
        if limits.max_size is not None:
            members["max-size"] = limits.max_size
        if limits.age is not None:
            members[self.age_key] = limits.age
        return {"Upload-Limit": ", ".join(f"{key}={value}" for key, value in members.items())}


CODECS = {
    3: Codec(3, inverted=True, partial_upload=False, age_key=None, append_offset=True,
             problems=False, progress=False),
    5: Codec(5, partial_upload=False, age_key=None, append_offset=True, problems=False),
    6: Codec(6, age_key="expires", append_offset=True),
    8: Codec(8),
}
"""The supported interop versions."""


def read_boolean(value: str, name: str) -> bool:
    """An RFC 9651 Boolean: ``?1`` or ``?0``."""
    value = value.strip()
    if value not in ("?0", "?1"):
        raise BadRequest(f"{name} must be ?0 or ?1")
    return value == "?1"


def read_integer(value: str, name: str) -> int:
    """A non-negative RFC 9651 Integer."""
    value = value.strip()
    if not _SF_INTEGER.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer of at most 15 digits")
    return int(value)
