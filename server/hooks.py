"""Hooks: an upload's life told to an integration, which may veto (pre-) or must hear (post-).

A hook event is one JSON document, the same for every transport: an HTTP POST
to ``hooks_url``, a program (``hooks_command``) that reads it on stdin, or an
async Python callable in this process.

Blocking events (``pre-*``) are asked while the request waits; the answer may
reject the request with an error status (400 to 599), body and headers of the
hook's choosing, and ``pre-create`` may change the new upload's id and metadata.
A hook that cannot be asked fails the request with 503, unless ``hooks_fail_open``;
an answer that has not exactly one meaning always does, since letting the
request through could allow what the hook meant to refuse.

Post events (``post-*``) are not sent here: :meth:`Hooks.post` turns them into
outbox rows that the state store commits together with the change they
report, and :mod:`server.outbox` delivers them.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from storage_backends.base import StorageLocator

from . import __version__
from .config import Settings
from .errors import ConfigError, HookFailed, HookRejected, TusError
from .events import (
    POST_RECEIVE,
    PRE_CREATE,
)
from .protocol import (
    effective_method,
    format_metadata,
    is_header_name,
    is_upload_id,
    metadata_text,
    parse_metadata,
)
from .request_ids import REQUEST_ID
from .signing import Signer
from .state import HookEvent, Upload, Uploads

log = logging.getLogger("aiotusd")


PythonHook = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""In-process hooks: called with the event document, answers like an HTTP receiver's JSON."""

# Headers of a rejection that aiotusd sets itself: the framing of the response and the
# connection's (a hook's would contradict the body sent or break the connection), and
# tus's own (Tus-*, Upload-*), which must tell the client the server's state.
_SERVER_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "content-encoding", "connection", "keep-alive",
     "proxy-connection", "upgrade", "trailer", "te"}
)
_SERVER_HEADER_PREFIXES = ("tus-", "upload-")
MAX_ANSWER_SIZE = 1024 * 1024
"""Bytes of a hook's answer that are read at most: the answer is held in memory."""
# What a command hook wrote to stderr is kept for its last line only.
_STDERR_TAIL = 4096
# Header values a hook may set: visible ASCII, spaces and tabs (RFC 9110 field-vchar
# without obs-text, which clients decode differently or refuse).
_FIELD_VALUE_RE = re.compile(r"[\t\x20-\x7e]*")
# post-receive throttling remembers uploads by id; past this many it forgets the idle ones.
_PROGRESS_ENTRIES = 10_000


class HookCallError(Exception):
    """The hook could not be asked: unreachable, timed out, crashed. The message says why."""


@dataclass(frozen=True)
class Reply:
    """What a transport got back; for post events only the status matters."""

    status: int
    body: bytes
    content_type: str | None = None
    problem: str = ""
    """Why the answer cannot be read, when the transport found out: too long, not JSON."""


def _too_long() -> str:
    return f"longer than {MAX_ANSWER_SIZE} bytes"


class Transport(Protocol):
    target: str
    """Where events go (a URL, a program), for the server's log: never told to a client."""

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        """Send one event; raises :class:`HookCallError` when there is no answer."""

    async def close(self) -> None:
        """Release what the calls opened."""


class HttpTransport:
    def __init__(self, url: str, signer: Signer | None = None) -> None:
        self.target = url
        self._url = url
        self._signer = signer
        self._session: aiohttp.ClientSession | None = None

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"aiotusd/{__version__}",
            "Hook-Name": event,
            "Hook-Id": hook_id,
        }
        if self._signer is not None:
            headers.update(self._signer.headers(hook_id, body))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                answer = await _read_capped(response.content)
                content_type = response.headers.get("Content-Type")
                if answer is None:
                    return Reply(response.status, b"", content_type, _too_long())
                return Reply(response.status, answer, content_type)
        except aiohttp.ClientError as exc:
            reason = exc or type(exc).__name__
            raise HookCallError(f"{self._url} cannot be reached: {reason}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class CommandTransport:
    """tusd's file hooks: ``command <event>`` with the document on stdin and the answer on stdout.

    ``HOOK_NAME`` and ``HOOK_ID`` are in its environment; exit status 0 means it answered.
    """

    def __init__(self, command: str) -> None:
        self.target = command
        self._command = command

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        try:
            process = await asyncio.create_subprocess_exec(
                self._command, event,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "HOOK_NAME": event, "HOOK_ID": hook_id},
            )
        except OSError as exc:
            raise HookCallError(f"{self._command} cannot be run: {exc.strerror}") from None
        assert process.stdin and process.stdout and process.stderr
        try:
            # Read to the end (within hooks_timeout) but keep a bounded part: a program
            # stopped for writing too much would look as if it had crashed.
            _, (stdout, too_long), (stderr, _) = await asyncio.gather(
                _feed(process.stdin, body),
                _drain(process.stdout, MAX_ANSWER_SIZE),
                _drain(process.stderr, _STDERR_TAIL, tail=True),
            )
            await process.wait()
        finally:
            if process.returncode is None:  # timed out, or the server is stopping
                process.kill()
                await process.wait()
        if process.returncode != 0:
            last_line = stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise HookCallError(
                f"{self._command} exited with status {process.returncode}"
                + (f": {last_line[0]}" if last_line else "")
            )
        return Reply(200, b"", problem=_too_long()) if too_long else Reply(200, stdout)

    async def close(self) -> None:
        return None


