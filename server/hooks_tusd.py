"""tusd's hook dialect (``hooks_format = "tusd"``, and every ``hooks_dir`` hook): the
hook request and response JSON of tusd v2, so that receivers written for tusd keep working.

The request is tusd's ``{"Type": ..., "Event": {"Upload": ..., "HTTPRequest": ...}}``,
field for field. The response is read as tusd reads it (Go's JSON decoding: keys match
their field whatever their case; ``null`` is as good as absent), with two differences
that keep a request from going through on an answer that is not fully understood: a
key tusd does not have, or a key twice, makes the answer invalid (503), where Go ignores
the one and takes the last of the other; and a 4xx or 5xx ``HTTPResponse.StatusCode``
refuses the request even without ``RejectUpload`` (tusd would send that status after
creating the upload), which is also how ``pre-finish`` and ``pre-access`` refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import HookRejected, UploadStopped
from .events import POST_RECEIVE, PRE_CREATE, PRE_TERMINATE
from .hook_answers import (
    TEXT,
    Change,
    Occurrence,
    Reply,
    changed,
    invalid,
    is_error_status,
    is_text,
    read_object,
    response_headers,
)
from .protocol import (
    effective_method,
    is_header_name,
    metadata_text,
    parse_metadata,
)

_ANSWER = ("HTTPResponse", "RejectUpload", "RejectTermination", "ChangeFileInfo", "StopUpload")
_RESPONSE = ("StatusCode", "Body", "Header")
_CHANGE = ("ID", "MetaData", "Storage")
# tusd's names of its stores, for Storage.Type; another backend goes by its own name.
_STORE_TYPES = {"filesystem": "filestore", "s3": "s3store"}
# The flag that refuses each event, and tusd's answer when the hook's HTTPResponse
# leaves out a status or body (tusd's ErrUploadRejectedByServer and the like).
_REJECTED = "ERR_UPLOAD_REJECTED: upload creation has been rejected by server\n"
_TERMINATION_REJECTED = (
    "ERR_UPLOAD_TERMINATION_REJECTED: upload termination has been rejected by server\n"
)
_REFUSALS: dict[str, tuple[str, str]] = {
    PRE_CREATE: ("RejectUpload", _REJECTED),
    PRE_TERMINATE: ("RejectTermination", _TERMINATION_REJECTED),
}
_STOPPED = "ERR_UPLOAD_STOPPED: upload has been stopped by server\n"
_REFUSED = "ERR_REJECTED_BY_HOOK: the request has been rejected by a hook\n"
DEFAULT_STATUS = 400
"""tusd's status for a refusal or a stop whose HTTPResponse gives none."""


class TusdDialect:
    reads_progress = True

    def __init__(self, backend: str) -> None:
        self._store_type = _STORE_TYPES.get(backend, backend)

    def document(self, occurrence: Occurrence) -> dict[str, Any]:
        """tusd's hook request. In pre-create the upload has no ID and no Storage yet,
        as with tusd; a deferred length is a Size of 0 with SizeIsDeferred."""
        upload = occurrence.upload
        metadata = parse_metadata(upload.metadata)
        before = occurrence.event == PRE_CREATE
        return {
            "Type": occurrence.event,
            "Event": {
                "Upload": {
                    "ID": "" if before else upload.id,
                    "Size": upload.length or 0,
                    "SizeIsDeferred": upload.length is None,
                    "Offset": upload.offset,
                    "MetaData": {key: metadata_text(metadata, key) for key in metadata},
                    "IsPartial": upload.concat == "partial",
                    "IsFinal": upload.is_final,
                    "PartialUploads": list(occurrence.parts) if upload.is_final else None,
                    "Storage": None if before else self._storage(occurrence.location),
                },
                "HTTPRequest": _request(occurrence.request),
            },
        }

    def _storage(self, location: dict[str, str]) -> dict[str, str]:
        return {"Type": self._store_type, **{key.title(): value for key, value in location.items()}}

    def answer(self, event: str, reply: Reply) -> Change:
        fields = _answer_fields(event, reply)
        response = _response(event, fields.get("HTTPResponse"))
        flag, default_body = _REFUSALS.get(event, ("", _REFUSED))
        for name in ("RejectUpload", "RejectTermination", "StopUpload"):
            _flag(event, fields, name)  # checked everywhere, applied where tusd applies it
        if (flag and _flag(event, fields, flag)) or response.refuses:
            raise response.rejection(HookRejected, default_body)
        change = _change(event, fields.get("ChangeFileInfo"))
        return change if event == PRE_CREATE else Change()

    def stop(self, reply: Reply) -> UploadStopped | None:
        fields = _answer_fields(POST_RECEIVE, reply)
        response = _response(POST_RECEIVE, fields.get("HTTPResponse"))
        if not _flag(POST_RECEIVE, fields, "StopUpload"):
            return None
        stopped = response.rejection(UploadStopped, _STOPPED)
        assert isinstance(stopped, UploadStopped)
        return stopped


