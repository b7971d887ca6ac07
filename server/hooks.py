"""Hooks: an upload's life told to an integration, which may veto (pre-) or must hear (post-).

A hook event is one JSON document, the same for every transport: an HTTP POST
to ``hooks_url``, a program (``hooks_command``, or tusd's file hooks in ``hooks_dir``)
that reads it on stdin, or an async Python callable in this process. Its dialect
(aiotusd's own, or tusd's: ``hooks_format``) says what the document holds and how the
answer reads; one is chosen at start (:func:`make_dialect`).

Blocking events (``pre-*``) are asked while the request waits; the answer may
reject the request with an error status (400 to 599), body and headers of the
hook's choosing, and ``pre-create`` may change the new upload's id and metadata.
A hook that cannot be asked fails the request with 503, unless ``hooks_fail_open``;
an answer that has not exactly one meaning always does, since letting the
request through could allow what the hook meant to refuse.

Post events (``post-*``) are not sent here: :meth:`Hooks.post` turns them into
outbox rows that the state store commits together with the change they
report, and :mod:`server.outbox` delivers them. The one exception is a dialect
whose post-receive answer may stop a body (tusd's ``StopUpload``): that event is
also sent here while a body streams, to read its answer (:meth:`Hooks.ask_progress`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from storage_backends.base import StorageLocator

from . import __version__
from .config import Settings
from .errors import ConfigError, HookFailed, UploadStopped
from .events import POST_RECEIVE
from .hook_answers import Change, Dialect, Occurrence, Reply
from .hooks_aiotusd import AiotusdDialect
from .hooks_tusd import TusdDialect
from .signing import Signer
from .state import HookEvent, Upload, Uploads

log = logging.getLogger("aiotusd")


PythonHook = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""In-process hooks: called with the event document, answers like an HTTP receiver's JSON."""

MAX_ANSWER_SIZE = 1024 * 1024
"""Bytes of a hook's answer that are read at most: the answer is held in memory."""
# What a command hook wrote to stderr is kept for its last line only.
_STDERR_TAIL = 4096
# post-receive throttling remembers uploads by id; past this many it forgets the idle ones.
_PROGRESS_ENTRIES = 10_000


class HookCallError(Exception):
    """The hook could not be asked: unreachable, timed out, crashed. The message says why."""


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
    """A program per event: ``command <event>`` with the document on stdin and the answer on
    stdout.

    ``HOOK_NAME`` and ``HOOK_ID`` are in its environment; exit status 0 means it answered.
    """

    def __init__(self, command: str) -> None:
        self.target = command
        self._command = command

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        env = {**os.environ, "HOOK_NAME": event, "HOOK_ID": hook_id}
        return await run_program([self._command, event], env, body)

    async def close(self) -> None:
        return None


class DirTransport:
    """tusd's file hooks (``hooks_dir``): the program ``DIR/<event>``, run in ``DIR``, with
    tusd's hook request on stdin, ``TUS_ID``, ``TUS_OFFSET`` and ``TUS_SIZE`` in its
    environment, and tusd's hook response on stdout.

    An event whose file does not exist is no one's business, as with tusd: it answers
    nothing (a blocking one goes on, a post one is delivered). A file that is there but
    cannot be run is a hook that fails.
    """

    def __init__(self, directory: str) -> None:
        self.target = directory
        self._directory = Path(directory).absolute()

    async def call(self, event: str, hook_id: str, body: bytes) -> Reply:
        program = self._directory / event
        if not program.exists():
            return Reply(200, b"")
        try:
            upload = json.loads(body)["Event"]["Upload"]
        except (ValueError, KeyError, TypeError):
            # An event the outbox kept from before hooks_dir was set, in aiotusd's format:
            # a tusd script would misread it. It fails, and ends as a dead event.
            raise HookCallError(f"{program}: the event is not in tusd's format") from None
        env = {
            **os.environ, "HOOK_NAME": event, "HOOK_ID": hook_id, "TUS_ID": upload["ID"],
            "TUS_OFFSET": str(upload["Offset"]), "TUS_SIZE": str(upload["Size"]),
        }
        return await run_program([str(program)], env, body, cwd=self._directory)

    async def close(self) -> None:
        return None


