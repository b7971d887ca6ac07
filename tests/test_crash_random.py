"""Seeded random crash test: SIGKILL a real aiotusd at random moments, restart, check invariants.

A small fleet of realistic clients runs against a real ``python -m server`` process:
PATCHes of random sizes, creation-with-upload, deferred lengths (``Upload-Defer-Length:
1``, the length declared on some later PATCH, possibly the last, possibly an empty one),
bodies with ``Upload-Checksum`` (all or nothing), concatenations (the final POSTed before
or after its parts finish), terminations (a DELETE at a random moment, of plain uploads
and of partials, whose unfinished finals go with them), and post-hooks whose receiver
refuses every connection, so that every event stays in the hook outbox. At a random kill
point the server gets SIGKILL:

* after a random number of body bytes went out across all clients,
* after a random delay,
* right after a chosen request went out, plus a random delay of a few milliseconds:
  the last body bytes of an upload (the kill lands in its finish, maybe its assembly),
  the POST of a final upload (the concatenation), or a DELETE (the termination).

The server is then started again on the same port and data directory, and, before any
request, its database is read (read-only, beside the running server):

* every upload row has exactly one post-create event, its first; a post-finish event
  exactly if ``completed_at`` is set, and a post-terminate event exactly if it was
  terminated, as its last; finals have no post-receive events; every event names an
  existing upload, and none reports an offset above the upload's recorded offset (a
  post-finish reports exactly its length);
* every upload whose creation the client saw acknowledged has its row; one whose DELETE
  was answered 204 is terminated; one the client saw finished is finished; one whose
  length was acknowledged has it; an active one records every acknowledged byte.

Then for every upload whose creation the client saw acknowledged:

* every acknowledged byte is still there: HEAD's offset >= the largest ``Upload-Offset``
  of a 201/204 the client received before the kill;
* a body with ``Upload-Checksum`` whose answer never came is all or nothing: HEAD's offset
  is where the body started or where it ended;
* HEAD never reports more than is stored: for the filesystem, the offset <= the data
  file's size and the file's first ``offset`` bytes are the source's; for S3, the
  offset <= the bytes in S3 parts, tail objects and the finished object;
* HEAD's ``Upload-Length``, when present, is the source's length, and is present once
  a request that declared it was acknowledged;
* an upload whose DELETE was answered 204 answers 404 or 410 and its bytes are gone
  (no data file; no S3 object, tail object, multipart upload or spool directory); one
  whose DELETE was not answered is either whole (as above) or gone;
* a final upload whose parts are all finished reports itself finished, and one whose
  partial was terminated is either finished or gone.

The clients then go on from HEAD's offsets in the next round, so one upload may see
several kills. At the end every upload is resumed to its end and its bytes (GET and
stored) must equal the source; finished concatenations must equal their parts and
survive the termination of a part. Last, the server runs with ``gone_retention = 0``:
the bytes of every terminated upload must go, however its termination was cut short.
The RNG is seeded (``CRASH_SEED`` overrides it), so a failing run can be replayed
(the kill moments depend on timing too, so a replay is close, not exact). Both
backends run ``KILLS`` kill points each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.markers import WORKERS, backend_params
from support.s3 import s3_args
from support.storage import payload
from support.waiting import poll

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KIB = 1024
MIB = 1024 * KIB
HOST = "127.0.0.1"
SEED = int(os.environ.get("CRASH_SEED", "20261125"))
KILLS = 24
MAX_TEST_SECONDS = 90.0
"""Per backend: a bound on the whole run, far above its usual 25-60 s."""
HOOK_EVENTS = ("post-create", "post-receive", "post-finish", "post-terminate")


# --- a minimal HTTP/1.1 client over asyncio streams that counts what it sent ----------


class ServerGone(Exception):
    """The connection broke: the server was killed under the request (or a DELETE of the
    upload took the request's lock over and cut its body off)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Traffic:
    """Bytes of request bodies sent so far, and callbacks fired as requests go out."""

    def __init__(self) -> None:
        self.body_bytes = 0
        self.changed = asyncio.Event()

    def sent(self, count: int) -> None:
        self.body_bytes += count
        self.changed.set()


async def _read_response(reader: asyncio.StreamReader, method: str, timeout: float) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = b""
    length = int(headers.get("content-length", "0"))
    if method != "HEAD" and length:
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return Response(int(status_line.split(" ")[1]), headers, body)


async def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    traffic: Traffic | None = None,
    piece: int = 64 * KIB,
    on_sent: asyncio.Event | None = None,
    timeout: float = 15.0,
) -> Response:
    """One request on a fresh connection; :class:`ServerGone` when the connection breaks."""
    all_headers = {"Host": f"{HOST}:{port}", "Tus-Resumable": "1.0.0", "Connection": "close",
                   **(headers or {})}
    if body or method in ("PATCH", "POST"):
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in all_headers.items()
    ) + "\r\n"
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(head.encode("latin-1"))
        for start in range(0, len(body), piece):
            chunk = body[start : start + piece]
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), timeout)
            if traffic is not None:
                traffic.sent(len(chunk))
            await asyncio.sleep(0)  # let the kill trigger look at the traffic
        await asyncio.wait_for(writer.drain(), timeout)
        if on_sent is not None:
            on_sent.set()
        return await _read_response(reader, method, timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        raise ServerGone(f"{method} {path}: {exc!r}") from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)