def _request(request: web.Request | None) -> dict[str, Any]:
    """tusd's HTTPRequest: every header under its canonical name (as Go's ``http.Header``
    keys them), each value in a list; RemoteAddr is the peer's address and port."""
    if request is None:
        return {"Method": "", "URI": "", "RemoteAddr": "", "Header": None}
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault(canonical_header(name), []).append(_text(value))
    return {
        "Method": effective_method(request),
        "URI": request.raw_path,
        "RemoteAddr": _peer(request),
        "Header": headers,
    }


def canonical_header(name: str) -> str:
    """Go's canonical form of a header name: ``x-request-id`` is ``X-Request-Id``. A name
    that is no token stays as it is, as in Go."""
    if not is_header_name(name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _text(value: str) -> str:
    """A header value as JSON text: bytes that are not UTF-8 (which aiohttp kept as
    surrogates) become U+FFFD, as Go's JSON encoder writes them."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not isinstance(peer, tuple) or len(peer) < 2:
        return request.remote or ""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _answer_fields(event: str, reply: Reply) -> dict[str, Any]:
    """The answer's fields under tusd's names. A non-2xx HTTP status is the hook's failure
    to tusd (its body is no answer), so it never lets the request through here either."""
    if not reply.problem and not 200 <= reply.status < 300:
        raise invalid(event, f"HTTP status {reply.status}: tusd's format answers with a 2xx "
                      "and refuses in its JSON")
    return _fields(event, "", read_object(event, reply) or {}, _ANSWER)


def _fields(event: str, where: str, document: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """An object's fields matched to ``names`` whatever their case, as Go decodes them;
    ``null`` ones left out. A key of no field, or two keys of one field, is invalid."""
    if not isinstance(document, dict):
        raise invalid(event, f"{where or 'the answer'} must be an object")
    by_folded = {name.lower(): name for name in names}
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in document.items():
        name = by_folded.get(key.lower())
        if name is None:
            raise invalid(event, f"unknown key {key[:40]!r}{' in ' + where if where else ''}")
        if name in seen:
            raise invalid(event, f"{name} is given twice")
        seen.add(name)
        if value is not None:
            fields[name] = value
    return fields


def _flag(event: str, fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise invalid(event, f"{name} must be true or false")
    return value


@dataclass(frozen=True)
class _Response:
    """An answer's HTTPResponse: what the client gets if the answer refuses."""

    event: str
    status: int | None
    body: str | None
    headers: dict[str, str]

    @property
    def refuses(self) -> bool:
        return is_error_status(self.status)

    def rejection(self, kind: type[HookRejected], default_body: str) -> HookRejected:
        """tusd's answer for this refusal (status 400, its error line as text), with what
        the hook gave in place of its parts; a status must be one that refuses."""
        if self.status is not None and not self.refuses:
            raise invalid(self.event, f"HTTPResponse.StatusCode {self.status} does not refuse: "
                          "it must be from 400 to 599")
        headers = dict(self.headers)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = TEXT
        body = default_body if self.body is None else self.body
        return kind(self.status or DEFAULT_STATUS, body.encode(), headers)


def _response(event: str, value: Any) -> _Response:
    fields = _fields(event, "HTTPResponse", value or {}, _RESPONSE)
    status = fields.get("StatusCode")
    if status == 0:
        status = None  # Go's zero value: tusd's own status stands
    if status is not None and not (is_error_status(status) or _is_success(status)):
        raise invalid(event, "HTTPResponse.StatusCode must be an integer from 400 to 599 (a "
                      "refusal) or from 200 to 299")
    body = fields.get("Body")
    if body is not None and not is_text(body):
        raise invalid(event, "HTTPResponse.Body must be a string of Unicode characters")
    headers = response_headers(event, "HTTPResponse.Header", fields.get("Header", {}))
    return _Response(event, status, body, headers)


def _is_success(status: Any) -> bool:
    return type(status) is int and 200 <= status <= 299


def _change(event: str, value: Any) -> Change:
    """ChangeFileInfo: a new ID and MetaData. Storage (tusd's filestore may put the bytes
    at another path) has no meaning here: an answer that sets it is invalid."""
    fields = _fields(event, "ChangeFileInfo", value or {}, _CHANGE)
    if fields.get("Storage", {}) != {}:
        raise invalid(event, "ChangeFileInfo.Storage is not supported")
    new_id = fields.get("ID")
    if new_id == "":
        new_id = None  # Go's zero value: the ID stays
    return changed(event, new_id, fields.get("MetaData"),
                   ("ChangeFileInfo.ID", "ChangeFileInfo.MetaData"))

