"""What hook dialects share: the event an answer is asked for, and the strict reading of
a JSON answer.

A dialect (:mod:`server.hooks_aiotusd`, :mod:`server.hooks_tusd`) has two jobs: build the
event document that every transport sends, and read the answer. The server chooses one at
start; the rest of :mod:`server.hooks` does not know which. An answer is understood or
refused here with :class:`~server.errors.HookFailed` (503): what the hook meant by an
answer that has not exactly one meaning is unknowable, and letting the request through
could allow what it meant to refuse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .errors import HookFailed, HookRejected, TusError, UploadStopped
from .protocol import format_metadata, is_header_name, is_upload_id
from .state import Upload

# Headers of a rejection that aiotusd sets itself: the framing of the response and the
# connection's (a hook's would contradict the body sent or break the connection), and
# tus's own (Tus-*, Upload-*), which must tell the client the server's state.
_SERVER_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive",
     "proxy-connection", "upgrade", "trailer", "te"}
)
_SERVER_HEADER_PREFIXES = ("tus-", "upload-")
# Header values a hook may set: visible ASCII, spaces and tabs (RFC 9110 field-vchar
# without obs-text, which clients decode differently or refuse).
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e]*")
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """What a transport got back; for post events only the status matters."""

    status: int
    body: bytes
    content_type: str | None = None
    problem: str = ""
    """Why the answer cannot be read, when the transport found out: too long, not JSON."""


@dataclass(frozen=True)
class Change:
    """What a ``pre-create`` hook changed of the new upload (None: left as it was)."""

    id: str | None = None
    metadata: str | None = None
    """As an ``Upload-Metadata`` header."""


@dataclass(frozen=True)
class Occurrence:
    """What an event document tells: the event, the upload and the request behind it."""

    event: str
    hook_id: str
    upload: Upload
    parts: tuple[str, ...]
    """The partial uploads of a final upload, in order."""
    location: dict[str, str]
    """Where the upload's bytes are, as the backend's locator says (empty without one)."""
    request: web.Request | None


class Dialect(Protocol):
    reads_progress: bool
    """Whether a post-receive's answer may stop the body under way (tusd's ``StopUpload``):
    then it is also asked directly while a body streams (see :meth:`Hooks.ask_progress`)."""

    def document(self, occurrence: Occurrence) -> dict[str, Any]:
        """The event's JSON document, as every transport sends it."""

    def answer(self, event: str, reply: Reply) -> Change:
        """Read a blocking hook's reply: nothing, a change, or a :class:`HookRejected`
        (raised); :class:`HookFailed` for an answer without one meaning."""

    def stop(self, reply: Reply) -> UploadStopped | None:
        """Read a post-receive's reply: whether it stops the body, and with what answer."""


class _Unreadable(Exception):
    """A JSON answer without one meaning: a key twice in an object, NaN or Infinity."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys differ: which of two values the hook meant is unknowable."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise _Unreadable(f"key {key[:40]!r} appears twice in an object")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise _Unreadable(f"{name} is not JSON")


def read_object(event: str, reply: Reply) -> dict[str, Any] | None:
    """The JSON object of a 2xx reply (None for an empty answer), or :class:`HookFailed`."""
    if reply.problem:
        raise invalid(event, reply.problem)
    body = reply.body
    if not body.strip():
        return None
    try:
        document = json.loads(
            body.decode(), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except _Unreadable as exc:
        raise invalid(event, str(exc)) from None
    except UnicodeDecodeError:
        raise invalid(event, "not UTF-8") from None
    except RecursionError:
        raise invalid(event, "JSON nested too deeply") from None
    except ValueError:  # not JSON, or a number of more digits than Python converts
        raise invalid(event, "not JSON") from None
    if not isinstance(document, dict):
        raise invalid(event, "not a JSON object")
    return document


def is_text(value: Any) -> bool:
    """A string that UTF-8 encodes: JSON's ``\\ud800`` escapes make lone surrogates, which don't."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_header_value(value: Any) -> bool:
    return isinstance(value, str) and _FIELD_VALUE_RE.fullmatch(value) is not None


def is_error_status(status: Any) -> bool:
    """The statuses a hook may refuse with: 4xx and 5xx, whose meaning every client knows
    (a refusal). 1xx, 2xx and 3xx would tell the client that the request went on, was
    done, or should be sent elsewhere; 600 and above are not HTTP."""
    return type(status) is int and 400 <= status <= 599


def invalid(event: str, why: str) -> HookFailed:
    return HookFailed(f"{event} hook gave an invalid answer: {why}")


def known_keys(event: str, where: str, document: dict[str, Any], known: frozenset[str]) -> None:
    """Refuse a key the answer format does not have: the hook meant something by it (a
    receiver written for tusd says ``RejectUpload``), and going on without knowing what
    could let through a request it meant to refuse."""
    unknown = sorted(set(document) - known)
    if unknown:
        raise invalid(event, f"unknown key {unknown[0][:40]!r}{where}")


def response_headers(event: str, where: str, headers: Any) -> dict[str, str]:
    """A rejection's headers (``where`` in the answer) as they are sent: valid, each once,
    those aiotusd sets left out."""
    if not isinstance(headers, dict) or not all(
        is_header_name(name) and is_header_value(value) for name, value in headers.items()
    ):
        raise invalid(
            event, f"{where} must map header names to values of visible ASCII characters"
        )
    if len({name.lower() for name in headers}) != len(headers):
        raise invalid(event, f"{where} names a header twice")
    return {
        name: value for name, value in headers.items()
        if name.lower() not in _SERVER_HEADERS
        and not name.lower().startswith(_SERVER_HEADER_PREFIXES)
    }


def rejection(body: str, headers: dict[str, str], status: int) -> HookRejected:
    """A refusal with the hook's body, sent as text unless its headers name a type."""
    if body and not any(name.lower() == "content-type" for name in headers):
        headers = {**headers, "Content-Type": TEXT}
    return HookRejected(status, body.encode(), headers)


def changed(event: str, new_id: Any, metadata: Any, names: tuple[str, str]) -> Change:
    """The new upload's id and metadata a ``pre-create`` answer set (``None``: left as it
    was), checked; ``names`` are the two fields' names in the answer's own words
    (``change.id``, ``change.metadata``; ``ChangeFileInfo.ID``, ``ChangeFileInfo.MetaData``)."""
    id_name, metadata_name = names
    if new_id is not None and not (isinstance(new_id, str) and is_upload_id(new_id)):
        raise invalid(event, f"{id_name} is not a valid upload id")
    if metadata is None:
        return Change(new_id)
    if not isinstance(metadata, dict) or not all(is_text(value) for value in metadata.values()):
        raise invalid(event, f"{metadata_name} must map keys to strings")
    try:
        return Change(new_id, format_metadata(metadata))
    except TusError as exc:
        raise invalid(event, exc.reason) from None