async def run_program(
    argv: list[str], env: dict[str, str], body: bytes, cwd: Path | None = None
) -> Reply:
    """Run a hook program with ``body`` on its stdin; its answer if it exits with 0."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
        )
    except OSError as exc:
        raise HookCallError(f"{argv[0]} cannot be run: {exc.strerror}") from None
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
            f"{argv[0]} exited with status {process.returncode}"
            + (f": {last_line[0]}" if last_line else "")
        )
    return Reply(200, b"", problem=_too_long()) if too_long else Reply(200, stdout)


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
            ("hooks_dir", settings.hooks.dir),
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
    if settings.hooks.dir:
        if not Path(settings.hooks.dir).is_dir():
            raise ConfigError(f"hooks_dir {settings.hooks.dir!r} is not a directory")
        return DirTransport(settings.hooks.dir)
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


def make_dialect(settings: Settings) -> Dialect:
    """The dialect of every event and answer: tusd's for ``hooks_dir``, which runs tusd's
    file hooks, and for ``hooks_format = "tusd"``; aiotusd's own otherwise."""
    if settings.hooks.dir or settings.hooks.format == "tusd":
        return TusdDialect(settings.storage.backend)
    return AiotusdDialect(settings.storage.backend, settings.hooks.forward_headers)


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
        self._dialect = make_dialect(settings)
        self.events = frozenset(settings.hooks.events if transport else ())
        """The events that fire."""
        self._progress_sent: dict[str, float] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}
        """post-receive answers awaited while a body streams, by upload: one at a time each."""

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
            return self._dialect.answer(event, reply)
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

    def ask_progress(
        self, events: tuple[HookEvent, ...], on_stop: Callable[[UploadStopped], None]
    ) -> None:
        """Also send a post-receive among ``events``, recorded while a body streams, directly,
        to read its answer (a dialect whose answers can stop a body: tusd's ``StopUpload``).

        The outbox still delivers the event, so that every recorded offset is reported at
        least once; this copy carries the same ``Hook-Id``, for a receiver to act once.
        It runs beside the body, never holding it up, one at a time per upload (a due
        event while one is awaited is not sent this way) and within ``hooks_timeout``;
        :meth:`stop_asking` ends it with the body. ``on_stop`` gets the answer that stops
        the body; a hook that fails or answers nonsense is logged and stops nothing.
        """
        if not self._dialect.reads_progress:
            return
        for event in events:
            if event.type == POST_RECEIVE and event.upload_id not in self._asking:
                task = asyncio.create_task(self._ask_progress(event, on_stop))
                self._asking[event.upload_id] = task
                task.add_done_callback(functools.partial(self._asked, event.upload_id))

    def _asked(self, upload_id: str, task: asyncio.Task[None]) -> None:
        if self._asking.get(upload_id) is task:
            del self._asking[upload_id]

    async def _ask_progress(
        self, event: HookEvent, on_stop: Callable[[UploadStopped], None]
    ) -> None:
        assert self._transport is not None
        try:
            stopped = self._dialect.stop(await self.call(event.type, event.id, event.payload))
        except (HookCallError, HookFailed) as exc:
            log.warning("post-receive hook of upload %s (%s): %s", event.upload_id,
                        self._transport.target, exc)
            return
        if stopped is not None:
            log.info("post-receive hook stops the body of upload %s", event.upload_id)
            on_stop(stopped)

    def stop_asking(self, upload_id: str) -> None:
        """The body of ``upload_id`` ended: an answer that comes now has nothing to stop."""
        task = self._asking.pop(upload_id, None)
        if task is not None:
            task.cancel()

    async def _event(
        self, event: str, upload: Upload, request: web.Request | None, parts: tuple[str, ...]
    ) -> HookEvent:
        """The event with a new id and its JSON document, as every transport gets it."""
        if upload.is_final and not parts:
            parts = await self._store.parts(upload.id)
        location = {} if self._locator is None else self._locator.locate(upload.id)
        hook_id = str(uuid.uuid4())
        occurrence = Occurrence(event, hook_id, upload, parts, location, request)
        document = self._dialect.document(occurrence)
        return HookEvent(hook_id, upload.id, event, json.dumps(document).encode())