UNAVAILABLE = {"count": 0}
"""503 answers seen (the S3 endpoint failing a request); each was retried."""


async def head(port: int, path: str, deadline: float = 20.0) -> Response:
    """HEAD, retried like a tus client would while the server answers 503 (bounded)."""
    give_up = time.monotonic() + deadline
    while True:
        response = await request(port, "HEAD", path)
        if response.status != 503 or time.monotonic() > give_up:
            return response
        UNAVAILABLE["count"] += 1
        await asyncio.sleep(0.2)


def path_of(response: Response) -> str:
    assert "location" in response.headers, response
    location = response.headers["location"]
    return location[location.index("/files/") :]


def id_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


def sha1_header(body: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()


# --- uploads the clients drive ----------------------------------------------------------


@dataclass
class Upload:
    """One upload as its client knows it."""

    data: bytes
    partial: bool = False
    deferred: bool = False
    """Created with ``Upload-Defer-Length: 1``; a later PATCH declares the length."""
    checksummed: bool = False
    """Every body carries ``Upload-Checksum``, so it is stored whole or not at all."""
    doomed: bool = False
    """Gets a DELETE at a random moment."""
    stop_at: int | None = None
    """Where the client of a doomed upload gives up, to wait for the DELETE (None: at the end)."""
    path: str | None = None
    acked: int = 0
    """The largest Upload-Offset of a 201/204 the client received (or of a HEAD)."""
    length_known: bool = True
    """The server acknowledged the length: at creation, on a PATCH, or in a HEAD."""
    checksum_body: tuple[int, int] | None = None
    """Start and end of a body with ``Upload-Checksum`` sent but never answered."""
    delete_sent: bool = False
    deleted: bool = False
    """A DELETE was answered 204."""
    gone: bool = False
    """Terminated: a DELETE was answered 204, or the server answered 404/410."""
    created: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the creation was acknowledged."""

    @property
    def done(self) -> bool:
        return self.length_known and self.acked == len(self.data)

    @property
    def wants_more(self) -> bool:
        """Its client has more to do: the creation, bytes before ``stop_at``, or up to the finish."""
        if self.path is None:
            return True
        if self.gone or self.done:
            return False
        return self.stop_at is None or self.acked < self.stop_at


@dataclass
class Final:
    """A concatenation: its parts, and the final upload once its POST was answered."""

    parts: list[Upload]
    early: bool = False
    """POST the final as soon as its parts exist, before their bytes are in."""
    path: str | None = None
    refused: bool = False
    """Its POST was answered 400: a part was terminated first."""
    complete: bool = False
    """A HEAD said it was finished."""
    gone: bool = False
    """It went with a terminated part."""

    @property
    def data(self) -> bytes:
        return b"".join(part.data for part in self.parts)

    @property
    def settled(self) -> bool:
        """Nothing more to drive or terminate: it can leave the fleet."""
        return (self.refused or self.gone or self.complete) and all(
            part.gone or (part.done and not part.doomed) for part in self.parts
        )


@dataclass
class Fleet:
    rng: random.Random
    port: int
    traffic: Traffic
    view: Any
    uploads: list[Upload] = field(default_factory=list)
    finals: list[Final] = field(default_factory=list)
    every_upload: list[Upload] = field(default_factory=list)
    """Every upload and part ever made, checked against the database after each restart."""
    every_final: list[Final] = field(default_factory=list)
    finish_sent: asyncio.Event = field(default_factory=asyncio.Event)
    final_sent: asyncio.Event = field(default_factory=asyncio.Event)
    delete_sent: asyncio.Event = field(default_factory=asyncio.Event)
    killed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set from the kill to the restart: DELETEs not sent yet are not sent this round."""
    seed_counter: int = 0

    def new_data(self, low: int, high: int) -> bytes:
        self.seed_counter += 1
        return payload(self.rng.randint(low, high), seed=SEED * 1000 + self.seed_counter)

    def add(self, upload: Upload) -> Upload:
        self.every_upload.append(upload)
        return upload

    def ack(self, upload: Upload, response: Response) -> None:
        assert response.status in (201, 204), (response.status, response.body)
        offset = int(response.headers["upload-offset"])
        assert offset >= upload.acked, "an acknowledged offset went backwards"
        upload.acked = offset

    async def create(self, upload: Upload) -> None:
        """POST, with a first body in about half the cases (creation-with-upload)."""
        headers = {"Upload-Metadata": "filename Y3Jhc2guYmlu"}
        if upload.deferred:
            headers["Upload-Defer-Length"] = "1"
            upload.length_known = False
        else:
            headers["Upload-Length"] = str(len(upload.data))
        if upload.partial:
            headers["Upload-Concat"] = "partial"
        body = b""
        if self.rng.random() < 0.5:
            headers["Content-Type"] = "application/offset+octet-stream"
            body = upload.data[: self.rng.randint(0, len(upload.data))]
            if upload.checksummed:
                headers["Upload-Checksum"] = sha1_header(body)
        last = bool(body) and len(body) == len(upload.data) and not upload.deferred
        response = await request(
            self.port, "POST", "/files/", headers, body, traffic=self.traffic,
            piece=self.rng.choice([16 * KIB, 64 * KIB, 256 * KIB]),
            on_sent=self.finish_sent if last else None,
        )
        upload.path = path_of(response)
        self.ack(upload, response)
        upload.created.set()

    async def patch_to_end(self, upload: Upload) -> None:
        """PATCH from the acknowledged offset in chunks of random sizes; a deferred length
        goes on a random PATCH, at the latest on an empty one once every byte is in."""
        assert upload.path is not None
        while upload.wants_more:
            size = self.rng.choice([1, 1000, 32 * KIB, 200 * KIB, 700 * KIB, 3 * MIB])
            goal = len(upload.data) if upload.stop_at is None else upload.stop_at
            end = min(goal, upload.acked + size)
            body = upload.data[upload.acked : end]
            headers = {"Content-Type": "application/offset+octet-stream",
                       "Upload-Offset": str(upload.acked)}
            declare = not upload.length_known and (
                upload.acked == len(upload.data)
                or self.rng.random() < (0.6 if end == len(upload.data) else 0.3)
            )
            if declare:
                headers["Upload-Length"] = str(len(upload.data))
            if upload.checksummed:
                headers["Upload-Checksum"] = sha1_header(body)
                upload.checksum_body = (upload.acked, end)
            response = await request(
                self.port, "PATCH", upload.path, headers, body, traffic=self.traffic,
                piece=self.rng.choice([8 * KIB, 64 * KIB, 256 * KIB]),
                on_sent=self.finish_sent
                if end == len(upload.data) and (upload.length_known or declare) else None,
            )
            upload.checksum_body = None
            if response.status in (404, 410):
                assert upload.delete_sent, (upload.path, response)
                upload.gone = True
                return
            if response.status in (409, 503):
                # 409: the server kept more than it acknowledged; 503: S3 failed, try again.
                if response.status == 503:
                    UNAVAILABLE["count"] += 1
                    assert UNAVAILABLE["count"] < 100, "the server keeps answering 503"
                    await asyncio.sleep(0.2)
                await self.refresh(upload)
                continue
            self.ack(upload, response)
            upload.length_known = upload.length_known or declare

    async def refresh(self, upload: Upload) -> None:
        assert upload.path is not None
        response = await head(self.port, upload.path)
        if response.status in (404, 410) and upload.delete_sent:
            upload.gone = True
            return
        assert response.status == 200, response
        offset = int(response.headers["upload-offset"])
        assert offset >= upload.acked
        upload.acked = offset
        if "upload-length" in response.headers:
            upload.length_known = True
        else:
            assert not upload.length_known, f"{upload.path}: its length was acknowledged: {response}"

    async def drive(self, upload: Upload) -> None:
        if upload.path is None:
            await self.create(upload)
        await self.patch_to_end(upload)

    async def drive_final(self, final: Final) -> None:
        """Upload the parts, then POST the final; or, for an early final, POST it once the
        parts exist, so that the assembly runs in the finish of the last part."""
        if final.early:
            for part in final.parts:
                if part.path is None:
                    await self.create(part)
            await self.post_final(final)
        # Every part's client runs to its end (or to the kill) before this one goes on.
        results = await asyncio.gather(
            *(self.drive(part) for part in final.parts if part.wants_more),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.post_final(final)

    async def post_final(self, final: Final) -> None:
        if final.path is not None or final.refused:
            return
        concat = "final;" + " ".join(part.path or "" for part in final.parts)
        response = await request(self.port, "POST", "/files/", {"Upload-Concat": concat},
                                 on_sent=self.final_sent)
        if response.status == 400:
            assert any(part.delete_sent for part in final.parts), response
            final.refused = True
            return
        assert response.status == 201, response
        final.path = path_of(response)

    async def before_kill(self, event: asyncio.Event) -> bool:
        """Wait for ``event``; False if the server is killed first."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.killed.wait())}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        return not self.killed.is_set()

    async def terminate(self, upload: Upload, delay: float) -> None:
        """DELETE the upload ``delay`` seconds after its creation was acknowledged, unless
        the server is killed first."""
        if not await self.before_kill(upload.created):
            return
        await asyncio.sleep(delay)
        if upload.gone or self.killed.is_set():
            return
        assert upload.path is not None
        upload.delete_sent = True
        response = await request(self.port, "DELETE", upload.path, on_sent=self.delete_sent)
        assert response.status == 204, (upload.path, response)
        upload.deleted = upload.gone = True


# --- what a backend stores -------------------------------------------------------------


class FilesystemView:
    """The bytes of upload ``id`` are the file ``{data_dir}/{id}``."""

    name = "filesystem"
    big_uploads = 0.0

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def check_stored(self, upload_id: str, offset: int, data: bytes) -> None:
        stored = self.data_dir / upload_id
        size = stored.stat().st_size
        assert offset <= size, f"{upload_id}: HEAD says {offset}, only {size} bytes stored"
        prefix = (await asyncio.to_thread(stored.read_bytes))[:offset]
        assert prefix == data[:offset], f"{upload_id}: stored bytes differ"

    async def finished_bytes(self, upload_id: str) -> bytes:
        return await asyncio.to_thread((self.data_dir / upload_id).read_bytes)

    async def leftovers(self, upload_id: str) -> list[str]:
        """What is still stored of an upload that should be gone."""
        return ["data file"] if (self.data_dir / upload_id).exists() else []


class S3View:
    """Unfinished bytes are in S3 parts and tail objects; finished ones the object."""

    name = "s3"
    big_uploads = 0.15
    """Share of uploads over the 5 MiB part size, so that parts go to S3."""

    def __init__(self, data_dir: Path, s3: Any, bucket: str) -> None:
        self.data_dir = data_dir
        self.s3 = s3
        self.bucket = bucket

    def _multipart_uploads(self, upload_id: str) -> list[str]:
        listing = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=upload_id)
        return [mpu["UploadId"] for mpu in listing.get("Uploads", []) if mpu["Key"] == upload_id]

    def _object_size(self, upload_id: str) -> int | None:
        try:
            return int(self.s3.head_object(Bucket=self.bucket, Key=upload_id)["ContentLength"])
        except self.s3.exceptions.ClientError:
            return None

    def _tails(self, upload_id: str) -> dict[str, int]:
        """The tail objects ``{key}.part{n}.{start}.{token}``: the end of each in its part."""
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=upload_id + ".part")
        return {
            item["Key"]: int(item["Key"].split(".")[2]) + int(item["Size"])
            for item in listing.get("Contents", [])
        }

    def _stored(self, upload_id: str) -> int:
        """What S3 holds, any server could read: the parts, and the furthest a tail object
        reaches beyond them (never the local spool, a buffer of one server)."""
        sizes: dict[int, int] = {}
        for mpu in self._multipart_uploads(upload_id):
            parts = self.s3.list_parts(Bucket=self.bucket, Key=upload_id, UploadId=mpu)
            for part in parts.get("Parts", []):
                sizes[part["PartNumber"]] = part["Size"]
        tail = max(self._tails(upload_id).values(), default=0)
        return max(self._object_size(upload_id) or 0, sum(sizes.values()) + tail)

    async def check_stored(self, upload_id: str, offset: int, data: bytes) -> None:
        size = await asyncio.to_thread(self._stored, upload_id)
        assert offset <= size, f"{upload_id}: HEAD says {offset}, only {size} bytes stored"

    async def finished_bytes(self, upload_id: str) -> bytes:
        def read() -> bytes:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=upload_id)["Body"].read())

        return await asyncio.to_thread(read)

    async def leftovers(self, upload_id: str) -> list[str]:
        """What is still stored of an upload that should be gone."""

        def look() -> list[str]:
            found = [f"multipart upload {mpu}" for mpu in self._multipart_uploads(upload_id)]
            if self._object_size(upload_id) is not None:
                found.append("object")
            found += [f"tail object {key}" for key in self._tails(upload_id)]
            if (self.data_dir / "s3-spool" / upload_id).exists():
                found.append("spool directory")
            return found

        return await asyncio.to_thread(look)


# --- checks after a restart -------------------------------------------------------------


@dataclass
class Counts:
    kills: int = 0
    uploads_checked: int = 0
    acknowledged_bytes: int = 0
    finals_checked: int = 0
    checksum_bodies_cut: int = 0
    """Bodies with Upload-Checksum in flight at a kill (each all or nothing)."""
    deletes_acked: int = 0
    deletes_cut: int = 0
    finals_gone: int = 0
    """Finals that went with a terminated part."""
    """DELETEs in flight at a kill: the upload found whole or gone after the restart."""
    events_checked: int = 0
    triggers: dict[str, int] = field(default_factory=dict)


@dataclass
class Row:
    status: str
    length: int | None
    offset: int
    completed_at: float | None
    concat: str | None


@dataclass
class Event:
    upload_id: str
    type: str
    payload_id: str
    """The upload id in the event's document."""
    offset: int
    """The upload offset in the event's document."""


def read_database(path: Path) -> tuple[dict[str, Row], list[Event]]:
    """The uploads and the hook outbox, in one read transaction, opened read-only beside
    the running server (WAL mode lets the two go on at once)."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 timeout=10)
    try:
        connection.execute("BEGIN")
        rows = {
            row[0]: Row(*row[1:])
            for row in connection.execute(
                'SELECT id, status, length, "offset", completed_at, concat FROM uploads'
            )
        }
        events = []
        for upload_id, kind, document in connection.execute(
            "SELECT upload_id, type, payload FROM hook_outbox ORDER BY seq"
        ):
            upload = json.loads(document)["upload"]
            events.append(Event(upload_id, kind, upload["id"], upload["offset"]))
        connection.execute("COMMIT")
    finally:
        connection.close()
    return rows, events


async def check_database(path: Path, fleet: Fleet, counts: Counts) -> None:
    """The outbox agrees with the uploads it reports, and both with what clients saw."""
    rows, events = await asyncio.to_thread(read_database, path)
    types: dict[str, list[str]] = {upload_id: [] for upload_id in rows}
    for event in events:
        row = rows.get(event.upload_id)
        assert row is not None, f"{event.type} event of {event.upload_id}, which has no row"
        assert event.payload_id == event.upload_id, event
        assert event.offset <= row.offset, (
            f"{event.type} event of {event.upload_id} reports offset {event.offset}, "
            f"the upload's recorded offset is {row.offset}")
        if event.type == "post-finish":
            assert event.offset == row.offset == row.length, (event, row)
        types[event.upload_id].append(event.type)
    for upload_id, row in rows.items():
        kinds = types[upload_id]
        assert kinds.count("post-create") == 1 and kinds[0] == "post-create", (upload_id, kinds)
        assert kinds.count("post-finish") == (row.completed_at is not None), (upload_id, row, kinds)
        assert row.status in ("active", "terminated"), (upload_id, row)
        terminated = row.status == "terminated"
        assert kinds.count("post-terminate") == terminated, (upload_id, row, kinds)
        assert not terminated or kinds[-1] == "post-terminate", (upload_id, kinds)
        assert row.concat != "final" or "post-receive" not in kinds, (upload_id, kinds)
    counts.events_checked += len(events)

    for upload in fleet.every_upload:
        if upload.path is None:
            continue  # its creation was never acknowledged: the client cannot know it
        row = rows.get(id_of(upload.path))
        assert row is not None, f"{upload.path}: creation acknowledged, no row"
        assert row.concat == ("partial" if upload.partial else None), (upload.path, row)
        if upload.deleted:
            assert row.status == "terminated", f"{upload.path}: DELETE acknowledged, {row}"
        if row.status == "active":
            assert row.offset >= upload.acked, f"{upload.path}: acknowledged {upload.acked}, {row}"
        if upload.done:
            assert row.completed_at is not None, f"{upload.path}: finished, then not: {row}"
        assert row.length in (None, len(upload.data)), (upload.path, row)
        if upload.length_known:
            assert row.length == len(upload.data), (upload.path, row)
    for final in fleet.every_final:
        if final.path is None:
            continue
        row = rows.get(id_of(final.path))
        assert row is not None and row.concat == "final", (final.path, row)
        if final.complete:
            assert row.completed_at is not None, f"{final.path}: finished, then not: {row}"


async def check_gone(view: Any, path: str) -> None:
    leftovers = await view.leftovers(id_of(path))
    assert not leftovers, f"{path}: terminated, but still stored: {leftovers}"


async def check_upload(port: int, view: Any, upload: Upload, counts: Counts) -> None:
    """The invariants of one upload right after a restart; the client resumes from HEAD."""
    if upload.path is None:
        return  # its creation was never acknowledged: the client cannot know it
    response = await head(port, upload.path)
    if response.status in (404, 410):
        assert upload.delete_sent, f"{upload.path}: {response.status}, but never deleted"
        if upload.deleted:
            await check_gone(view, upload.path)
        elif not upload.gone:
            counts.deletes_cut += 1
        upload.gone = True
        return
    assert not upload.deleted, f"{upload.path}: DELETE acknowledged, HEAD {response.status}"
    assert response.status == 200, (upload.path, response)
    if upload.delete_sent:
        counts.deletes_cut += 1
        upload.delete_sent = False  # it was not carried out: the upload is whole
    offset = int(response.headers["upload-offset"])
    assert offset >= upload.acked, f"{upload.path}: acknowledged {upload.acked}, HEAD {offset}"
    if upload.checksum_body is not None:
        start, end = upload.checksum_body
        assert offset in (start, end), (
            f"{upload.path}: a body with Upload-Checksum from {start} to {end} was cut, "
            f"yet HEAD says {offset}")
        counts.checksum_bodies_cut += 1
        upload.checksum_body = None
    length = response.headers.get("upload-length")
    if length is None:
        assert not upload.length_known, f"{upload.path}: its length was acknowledged: {response}"
        assert response.headers.get("upload-defer-length") == "1", (upload.path, response)
    else:
        assert int(length) == len(upload.data), (upload.path, length)
        upload.length_known = True
    await view.check_stored(id_of(upload.path), offset, upload.data)
    counts.uploads_checked += 1
    counts.acknowledged_bytes += upload.acked
    upload.acked = offset


async def check_final(port: int, view: Any, final: Final, counts: Counts) -> None:
    if final.path is None:
        return
    response = await head(port, final.path)
    if response.status in (404, 410):
        assert any(part.delete_sent or part.gone for part in final.parts), (
            f"{final.path}: {response.status}, but none of its parts was deleted")
        assert not final.complete, f"{final.path}: finished, then gone"
        if any(part.deleted for part in final.parts):
            # The DELETE of its part was answered after the final was removed too.
            await check_gone(view, final.path)
        counts.finals_gone += not final.gone
        final.gone = True
        return
    assert response.status == 200, (final.path, response)
    complete = response.headers.get("upload-offset") == str(len(final.data))
    if final.complete or all(part.done for part in final.parts):
        # Every part finished (or a HEAD said so): the final must be assembled.
        assert complete, (final.path, response.headers)
    if any(part.gone for part in final.parts):
        assert complete, f"{final.path}: a part was terminated, the final is neither finished nor gone"
    final.complete = complete
    counts.finals_checked += 1


async def check_complete(port: int, view: Any, path: str, data: bytes) -> None:
    response = await request(port, "GET", path, timeout=30)
    assert response.status == 200, (path, response.status, response.body)
    assert response.body == data, f"{path}: GET differs from the source"
    assert await view.finished_bytes(id_of(path)) == data, f"{path}: stored bytes differ"


# --- the test ---------------------------------------------------------------------------


async def _kill_trigger(fleet: Fleet, rng: random.Random, deleting: bool) -> str:
    """Wait for a random kill point; returns its kind."""
    kinds = ["bytes", "bytes", "delay", "finish"]
    if any(final.path is None or not all(p.done for p in final.parts) for final in fleet.finals):
        kinds.append("final")  # the final's POST, or the finish of a part, may assemble
    if deleting:
        kinds.append("delete")
    kind = rng.choice(kinds)
    if kind == "final" and rng.random() < 0.5:
        kind = "finish"
    if kind == "bytes":
        target = fleet.traffic.body_bytes + rng.randint(1, 4 * MIB)
        while fleet.traffic.body_bytes < target:
            fleet.traffic.changed.clear()
            await fleet.traffic.changed.wait()
    elif kind == "delay":
        await asyncio.sleep(rng.uniform(0.0, 0.4))
    else:
        event = {"finish": fleet.finish_sent, "final": fleet.final_sent,
                 "delete": fleet.delete_sent}[kind]
        event.clear()
        await event.wait()
        await asyncio.sleep(rng.uniform(0.0, 0.005))
    return kind


def _new_work(fleet: Fleet, rng: random.Random) -> None:
    """Add a few uploads and maybe a concatenation to the fleet."""
    for _ in range(rng.randint(1, 3)):
        big = rng.random() < fleet.view.big_uploads
        data = fleet.new_data(5 * MIB, 12 * MIB) if big else fleet.new_data(0, 3 * MIB)
        upload = fleet.add(Upload(
            data, deferred=rng.random() < 0.25, checksummed=rng.random() < 0.25,
            doomed=rng.random() < 0.2,
        ))
        if upload.doomed and rng.random() < 0.5:
            upload.stop_at = rng.randint(0, len(data))
        fleet.uploads.append(upload)
    if rng.random() < 0.6:
        parts = [
            fleet.add(Upload(fleet.new_data(0, MIB), partial=True, checksummed=rng.random() < 0.2))
            for _ in range(rng.randint(1, 3))
        ]
        doomed = rng.random() < 0.3
        if doomed:
            part = rng.choice(parts)
            part.doomed = True
            if rng.random() < 0.7:
                # Abandoned unfinished: the final waits on it, and must go with it.
                part.stop_at = rng.randint(0, max(len(part.data) - 1, 0))
        final = Final(parts, early=rng.random() < (0.8 if doomed else 0.5))
        fleet.finals.append(final)
        fleet.every_final.append(final)


def _doomed(fleet: Fleet) -> list[Upload]:
    """Uploads that are to be terminated and are not yet."""
    candidates = fleet.uploads + [part for final in fleet.finals for part in final.parts]
    return [upload for upload in candidates if upload.doomed and not upload.gone]


async def _check_all(fleet: Fleet, server: Any, counts: Counts) -> None:
    """Every invariant, right after a restart: the database first, then each upload."""
    await check_database(server.data_dir / "aiotusd.sqlite3", fleet, counts)
    for upload in fleet.uploads:
        await check_upload(fleet.port, fleet.view, upload, counts)
    for final in fleet.finals:
        for part in final.parts:
            await check_upload(fleet.port, fleet.view, part, counts)
        await check_final(fleet.port, fleet.view, final, counts)


async def _round(fleet: Fleet, rng: random.Random, server: Any, counts: Counts) -> None:
    """Drive every unfinished upload, kill the server at a random point, restart, check."""
    _new_work(fleet, rng)
    jobs = [fleet.drive(u) for u in fleet.uploads if u.wants_more]
    jobs += [fleet.drive_final(f) for f in fleet.finals
             if (f.path is None and not f.refused) or any(part.wants_more for part in f.parts)]
    # After the creation, some DELETEs come at once, into the first PATCH; some soon; some
    # late, maybe after the last byte.
    deletes = [fleet.terminate(u, rng.choice((0.0, rng.uniform(0.0, 0.05), rng.uniform(0.0, 0.6))))
               for u in _doomed(fleet) if rng.random() < 0.5]
    clients = asyncio.gather(*jobs, *deletes, return_exceptions=True)
    trigger = asyncio.ensure_future(_kill_trigger(fleet, rng, bool(deletes)))
    done, _ = await asyncio.wait({trigger, clients}, timeout=20,
                                 return_when=asyncio.FIRST_COMPLETED)
    kind = trigger.result() if trigger in done else "idle"
    if trigger not in done:
        trigger.cancel()
    fleet.killed.set()
    assert await asyncio.to_thread(server.stop, signal.SIGKILL) == -signal.SIGKILL
    counts.kills += 1
    counts.triggers[kind] = counts.triggers.get(kind, 0) + 1
    results = await asyncio.wait_for(clients, 20)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ServerGone):
            raise result
    await asyncio.to_thread(server.start)
    fleet.killed.clear()
    await _check_all(fleet, server, counts)

    # Finished and terminated uploads are checked whole or gone, then leave the fleet.
    for upload in [u for u in fleet.uploads if u.gone or (u.done and not u.doomed)]:
        if not upload.gone:
            await check_complete(fleet.port, fleet.view, upload.path or "", upload.data)
        fleet.uploads.remove(upload)
    for final in [f for f in fleet.finals if f.settled]:
        if final.complete:
            await check_complete(fleet.port, fleet.view, final.path or "", final.data)
        fleet.finals.remove(final)


async def _finish(fleet: Fleet, counts: Counts) -> None:
    """Resume everything left from HEAD, with no more kills; carry out every termination."""
    for upload in fleet.uploads:
        await fleet.drive(upload)
        if not upload.doomed:
            await check_complete(fleet.port, fleet.view, upload.path or "", upload.data)
    for final in fleet.finals:
        await fleet.drive_final(final)
        if final.path is None or not all(part.done and not part.gone for part in final.parts):
            continue

        async def assembled(final: Final = final) -> bool:
            response = await head(fleet.port, final.path or "")
            return response.headers.get("upload-offset") == str(len(final.data))

        await poll(assembled, f"final {final.path} to be assembled")
        final.complete = True
    for upload in _doomed(fleet):
        await fleet.terminate(upload, 0.0)
        await check_gone(fleet.view, upload.path or "")
    for final in fleet.finals:
        await check_final(fleet.port, fleet.view, final, counts)
        if final.complete:
            # Finished before its part was terminated: it keeps its bytes.
            await check_complete(fleet.port, fleet.view, final.path or "", final.data)


async def _forget(fleet: Fleet, server: Any) -> int:
    """Restart with tombstones forgotten at once: every terminated upload's bytes must go,
    also those whose termination a kill cut short. Returns how many were checked."""
    server.extra_args += ["--gone-retention", "0", "--expiry-interval", "0.05"]
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)
    gone = [upload.path or "" for upload in fleet.every_upload if upload.gone]
    gone += [final.path or "" for final in fleet.every_final if final.gone]

    async def forgotten() -> bool:
        for path in gone:
            if await fleet.view.leftovers(id_of(path)):
                return False
            if (await head(fleet.port, path)).status != 404:
                return False
        return True

    await poll(forgotten, "terminated uploads to be forgotten, their bytes deleted", timeout=20,
               interval=0.1)
    return len(gone)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection: bound, never listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each backend of ``CRASH_BACKENDS`` with one process, and the filesystem with
    ``--workers`` too (workers share the SQLite file and its leases; S3 adds nothing of
    theirs, and doubles the time)."""
    if "backend" not in metafunc.fixturenames:
        return
    names = os.environ.get("CRASH_BACKENDS", "filesystem,s3").split(",")
    cases = [pytest.param(*case.values, None, marks=case.marks, id=str(case.values[0]))
             for case in backend_params(names)]
    if "filesystem" in names:
        cases.append(pytest.param("filesystem", WORKERS, id=f"filesystem-workers{WORKERS}"))
    metafunc.parametrize(("backend", "server_workers"), cases, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> tuple[list[str], Any]:
    """Server flags and a view of the stored bytes, per backend."""
    if request.param == "filesystem":
        return [], FilesystemView
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("bucket")
    return s3_args(endpoint, bucket), lambda data_dir: S3View(data_dir, s3, bucket)


async def test_random_sigkills_lose_no_acknowledged_byte(server_process, backend, refusing_port):
    args, make_view = backend
    rng = random.Random(SEED)
    server = server_process(
        *args,
        "--commit-bytes", "256KiB", "--commit-seconds", "0.05",
        # Every delivery is refused: every post-hook event stays in the outbox.
        "--hooks-url", f"http://{HOST}:{refusing_port}/hooks",
        "--hooks-events", ",".join(HOOK_EVENTS),
        "--hooks-progress-interval", "0",
        "--hooks-retry-delay", "0.05",
    )
    fleet = Fleet(rng, server.port, Traffic(), make_view(server.data_dir))
    UNAVAILABLE["count"] = 0
    counts = Counts()
    started = time.monotonic()
    while counts.kills < KILLS:
        assert time.monotonic() - started < MAX_TEST_SECONDS, f"too slow: {counts}"
        await _round(fleet, rng, server, counts)

    await _finish(fleet, counts)
    await check_database(server.data_dir / "aiotusd.sqlite3", fleet, counts)
    counts.deletes_acked += sum(upload.deleted for upload in fleet.every_upload)
    forgotten = await _forget(fleet, server)
    print(
        f"\ncrash test {fleet.view.name} (seed {SEED}): {counts.kills} kills {counts.triggers}, "
        f"{counts.uploads_checked} upload checks, {counts.acknowledged_bytes} acknowledged "
        f"bytes checked, {counts.finals_checked} final checks, "
        f"{counts.checksum_bodies_cut} checksum bodies cut, {counts.deletes_acked} deletes "
        f"acknowledged, {counts.deletes_cut} cut, {forgotten} forgotten, "
        f"{counts.finals_gone} finals gone with a part, "
        f"{counts.events_checked} outbox events checked, "
        f"{UNAVAILABLE['count']} 503s retried, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert counts.kills >= 20 and counts.acknowledged_bytes > 0