async def _read_capped(stream: aiohttp.StreamReader) -> bytes | None:
    """A response body of at most :data:`MAX_ANSWER_SIZE` bytes; None if it is longer
    (read no further than that: the rest may never end)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_SIZE:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    """Write the event to a command; one that exits without reading it all may still answer."""
    try:
        stdin.write(body)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    stdin.close()


async def _drain(stream: asyncio.StreamReader, keep: int, tail: bool = False) -> tuple[bytes, bool]:
    """Read ``stream`` to its end; its first (or last) ``keep`` bytes, and whether there were more."""
    kept = b""
    more = False
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > keep:
            more = True
            kept = kept[-keep:] if tail else kept[:keep]
    return kept, more


class PythonTransport:
    def __init__(self, hook: PythonHook) -> None:
        self.target = f"the Python hook {getattr(hook, '__qualname__', hook)!r}"
        self._hook = hook

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        try:
            answer = await self._hook(json.loads(body))
        except Exception as exc:
            raise HookCallError(f"the Python hook raised {type(exc).__name__}: {exc}") from None
        if answer is None:
            return Reply(200, b"")
        # Read as the JSON answer of the other transports. What has no JSON form
        # (sets, NaN, cycles, too deep) is an answer that cannot be read, not a failure
        # to answer: it must not be let through by hooks_fail_open.
        try:
            encoded = json.dumps(answer, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            return Reply(200, b"", problem=f"no JSON form: {exc}")
        if len(encoded) > MAX_ANSWER_SIZE:
            return Reply(200, b"", problem=_too_long())
        return Reply(200, encoded)

    async def close(self) -> None:
        return None


def load_python_hook(spec: str) -> PythonHook:
    """The callable named ``module:attribute`` (the attribute may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"hooks_python {spec!r} must be module:attribute")
    try:
        target: Any = importlib.import_module(module_name)
        for name in attribute.split("."):
            target = getattr(target, name)
    except Exception as exc:  # whatever importing the module raised
        raise ConfigError(f"cannot load hooks_python {spec!r}: {exc}") from None
    if not callable(target):
        raise ConfigError(f"hooks_python {spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def make_transport(settings: Settings, python_hook: PythonHook | None = None) -> Transport | None:
    """The one transport the settings (or embedding code) name; None when hooks are off."""
    chosen = [
        name for name, value in (
            ("hooks_url", settings.hooks.url),
            ("hooks_command", settings.hooks.command),
            ("hooks_python", settings.hooks.python),
            ("create_app(hooks=...)", python_hook),
        ) if value
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} are both set; hooks go to one of them")
    if settings.hooks.url:
        return HttpTransport(settings.hooks.url, _signer(settings))
    if settings.hooks.command:
        if shutil.which(settings.hooks.command) is None:
            raise ConfigError(f"hooks_command {settings.hooks.command!r} is not an executable file")
        return CommandTransport(settings.hooks.command)
    if settings.hooks.python:
        python_hook = load_python_hook(settings.hooks.python)
    return None if python_hook is None else PythonTransport(python_hook)


def _signer(settings: Settings) -> Signer | None:
    """How webhook requests are signed (:mod:`server.signing`); None without a secret."""
    if not settings.hooks.secret:
        if settings.hooks.signing != "aiotusd":
            raise ConfigError(f"hooks_signing = {settings.hooks.signing} needs a hooks_secret")
        return None
    return Signer(settings.hooks.secret, settings.hooks.signing)


@dataclass(frozen=True)
class Change:
    """What a ``pre-create`` hook changed of the new upload (None: left as it was)."""

    id: str | None = None
    metadata: str | None = None
    """As an ``Upload-Metadata`` header."""


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


def _document(event: str, body: bytes) -> dict[str, Any] | None:
    """The JSON object a hook answered (None for an empty answer), or :class:`HookFailed`."""
    if not body.strip():
        return None
    try:
        document = json.loads(
            body.decode(), object_pairs_hook=_unique_keys, parse_constant=_no_constant
        )
    except _Unreadable as exc:
        raise _invalid(event, str(exc)) from None
    except UnicodeDecodeError:
        raise _invalid(event, "not UTF-8") from None
    except RecursionError:
        raise _invalid(event, "JSON nested too deeply") from None
    except ValueError:  # not JSON, or a number of more digits than Python converts
        raise _invalid(event, "not JSON") from None
    if not isinstance(document, dict):
        raise _invalid(event, "not a JSON object")
    return document


def _is_text(value: Any) -> bool:
    """A string that UTF-8 encodes: JSON's ``\\ud800`` escapes make lone surrogates, which don't."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_header_value(value: Any) -> bool:
    return isinstance(value, str) and _FIELD_VALUE_RE.fullmatch(value) is not None


def _is_error_status(status: Any) -> bool:
    """The statuses a hook may refuse with: 4xx and 5xx, whose meaning every client knows
    (a refusal). 1xx, 2xx and 3xx would tell the client that the request went on, was
    done, or should be sent elsewhere; 600 and above are not HTTP."""
    return type(status) is int and 400 <= status <= 599


def _invalid(event: str, why: str) -> HookFailed:
    return HookFailed(f"{event} hook gave an invalid answer: {why}")


def _response_headers(event: str, headers: Any) -> dict[str, str]:
    """A rejection's headers as they are sent: valid, each once, those aiotusd sets left out."""
    if not isinstance(headers, dict) or not all(
        is_header_name(name) and _is_header_value(value) for name, value in headers.items()
    ):
        raise _invalid(
            event, "reject.headers must map header names to values of visible ASCII characters"
        )
    if len({name.lower() for name in headers}) != len(headers):
        raise _invalid(event, "reject.headers names a header twice")
    return {
        name: value for name, value in headers.items()
        if name.lower() not in _SERVER_HEADERS
        and not name.lower().startswith(_SERVER_HEADER_PREFIXES)
    }


_ANSWER_KEYS = frozenset({"reject", "change"})
_REJECT_KEYS = frozenset({"status", "body", "headers"})
_CHANGE_KEYS = frozenset({"id", "metadata"})


def _known_keys(event: str, where: str, document: dict[str, Any], known: frozenset[str]) -> None:
    """Refuse a key the answer format does not have: the hook meant something by it (a
    receiver written for tusd says ``RejectUpload``), and going on without knowing what
    could let through a request it meant to refuse."""
    unknown = sorted(set(document) - known)
    if unknown:
        raise _invalid(event, f"unknown key {unknown[0][:40]!r}{where}")


def _rejection(event: str, reject: Any) -> HookRejected:
    if not isinstance(reject, dict):
        raise _invalid(event, "reject must be an object")
    _known_keys(event, " in reject", reject, _REJECT_KEYS)
    status = reject.get("status", 403)
    body = reject.get("body", "")
    if not _is_error_status(status):
        raise _invalid(event, "reject.status must be an integer from 400 to 599")
    if not _is_text(body):
        raise _invalid(event, "reject.body must be a string of Unicode characters")
    kept = _response_headers(event, reject.get("headers", {}))
    if body and not any(name.lower() == "content-type" for name in kept):
        kept["Content-Type"] = "text/plain; charset=utf-8"
    return HookRejected(status, body.encode(), kept)


def _refusal(event: str, reply: Reply) -> HookRejected:
    """A webhook's non-2xx HTTP answer, passed on with its body and ``Content-Type``."""
    if not _is_error_status(reply.status):
        raise _invalid(event, f"HTTP status {reply.status} is neither 2xx nor 400 to 599")
    if reply.content_type is None:
        return HookRejected(reply.status, reply.body, {})
    if not _is_header_value(reply.content_type):
        raise _invalid(event, "its Content-Type is not visible ASCII characters")
    return HookRejected(reply.status, reply.body, {"Content-Type": reply.content_type})


def _change(change: Any) -> Change:
    if not isinstance(change, dict):
        raise _invalid(PRE_CREATE, "change must be an object")
    _known_keys(PRE_CREATE, " in change", change, _CHANGE_KEYS)
    new_id = change.get("id")
    if new_id is not None and not (isinstance(new_id, str) and is_upload_id(new_id)):
        raise _invalid(PRE_CREATE, "change.id is not a valid upload id")
    metadata = change.get("metadata")
    if metadata is None:
        return Change(new_id)
    if not isinstance(metadata, dict) or not all(_is_text(value) for value in metadata.values()):
        raise _invalid(PRE_CREATE, "change.metadata must map keys to strings")
    try:
        return Change(new_id, format_metadata(metadata))
    except TusError as exc:
        raise _invalid(PRE_CREATE, exc.reason) from None


def _answer(event: str, reply: Reply) -> Change:
    """Read a blocking hook's reply: nothing, a change, or a rejection (raised).

    Whatever the hook sent is understood or refused here with :class:`HookFailed`
    (503): no answer reaches the client as anything but a 4xx or 5xx.
    """
    if reply.problem:
        raise _invalid(event, reply.problem)
    if not 200 <= reply.status < 300:
        raise _refusal(event, reply)
    document = _document(event, reply.body)
    if document is None:
        return Change()
    _known_keys(event, "", document, _ANSWER_KEYS)
    if document.get("reject") is not None:
        raise _rejection(event, document["reject"])
    if event == PRE_CREATE and document.get("change") is not None:
        return _change(document["change"])
    return Change()


class Hooks:
    """The hooks of one running server; with no transport, no event fires."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None,
        store: Uploads,
        locator: StorageLocator | None,
    ) -> None:
        """``locator`` says where an upload's bytes are, for events' ``storage``."""
        self._settings = settings
        self._transport = transport
        self._store = store
        self._locator = locator
        self.events = frozenset(settings.hooks.events if transport else ())
        """The events that fire."""
        self._forward = settings.hooks.forward_headers
        self._progress_sent: dict[str, float] = {}

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        """One attempt to send an event, bounded by ``hooks_timeout``."""
        assert self._transport is not None
        timeout = self._settings.hooks.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._transport.call(event, hook_id, body)
        except TimeoutError:
            raise HookCallError(
                f"{self._transport.target} gave no answer within {timeout:g} s"
            ) from None

    async def before(
        self, event: str, upload: Upload, request: web.Request, parts: tuple[str, ...] = ()
    ) -> Change:
        """Ask the blocking hook ``event``, if it fires.

        Raises :class:`HookRejected` when the hook says no, :class:`HookFailed`
        when it cannot be asked (unless ``hooks_fail_open``) or answers nonsense.
        """
        if event not in self.events:
            return Change()
        assert self._transport is not None
        hook = await self._event(event, upload, request, parts)
        try:
            reply = await self.call(event, hook.id, hook.payload)
        except HookCallError as exc:
            if not self._settings.hooks.fail_open:
                raise HookFailed(f"{event} hook failed: {exc}") from None
            log.warning("%s hook failed, letting the request through: %s", event, exc)
            return Change()
        try:
            return _answer(event, reply)
        except HookFailed as exc:
            raise HookFailed(f"{exc.reason} (from {self._transport.target})") from None

    async def post(
        self, event: str, upload: Upload, request: web.Request | None, parts: tuple[str, ...] = ()
    ) -> tuple[HookEvent, ...]:
        """The outbox event for ``event`` if it fires, for the store to commit with the change."""
        if event not in self.events:
            return ()
        return (await self._event(event, upload, request, parts),)

    async def progress(self, upload: Upload, request: web.Request) -> tuple[HookEvent, ...]:
        """A post-receive event if one is due: one per ``hooks_progress_interval`` per upload."""
        if POST_RECEIVE not in self.events:
            return ()
        now = time.monotonic()
        interval = self._settings.hooks.progress_interval
        last = self._progress_sent.get(upload.id)
        if last is not None and now - last < interval:
            return ()
        if len(self._progress_sent) >= _PROGRESS_ENTRIES:
            self._progress_sent = {
                key: sent for key, sent in self._progress_sent.items() if now - sent < interval
            }
        self._progress_sent[upload.id] = now
        return await self.post(POST_RECEIVE, upload, request)

    async def _event(
        self, event: str, upload: Upload, request: web.Request | None, parts: tuple[str, ...]
    ) -> HookEvent:
        """The event with a new id and its JSON document, as every transport gets it."""
        if upload.is_final and not parts:
            parts = await self._store.parts(upload.id)
        metadata = parse_metadata(upload.metadata)
        storage: dict[str, Any] = {"type": self._settings.storage.backend}
        if self._locator is not None:
            storage.update(self._locator.locate(upload.id))
        hook_id = str(uuid.uuid4())
        document = {
            "id": hook_id,
            "type": event,
            "upload": {
                "id": upload.id,
                "size": upload.length,
                "offset": upload.offset,
                "metadata": {key: metadata_text(metadata, key) for key in metadata},
                "is_partial": upload.concat == "partial",
                "is_final": upload.is_final,
                "partial_uploads": list(parts) if upload.is_final else None,
                "storage": storage,
            },
            "request": None if request is None else self._request(request),
        }
        return HookEvent(hook_id, upload.id, event, json.dumps(document).encode())

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
