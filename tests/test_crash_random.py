"""Seeded random crash test: SIGKILL a real aiotusd at random moments, restart, check invariants.

A small fleet of realistic clients (PATCHes of random sizes, creation-with-upload,
concatenations, post-hooks whose receiver is down so every change writes to the
hook outbox) runs against a real ``python -m server`` process. At a random kill
point the server gets SIGKILL:

* after a random number of body bytes went out across all clients,
* after a random delay,
* right after a chosen request went out (the last body bytes of an upload, so the
  kill lands in its finish; or the POST of a final upload, so it lands in the
  concatenation), plus a random delay of a few milliseconds.

The server is then started again on the same port and data directory, and for every
upload whose creation the client saw acknowledged:

* every acknowledged byte is still there: HEAD's offset >= the largest
  ``Upload-Offset`` of a 201/204 the client received before the kill;
* HEAD never reports more than is stored: for the filesystem, the offset <= the data
  file's size and the file's first ``offset`` bytes are the source's; for S3, the
  offset <= the bytes in S3 parts, spool files and the finished object;
* a final upload whose parts are all finished reports itself finished.

The clients then go on from HEAD's offsets in the next round, so one upload may see
several kills. At the end every upload is resumed to its end and its bytes (GET and
data file) must equal the source; finished concatenations must equal their parts.
The RNG is seeded (``CRASH_SEED`` overrides it), so a failing run can be replayed
(the kill moments depend on timing too, so a replay is close, not exact). Both
backends run ``KILLS`` kill points each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("s3_support")

from conftest import free_port, payload, poll
from s3_support import s3_args

pytest_plugins = ["s3_support"]

KIB = 1024
MIB = 1024 * KIB
HOST = "127.0.0.1"
SEED = int(os.environ.get("CRASH_SEED", "20261125"))
KILLS = 24
MAX_TEST_SECONDS = 90.0
"""Per backend: a bound on the whole run, far above its usual 15-40 s."""


# --- a minimal HTTP/1.1 client over asyncio streams that counts what it sent ----------


class ServerGone(Exception):
    """The connection broke: the server was killed under the request."""


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
    location = response.headers["location"]
    return location[location.index("/files/") :]


def id_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


# --- uploads the clients drive ----------------------------------------------------------


@dataclass
class Upload:
    """One upload as its client knows it."""

    data: bytes
    partial: bool = False
    path: str | None = None
    acked: int = 0
    """The largest Upload-Offset of a 201/204 the client received."""
    done: bool = False


@dataclass
class Final:
    """A concatenation: its parts, and the final upload once its POST was answered."""

    parts: list[Upload]
    early: bool = False
    """POST the final as soon as its parts exist, before their bytes are in."""
    path: str | None = None
    acked_done: bool = False
    """A 201 said it was finished (Upload-Offset present), or a HEAD did."""

    @property
    def data(self) -> bytes:
        return b"".join(part.data for part in self.parts)


@dataclass
class Fleet:
    rng: random.Random
    port: int
    traffic: Traffic
    view: Any
    uploads: list[Upload] = field(default_factory=list)
    finals: list[Final] = field(default_factory=list)
    finish_sent: asyncio.Event = field(default_factory=asyncio.Event)
    final_sent: asyncio.Event = field(default_factory=asyncio.Event)
    seed_counter: int = 0

    def new_data(self, low: int, high: int) -> bytes:
        self.seed_counter += 1
        return payload(self.rng.randint(low, high), seed=SEED * 1000 + self.seed_counter)

    def ack(self, upload: Upload, response: Response) -> None:
        assert response.status in (201, 204), (response.status, response.body)
        offset = int(response.headers["upload-offset"])
        assert offset >= upload.acked, "an acknowledged offset went backwards"
        upload.acked = offset
        if offset == len(upload.data):
            upload.done = True

    async def create(self, upload: Upload) -> None:
        """POST, with a first body in about half the cases (creation-with-upload)."""
        headers = {"Upload-Length": str(len(upload.data)),
                   "Upload-Metadata": "filename Y3Jhc2guYmlu"}
        if upload.partial:
            headers["Upload-Concat"] = "partial"
        body = b""
        if self.rng.random() < 0.5:
            headers["Content-Type"] = "application/offset+octet-stream"
            body = upload.data[: self.rng.randint(0, len(upload.data))]
        last = bool(body) and len(body) == len(upload.data)
        response = await request(
            self.port, "POST", "/files/", headers, body, traffic=self.traffic,
            piece=self.rng.choice([16 * KIB, 64 * KIB, 256 * KIB]),
            on_sent=self.finish_sent if last else None,
        )
        upload.path = path_of(response)
        self.ack(upload, response)

    async def patch_to_end(self, upload: Upload) -> None:
        """PATCH from the acknowledged offset in chunks of random sizes."""
        assert upload.path is not None
        while upload.acked < len(upload.data):
            size = self.rng.choice([1, 1000, 32 * KIB, 200 * KIB, 700 * KIB, 3 * MIB])
            end = min(len(upload.data), upload.acked + size)
            response = await request(
                self.port, "PATCH", upload.path,
                {"Content-Type": "application/offset+octet-stream",
                 "Upload-Offset": str(upload.acked)},
                upload.data[upload.acked : end], traffic=self.traffic,
                piece=self.rng.choice([8 * KIB, 64 * KIB, 256 * KIB]),
                on_sent=self.finish_sent if end == len(upload.data) else None,
            )
            if response.status in (409, 503):
                # 409: the server kept more than it acknowledged; 503: S3 failed, try again.
                if response.status == 503:
                    UNAVAILABLE["count"] += 1
                    assert UNAVAILABLE["count"] < 100, "the server keeps answering 503"
                    await asyncio.sleep(0.2)
                await self.refresh(upload)
                continue
            self.ack(upload, response)

    async def refresh(self, upload: Upload) -> None:
        assert upload.path is not None
        response = await head(self.port, upload.path)
        assert response.status == 200, response
        offset = int(response.headers["upload-offset"])
        assert offset >= upload.acked
        upload.acked = offset
        upload.done = offset == len(upload.data)

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
        await asyncio.gather(*(self.drive(part) for part in final.parts if not part.done))
        await self.post_final(final)

    async def post_final(self, final: Final) -> None:
        if final.path is not None:
            return
        concat = "final;" + " ".join(part.path or "" for part in final.parts)
        response = await request(self.port, "POST", "/files/", {"Upload-Concat": concat},
                                 on_sent=self.final_sent)
        assert response.status == 201, response
        final.path = path_of(response)
        final.acked_done = "upload-offset" in response.headers


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


class S3View:
    """Unfinished bytes are in S3 parts and local spool files; finished ones the object."""

    name = "s3"
    big_uploads = 0.15
    """Share of uploads over the 5 MiB part size, so that parts go to S3."""

    def __init__(self, data_dir: Path, s3: Any, bucket: str) -> None:
        self.data_dir = data_dir
        self.s3 = s3
        self.bucket = bucket

    def _stored(self, upload_id: str) -> int:
        spool = self.data_dir / "s3-spool" / upload_id
        sizes: dict[int, int] = {}
        if spool.exists():
            for entry in spool.iterdir():
                if entry.name.isdigit():
                    sizes[int(entry.name)] = entry.stat().st_size
        listing = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=upload_id)
        for mpu in listing.get("Uploads", []):
            if mpu["Key"] != upload_id:
                continue
            parts = self.s3.list_parts(Bucket=self.bucket, Key=upload_id, UploadId=mpu["UploadId"])
            for part in parts.get("Parts", []):
                number = part["PartNumber"]
                sizes[number] = max(sizes.get(number, 0), part["Size"])
        try:
            whole = self.s3.head_object(Bucket=self.bucket, Key=upload_id)["ContentLength"]
        except self.s3.exceptions.ClientError:
            whole = 0
        return max(whole, sum(sizes.values()))

    async def check_stored(self, upload_id: str, offset: int, data: bytes) -> None:
        size = await asyncio.to_thread(self._stored, upload_id)
        assert offset <= size, f"{upload_id}: HEAD says {offset}, only {size} bytes stored"

    async def finished_bytes(self, upload_id: str) -> bytes:
        def read() -> bytes:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=upload_id)["Body"].read())

        return await asyncio.to_thread(read)


# --- checks after a restart -------------------------------------------------------------


@dataclass
class Counts:
    kills: int = 0
    uploads_checked: int = 0
    acknowledged_bytes: int = 0
    finals_checked: int = 0
    triggers: dict[str, int] = field(default_factory=dict)


async def check_upload(port: int, view: Any, upload: Upload, counts: Counts) -> None:
    """The invariants of one upload right after a restart; the client resumes from HEAD."""
    if upload.path is None:
        return  # its creation was never acknowledged: the client cannot know it
    response = await head(port, upload.path)
    assert response.status == 200, (upload.path, response)
    offset = int(response.headers["upload-offset"])
    assert offset >= upload.acked, f"{upload.path}: acknowledged {upload.acked}, HEAD {offset}"
    await view.check_stored(id_of(upload.path), offset, upload.data)
    counts.uploads_checked += 1
    counts.acknowledged_bytes += upload.acked
    upload.acked = offset
    upload.done = offset == len(upload.data)


async def check_final(port: int, final: Final, counts: Counts) -> None:
    if final.path is None:
        return
    response = await head(port, final.path)
    assert response.status == 200, (final.path, response)
    if final.acked_done or all(part.done for part in final.parts):
        # Every part finished (or the 201 said so): the final must be assembled.
        assert response.headers.get("upload-offset") == str(len(final.data)), (
            final.path, response.headers)
    counts.finals_checked += 1


async def check_complete(port: int, view: Any, path: str, data: bytes) -> None:
    response = await request(port, "GET", path, timeout=30)
    assert response.status == 200, (path, response.status, response.body)
    assert response.body == data, f"{path}: GET differs from the source"
    assert await view.finished_bytes(id_of(path)) == data, f"{path}: stored bytes differ"


# --- the test ---------------------------------------------------------------------------


async def _kill_trigger(fleet: Fleet, rng: random.Random) -> str:
    """Wait for a random kill point; returns its kind."""
    kinds = ["bytes", "bytes", "delay", "finish"]
    if any(final.path is None or not all(p.done for p in final.parts) for final in fleet.finals):
        kinds.append("final")  # the final's POST, or the finish of a part, may assemble
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
        event = fleet.finish_sent if kind == "finish" else fleet.final_sent
        event.clear()
        await event.wait()
        await asyncio.sleep(rng.uniform(0.0, 0.005))
    return kind


def _new_work(fleet: Fleet, rng: random.Random) -> None:
    """Add a few uploads and maybe a concatenation to the fleet."""
    for _ in range(rng.randint(1, 3)):
        big = rng.random() < fleet.view.big_uploads
        fleet.uploads.append(Upload(fleet.new_data(5 * MIB, 12 * MIB) if big else fleet.new_data(0, 3 * MIB)))
    if rng.random() < 0.6:
        parts = [Upload(fleet.new_data(0, MIB), partial=True) for _ in range(rng.randint(1, 3))]
        fleet.finals.append(Final(parts, early=rng.random() < 0.5))


async def _round(fleet: Fleet, rng: random.Random, server: Any, counts: Counts) -> None:
    """Drive every unfinished upload, kill the server at a random point, restart, check."""
    _new_work(fleet, rng)
    jobs = [fleet.drive(u) for u in fleet.uploads if not u.done]
    jobs += [fleet.drive_final(f) for f in fleet.finals
             if f.path is None or not all(part.done for part in f.parts)]
    clients = asyncio.gather(*jobs, return_exceptions=True)
    trigger = asyncio.ensure_future(_kill_trigger(fleet, rng))
    done, _ = await asyncio.wait({trigger, clients}, timeout=20,
                                 return_when=asyncio.FIRST_COMPLETED)
    kind = trigger.result() if trigger in done else "idle"
    if trigger not in done:
        trigger.cancel()
    assert await asyncio.to_thread(server.stop, signal.SIGKILL) == -signal.SIGKILL
    counts.kills += 1
    counts.triggers[kind] = counts.triggers.get(kind, 0) + 1
    results = await asyncio.wait_for(clients, 20)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ServerGone):
            raise result
    await asyncio.to_thread(server.start)

    for upload in fleet.uploads:
        await check_upload(fleet.port, fleet.view, upload, counts)
    for final in fleet.finals:
        for part in final.parts:
            await check_upload(fleet.port, fleet.view, part, counts)
        await check_final(fleet.port, final, counts)
    # Finished uploads are checked whole, then leave the fleet.
    for upload in [u for u in fleet.uploads if u.done]:
        await check_complete(fleet.port, fleet.view, upload.path or "", upload.data)
        fleet.uploads.remove(upload)
    for final in [f for f in fleet.finals if f.path is not None]:
        response = await head(fleet.port, final.path or "")
        if response.headers.get("upload-offset") == str(len(final.data)):
            await check_complete(fleet.port, fleet.view, final.path or "", final.data)
            fleet.finals.remove(final)


@pytest.fixture(params=os.environ.get("CRASH_BACKENDS", "filesystem,s3").split(","))
def backend(request: pytest.FixtureRequest) -> tuple[list[str], Any]:
    """Server flags and a view of the stored bytes, per backend."""
    if request.param == "filesystem":
        return [], FilesystemView
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("bucket")
    return s3_args(endpoint, bucket), lambda data_dir: S3View(data_dir, s3, bucket)


async def test_random_sigkills_lose_no_acknowledged_byte(server_process, backend):
    args, make_view = backend
    rng = random.Random(SEED)
    hooks_port = free_port()  # nothing listens there: every post-hook event stays in the outbox
    server = server_process(
        *args,
        "--commit-bytes", "256KiB", "--commit-seconds", "0.05",
        "--hooks-url", f"http://{HOST}:{hooks_port}/hooks",
        "--hooks-events", "post-create,post-receive,post-finish",
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

    # Resume everything left from HEAD, with no more kills, and check the bytes.
    for upload in fleet.uploads:
        await fleet.drive(upload)
        await check_complete(fleet.port, fleet.view, upload.path or "", upload.data)
    for final in fleet.finals:
        await fleet.drive_final(final)

        async def assembled(final: Final = final) -> bool:
            response = await head(fleet.port, final.path or "")
            return response.headers.get("upload-offset") == str(len(final.data))

        await poll(assembled, f"final {final.path} to be assembled")
        await check_complete(fleet.port, fleet.view, final.path or "", final.data)
        counts.finals_checked += 1
    print(
        f"\ncrash test {fleet.view.name} (seed {SEED}): {counts.kills} kills {counts.triggers}, "
        f"{counts.uploads_checked} upload checks, {counts.acknowledged_bytes} acknowledged "
        f"bytes checked, {counts.finals_checked} final checks, "
        f"{UNAVAILABLE['count']} 503s retried, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert counts.kills >= 20 and counts.acknowledged_bytes > 0
