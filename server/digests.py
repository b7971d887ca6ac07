"""Digests of a whole upload (RFC 9530's ``Repr-Digest``), as the IETF draft's "Integrity
Digests" section has them, and the reading of RFC 9530's fields.

A client may give the digest of the whole upload (``Repr-Digest``) and ask to be told it
(``Want-Repr-Digest``); the server works them out once the upload is complete, and an
upload whose bytes do not match is failed and removed. A running hash cannot follow an
upload across its requests: Python's hashes cannot be saved, and a resumed upload goes
on in another request, perhaps in another process. So the digests are worked out at
completion from the stored bytes, read back in the storage's chunks (memory stays
bounded) and hashed in a thread (the event loop goes on): one more read of the whole
upload, for the uploads that ask for it only.

The record (:attr:`~server.state.Upload.repr_digest`) is written as ``Repr-Digest`` is:
``sha-256=:…:`` for a digest the client gave, a bare ``sha-512`` for one it only wants
told. Once the upload is complete, it holds the digests of the stored bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterable

from aiohttp import web

from .checksum import ALGORITHMS as HASHERS
from .checksum import ExpectedChecksum, Hasher
from .context import Context
from .errors import BadRequest, ReprDigestMismatch
from .locks import Holder
from .state import Upload

ALGORITHMS = {"sha-256": "sha256", "sha-512": "sha512"}
"""RFC 9530's names of the algorithms of :mod:`server.checksum` that it registers."""
_SIZES = {name: len(HASHERS[hasher]().digest()) for name, hasher in ALGORITHMS.items()}
Digests = dict[str, bytes | None]
"""Digests by algorithm; None for one that is wanted but not given."""


def given_digests(value: str, field: str) -> Digests:
    """The digests of a ``Content-Digest`` or ``Repr-Digest`` (an RFC 9651 Dictionary of
    byte sequences) in the algorithms this server has; others are ignored, as RFC 9530
    lets a recipient do. 400 for a malformed one in an algorithm it has."""
    digests: Digests = {}
    for key, member in _members(value):
        if key not in ALGORITHMS:
            continue
        if len(member) < 2 or member[0] != ":" or member[-1] != ":":
            raise BadRequest(f"{field} values must be byte sequences (:base64:)")
        try:
            digest = base64.b64decode(member[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{field} holds invalid base64") from None
        if len(digest) != _SIZES[key]:
            raise BadRequest(f"{field} has a {key} digest of the wrong length")
        digests[key] = digest
    return digests


def content_checksum(request: web.Request) -> ExpectedChecksum | None:
    """The body's ``Content-Digest``, checked as ``Upload-Checksum`` is; None without one
    in an algorithm this server has."""
    value = request.headers.get("Content-Digest")
    digests = {} if value is None else given_digests(value, "Content-Digest")
    for key, digest in digests.items():
        encoded = base64.b64encode(digest or b"").decode()
        return ExpectedChecksum(f"{ALGORITHMS[key]} {encoded}")
    return None


def wanted_digest(value: str) -> str | None:
    """The algorithm this server has that a ``Want-Repr-Digest`` prefers most (an RFC 9651
    Dictionary of preferences from 0, "not acceptable", to 10); None if it names none."""
    best, best_weight = None, 0
    for key, member in _members(value):
        if not member.isdigit() or int(member) > 10:
            raise BadRequest("Want-Repr-Digest preferences must be integers from 0 to 10")
        if key in ALGORITHMS and int(member) > best_weight:
            best, best_weight = key, int(member)
    return best


def requested(request: web.Request) -> str | None:
    """The record of the digests a request gives and wants (``Repr-Digest``,
    ``Want-Repr-Digest``); None when it has neither in an algorithm this server has."""
    digests: Digests = {}
    want = request.headers.get("Want-Repr-Digest")
    if want is not None and (algorithm := wanted_digest(want)) is not None:
        digests[algorithm] = None
    if (given := request.headers.get("Repr-Digest")) is not None:
        digests.update(given_digests(given, "Repr-Digest"))
    return _record(digests) if digests else None


async def declare(ctx: Context, upload: Upload, record: str, holder: Holder) -> Upload:
    """Take the digests an append gives or wants along with those recorded: 400 for one
    that contradicts a digest given before (both describe the same whole upload). Recorded
    at once, under the caller's lock: they describe the upload, not this request's body.
    Returns the upload with them."""
    digests = _digests(upload.repr_digest)
    for key, digest in _digests(record).items():
        if digest is None:
            digests.setdefault(key, None)
        elif digests.get(key) not in (None, digest):
            raise BadRequest(f"Repr-Digest's {key} differs from the one given before")
        else:
            digests[key] = digest
    merged = _record(digests)
    if merged == upload.repr_digest:
        return upload
    return await ctx.store.save_progress(upload.but(repr_digest=merged), lease=holder.token)


async def worked_out(ctx: Context, upload: Upload) -> Upload:
    """The upload with the digests of its stored bytes, which must match those its client
    gave (else :class:`ReprDigestMismatch`, which carries it). Its bytes must be readable:
    after the storage's finish, if it has one."""
    expected = _digests(upload.repr_digest)
    hashers = {key: HASHERS[ALGORITHMS[key]]() for key in expected}
    async for chunk in ctx.backend.read(ctx.stored(upload), 0, upload.offset):
        # hashlib lets go of the GIL for long data: a large upload holds up no request.
        await asyncio.to_thread(_update, hashers.values(), chunk)
    stored = {key: hasher.digest() for key, hasher in hashers.items()}
    for key, digest in expected.items():
        if digest is not None and digest != stored[key]:
            raise ReprDigestMismatch(
                f"the upload's {key} digest does not match its Repr-Digest: it was discarded",
                upload,
            )
    return upload.but(repr_digest=_record(dict(stored)))


def _update(hashers: Iterable[Hasher], chunk: bytes) -> None:
    for hasher in hashers:
        hasher.update(chunk)


def _members(value: str) -> list[tuple[str, str]]:
    """The members of an RFC 9651 Dictionary as (key, value) text, parameters dropped; a
    bare key has the value ``?1``. Enough for RFC 9530's fields, whose keys are tokens and
    whose values hold no comma."""
    members = []
    for member in value.split(","):
        key, equals, rest = member.partition("=")
        if key.strip():
            members.append((key.strip().lower(), rest.split(";")[0].strip() if equals else "?1"))
    return members


def _digests(record: str | None) -> Digests:
    """The digests of a record (a bare key: wanted only)."""
    digests: Digests = {}
    for key, member in _members(record or ""):
        digests[key] = None if member == "?1" else base64.b64decode(member[1:-1])
    return digests


def _record(digests: Digests) -> str:
    return ", ".join(
        key if digest is None else f"{key}=:{base64.b64encode(digest).decode()}:"
        for key, digest in sorted(digests.items())
    )
