"""aiotusd's own hook dialect (``hooks_format = "aiotusd"``): the event document of
``docs/hooks.md`` and its answers, ``reject`` and ``change``, with nothing else."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .errors import HookRejected, UploadStopped
from .events import PRE_CREATE
from .hook_answers import (
    Change,
    Occurrence,
    Reply,
    changed,
    invalid,
    is_error_status,
    is_header_value,
    is_text,
    known_keys,
    read_object,
    rejection,
    response_headers,
)
from .protocol import (
    effective_method,
    metadata_text,
    parse_metadata,
)
from .request_ids import REQUEST_ID

_ANSWER_KEYS = frozenset({"reject", "change"})
_REJECT_KEYS = frozenset({"status", "body", "headers"})
_CHANGE_KEYS = frozenset({"id", "metadata"})


class AiotusdDialect:
    reads_progress = False

    def __init__(self, backend: str, forward_headers: tuple[str, ...]) -> None:
        """``forward_headers``: the request headers a document carries (hooks_forward_headers)."""
        self._backend = backend
        self._forward = forward_headers

    def document(self, occurrence: Occurrence) -> dict[str, Any]:
        upload, request = occurrence.upload, occurrence.request
        metadata = parse_metadata(upload.metadata)
        return {
            "id": occurrence.hook_id,
            "type": occurrence.event,
            "upload": {
                "id": upload.id,
                "size": upload.length,
                "offset": upload.offset,
                "metadata": {key: metadata_text(metadata, key) for key in metadata},
                "is_partial": upload.concat == "partial",
                "is_final": upload.is_final,
                "partial_uploads": list(occurrence.parts) if upload.is_final else None,
                "storage": {"type": self._backend, **occurrence.location},
            },
            "request": None if request is None else self._request(request),
        }

    def _request(self, request: web.Request) -> dict[str, Any]:
        headers = {}
        for name in self._forward:
            values = request.headers.getall(name, ())
            if values:
                headers[name] = ", ".join(values)
        return {
            "id": request.get(REQUEST_ID),
            "method": effective_method(request),
            "uri": request.raw_path,
            "remote_addr": request.remote,
            "headers": headers,
        }

    def answer(self, event: str, reply: Reply) -> Change:
        """Whatever the hook sent is understood or refused with :class:`HookFailed`
        (503): no answer reaches the client as anything but a 4xx or 5xx."""
        if not reply.problem and not 200 <= reply.status < 300:
            raise _refusal(event, reply)
        document = read_object(event, reply)
        if document is None:
            return Change()
        known_keys(event, "", document, _ANSWER_KEYS)
        if document.get("reject") is not None:
            raise _rejection(event, document["reject"])
        if event == PRE_CREATE and document.get("change") is not None:
            return _change(document["change"])
        return Change()

    def stop(self, reply: Reply) -> UploadStopped | None:
        """No answer of this dialect stops a body: post events' answers are not read."""
        return None


def _rejection(event: str, reject: Any) -> HookRejected:
    if not isinstance(reject, dict):
        raise invalid(event, "reject must be an object")
    known_keys(event, " in reject", reject, _REJECT_KEYS)
    status = reject.get("status", 403)
    body = reject.get("body", "")
    if not is_error_status(status):
        raise invalid(event, "reject.status must be an integer from 400 to 599")
    if not is_text(body):
        raise invalid(event, "reject.body must be a string of Unicode characters")
    headers = response_headers(event, "reject.headers", reject.get("headers", {}))
    return rejection(body, headers, status)


def _refusal(event: str, reply: Reply) -> HookRejected:
    """A webhook's non-2xx HTTP answer, passed on with its body and ``Content-Type``."""
    if not is_error_status(reply.status):
        raise invalid(event, f"HTTP status {reply.status} is neither 2xx nor 400 to 599")
    if reply.content_type is None:
        return HookRejected(reply.status, reply.body, {})
    if not is_header_value(reply.content_type):
        raise invalid(event, "its Content-Type is not visible ASCII characters")
    return HookRejected(reply.status, reply.body, {"Content-Type": reply.content_type})


def _change(change: Any) -> Change:
    if not isinstance(change, dict):
        raise invalid(PRE_CREATE, "change must be an object")
    known_keys(PRE_CREATE, " in change", change, _CHANGE_KEYS)
    return changed(
        PRE_CREATE, change.get("id"), change.get("metadata"), ("change.id", "change.metadata")
    )
