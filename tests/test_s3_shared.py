"""S3 uploads taken from one server to another that shares only the bucket and the database.

Every server here has a data directory of its own, so that nothing an upload needs can
come from a local disk: its tail below the 5 MiB part minimum must be in S3. SQLite cannot
be shared by running servers, so those tests run them one after the other on one database
file; on PostgreSQL two run at once, and a client alternates its PATCHes between them.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from support import rawhttp
from support.http import PATCH_HEADERS, TUS
from support.processes import ServerProcess
from support.rawhttp import OpenPatch, patch_log
from support.s3 import (
    MIB,
    PART,
    multipart_uploads,
    object_bytes,
    object_keys,
    s3_args,
    tail_objects,
)
from support.storage import file_size, payload
from support.waiting import poll, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


def create(server: ServerProcess, length: int) -> str:
    """A new upload's path (``/files/{id}``): the same on every server."""
    response = requests.post(server.url, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
    assert response.status_code == 201, response.text
    return "/files/" + str(response.headers["Location"]).rsplit("/", 1)[1]


def on(server: ServerProcess, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def head_offset(server: ServerProcess, path: str) -> int:
    response = requests.head(on(server, path), headers=TUS, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def patch(server: ServerProcess, path: str, offset: int, data: bytes) -> int:
    response = requests.patch(
        on(server, path), data=data, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)},
        timeout=60,
    )
    assert response.status_code == 204, response.text
    return int(response.headers["Upload-Offset"])


def assert_stored_once(s3: Any, bucket: str, server: ServerProcess, path: str, data: bytes) -> None:
    """The upload is ``data``, as one object and through GET; nothing else is left in S3."""
    key = path.rsplit("/", 1)[1]
    response = requests.get(on(server, path), timeout=60)
    assert response.status_code == 200 and response.content == data
    assert object_bytes(s3, bucket, key) == data
    assert object_keys(s3, bucket) == [key]
    assert multipart_uploads(s3, bucket) == []


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """The SQLite file that the servers of a test share, one after the other."""
    return tmp_path / "state.sqlite3"


def recorded_offset(database: Path, upload_id: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute('SELECT "offset" FROM uploads WHERE id = ?', (upload_id,)).fetchone()
    return int(row[0])


def test_a_tail_below_the_part_minimum_goes_from_server_to_server(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    database: Path,
) -> None:
    args = [*s3_args(s3_endpoint, bucket), "--database", str(database)]
    data = payload(2 * PART + 3 * MIB, seed=80)
    first = server_process(*args)
    path = create(first, len(data))
    assert patch(first, path, 0, data[: 3 * MIB]) == 3 * MIB  # a tail only: below 5 MiB
    first.stop()
    second = server_process(*args)
    assert second.data_dir != first.data_dir
    assert head_offset(second, path) == 3 * MIB
    assert patch(second, path, 3 * MIB, data[3 * MIB : 7 * MIB]) == 7 * MIB
    second.stop()
    first.start()
    assert head_offset(first, path) == 7 * MIB
    assert patch(first, path, 7 * MIB, data[7 * MIB :]) == len(data)
    assert_stored_once(s3, bucket, first, path, data)


@pytest.mark.slow
def test_kill_9_mid_patch_then_another_server_resumes_from_what_was_recorded(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    database: Path,
) -> None:
    args = [*s3_args(s3_endpoint, bucket), "--database", str(database), "--commit-bytes", "1MiB"]
    data = payload(3 * PART + MIB, seed=81)
    first = server_process(*args)
    path = create(first, len(data))
    assert patch(first, path, 0, data[: 3 * MIB]) == 3 * MIB
    key = path.rsplit("/", 1)[1]
    sent = 3 * MIB
    with socket.create_connection(("127.0.0.1", first.port)) as sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {sent}\r\n"
            f"Content-Length: {len(data) - sent}\r\n\r\n".encode()
        )
        sock.sendall(data[sent : sent + 6 * MIB])
        sent += 6 * MIB

        def part_recorded() -> bool:
            """A periodic commit recorded the stored part 1; a few more bytes trickle in
            until then (never the whole body)."""
            nonlocal sent
            if recorded_offset(database, key) > 3 * MIB:
                return True
            if sent + 64 * 1024 < len(data):
                sock.sendall(data[sent : sent + 64 * 1024])
                sent += 64 * 1024
            return False

        wait_for(part_recorded, what="a commit of the first part")
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    second = server_process(*args)
    offset = head_offset(second, path)
    # Periodic commits claim whole stored parts: the first, or the second too.
    assert offset in (PART, 2 * PART) and offset <= sent
    assert patch(second, path, offset, data[offset:]) == len(data)
    assert_stored_once(s3, bucket, second, path, data)
    assert tail_objects(s3, bucket, key) == []


@pytest.mark.postgres
def test_two_servers_on_postgresql_take_alternate_patches_of_one_upload(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    postgres_url: str,
) -> None:
    args = [*s3_args(s3_endpoint, bucket), "--database", postgres_url]
    servers = [server_process(*args), server_process(*args)]
    data = payload(3 * PART + 2 * MIB + 5, seed=82)
    path = create(servers[0], len(data))
    key = path.rsplit("/", 1)[1]
    sizes = [MIB, 3 * MIB, 2 * MIB, 7 * MIB, MIB // 2, 3 * MIB]
    offset = 0
    for turn, size in enumerate([*sizes, len(data)]):
        server, other = servers[turn % 2], servers[(turn + 1) % 2]
        offset = patch(server, path, offset, data[offset : offset + size])
        assert head_offset(other, path) == offset
        if offset % PART and offset < len(data):  # the bytes past the last part: tails
            part, start, size = tail_objects(s3, bucket, key)[-1]
            assert (part, start + size) == (offset // PART + 1, offset % PART)
    assert offset == len(data)
    assert_stored_once(s3, bucket, servers[0], path, data)
    assert_stored_once(s3, bucket, servers[1], path, data)


LEASE = 2.0
LOCK_TIMEOUT = 3.0


def two_on_postgresql(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str,
    postgres_url: str,
) -> tuple[ServerProcess, ServerProcess]:
    """Two servers that share the bucket and the database, each with a data directory (its
    spool) of its own."""
    args = [*s3_args(s3_endpoint, bucket), "--database", postgres_url,
            "--lock-lease", str(LEASE), "--lock-timeout", str(LOCK_TIMEOUT)]
    return server_process(*args), server_process(*args)


async def stall_in_spool(server: ServerProcess, path: str, data: bytes, sent: int) -> OpenPatch:
    """A PATCH of all of ``data`` that stops after ``sent`` bytes (past the first part),
    once the open part's bytes are in the server's spool."""
    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[:sent])
    spooled = server.data_dir / "s3-spool" / path.rsplit("/", 1)[1] / str(sent // PART + 1)
    await poll(lambda: file_size(spooled) == sent % PART, "the stalled body's bytes spooled")
    return stale


async def late_bytes(stale: OpenPatch, size: int) -> None:
    """The stale client sends more: bytes that must be stored nowhere."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        await stale.send(b"\xee" * size)
    await stale.abort()


async def offset_when_free(server: ServerProcess, path: str, within: float) -> int:
    """HEAD until the upload's lock is free (not 423), for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    for _ in range(100):
        response = await rawhttp.request(server.port, "HEAD", path)
        if response.status == 200:
            return int(response.headers["upload-offset"])
        assert response.status == 423, response
        assert time.monotonic() < deadline, f"still locked after {within} s"
    raise AssertionError("HEAD never answered 200")


@pytest.mark.postgres
async def test_a_stalled_patch_on_s3_is_taken_over_through_the_other_server(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    postgres_url: str,
) -> None:
    """The client stops sending to one server and resumes on the other: the first records
    what it got (its tail in S3) and lets go at once; the second finishes the upload."""
    holding, other = two_on_postgresql(server_process, s3_endpoint, bucket, postgres_url)
    data = payload(2 * PART + MIB, seed=83)
    path = await rawhttp.create(holding.port, len(data))
    sent = PART + MIB + 7
    stale = await stall_in_spool(holding, path, data, sent)
    started = time.monotonic()
    assert await rawhttp.offset_of(other.port, path) == sent
    assert time.monotonic() - started < LOCK_TIMEOUT
    await late_bytes(stale, len(data) - sent)
    await poll(lambda: patch_log(holding, path), "the stalled PATCH's access-log line")
    assert patch_log(holding, path)[0][1] == sent
    response = await rawhttp.patch(other.port, path, sent, data[sent:])
    assert response.status == 204, response
    assert_stored_once(s3, bucket, holding, path, data)


@pytest.mark.postgres
@pytest.mark.parametrize("waiting", [256 * 1024, 0], ids=["bytes-waiting", "none-waiting"])
async def test_a_paused_server_loses_its_s3_upload_and_records_nothing_when_it_goes_on(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    postgres_url: str, waiting: int,
) -> None:
    """The server receiving a PATCH is paused (SIGSTOP): the other takes the lease over once
    it lapses and finishes the upload; resumed (SIGCONT), the paused one's request stores
    and records nothing (the fence of its token), and the object is the client's bytes.
    Resumed, it finds more of the body ``waiting`` in its socket, or none: then it is its
    lease's own deadline that stops it."""
    holding, other = two_on_postgresql(server_process, s3_endpoint, bucket, postgres_url)
    data = payload(2 * PART + MIB, seed=84)
    path = await rawhttp.create(holding.port, len(data))
    sent = PART + MIB + 7
    stale = await stall_in_spool(holding, path, data, sent)
    holding.send_signal(signal.SIGSTOP)
    try:
        paused = time.monotonic()
        stale.writer.write(b"\xee" * waiting)  # waits in the paused server's socket
        offset = await offset_when_free(other, path, LEASE + LOCK_TIMEOUT)
        assert time.monotonic() - paused < LEASE + LOCK_TIMEOUT
        assert offset == 0  # no commit was due: nothing of the stalled body counts
        response = await rawhttp.patch(other.port, path, offset, data[offset:])
        assert response.status == 204, response
        assert object_bytes(s3, bucket, path.rsplit("/", 1)[1]) == data
    finally:
        holding.send_signal(signal.SIGCONT)
    await poll(lambda: patch_log(holding, path), "the paused PATCH's access-log line", 15)
    await late_bytes(stale, 512 * 1024)
    # It recorded nothing, stored nothing more (no tail object, no part: the other's by
    # now), and says why: not a 5xx, as if S3 had failed.
    assert patch_log(holding, path) == [(423, 0)]
    assert "error=taken-over" in holding.log()
    for server in (holding, other):
        assert await rawhttp.offset_of(server.port, path) == len(data)
    assert_stored_once(s3, bucket, holding, path, data)


@pytest.mark.postgres
async def test_an_s3_upload_whose_server_was_killed_mid_patch_is_finished_on_the_other(
    server_process: Callable[..., ServerProcess], s3_endpoint: Any, bucket: str, s3: Any,
    postgres_url: str,
) -> None:
    holding, other = two_on_postgresql(server_process, s3_endpoint, bucket, postgres_url)
    data = payload(2 * PART + MIB, seed=85)
    path = await rawhttp.create(holding.port, len(data))
    sent = PART + 2 * MIB
    stale = await stall_in_spool(holding, path, data, sent)
    assert holding.stop(signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()
    await stale.abort()
    offset = await offset_when_free(other, path, LEASE + LOCK_TIMEOUT)
    assert time.monotonic() - killed < LEASE + LOCK_TIMEOUT
    assert offset == 0  # the killed server recorded nothing of its body
    response = await rawhttp.patch(other.port, path, offset, data[offset:])
    assert response.status == 204, response
    assert_stored_once(s3, bucket, other, path, data)
    assert tail_objects(s3, bucket, path.rsplit("/", 1)[1]) == []
