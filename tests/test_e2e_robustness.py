"""End-to-end robustness of real aiotusd processes, driven over raw loopback sockets.

Every test starts ``python -m server`` (fixture ``server_process``) and talks
HTTP/1.1 to it by hand (``support.rawhttp``), so that it can do what well-behaved
clients never do: stop sending in the middle of a body, hang up, race, or have the
server killed under it. Waiting is always a bounded poll with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import signal
import time
from typing import Any

import pytest
from support.http import upload_id
from support.rawhttp import (
    HOST,
    KIB,
    MIB,
    OpenPatch,
    assert_download,
    close_writer,
    create,
    finish_upload,
    head,
    offset_of,
    patch,
    patch_log,
    read_response,
    request_head,
)
from support.storage import data_file, file_size, payload
from support.waiting import poll

pytestmark = pytest.mark.e2e


# --- 4. a client that hangs up in the middle of a body ---------------------------------


@pytest.mark.also_workers
async def test_disconnect_mid_patch_keeps_received_bytes(server_process):
    server = server_process()
    data = payload(4 * MIB, seed=4)
    path = await create(server.port, len(data))
    stored = data_file(server, path)

    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[: MIB + 12345])
    await poll(lambda: file_size(stored) > 0, "the first bytes to reach the data file")
    await stale.abort()

    async def settled() -> int:
        offset = await offset_of(server.port, path)
        return offset if offset > 0 and offset == file_size(stored) else 0

    offset = await poll(settled, "HEAD to show the bytes the broken PATCH delivered")
    assert offset <= MIB + 12345
    assert stored.read_bytes() == data[:offset]
    await finish_upload(server.port, path, data)
    assert stored.read_bytes() == data


async def test_disconnect_right_after_the_last_byte_still_completes_the_upload(server_process):
    # Commits after every chunk, so that the last byte is followed by a commit during
    # which the hang-up arrives; the body is then complete yet "broke off".
    server = server_process("--commit-bytes", "1")
    data = payload(64 * KIB, seed=42)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    hasty = await OpenPatch.start(server.port, path, 0, len(data))
    await hasty.send(data[:-1])
    await poll(lambda: file_size(stored) == len(data) - 1, "all but the last byte on disk")
    await hasty.send(data[-1:])
    await hasty.abort()  # the client gives up without waiting for the answer

    await poll(lambda: patch_log(server, path), "the access-log line of the PATCH")
    response = await head(server.port, path)
    assert response.headers["upload-offset"] == response.headers["upload-length"] == str(len(data))
    # Offset == length must mean finished: downloadable, and no longer expiring.
    assert "upload-expires" not in response.headers
    await assert_download(server.port, path, data)


async def test_disconnect_mid_patch_with_checksum_discards_body(server_process):
    server = server_process()
    data = payload(2 * MIB, seed=41)
    path = await create(server.port, 3 * MIB)
    stored = data_file(server, path)
    # A first, complete PATCH so that "unchanged" means something other than zero.
    first = data[: MIB // 2]
    digest = base64.b64encode(hashlib.sha1(first).digest()).decode()
    response = await patch(server.port, path, 0, first, **{"Upload-Checksum": f"sha1 {digest}"})
    assert response.status == 204 and response.headers["upload-offset"] == str(len(first))

    rest = data[len(first) :]
    digest = base64.b64encode(hashlib.sha1(rest).digest()).decode()
    broken = await OpenPatch.start(
        server.port, path, len(first), len(rest), **{"Upload-Checksum": f"sha1 {digest}"}
    )
    await broken.send(rest[: MIB // 2])
    await poll(lambda: file_size(stored) > len(first), "the checksummed body to be written")
    await broken.abort()

    await poll(lambda: file_size(stored) == len(first), "the broken-off body to be discarded")
    # The log shows the PATCH ended, with nothing of it kept.
    lines = await poll(
        lambda: len(patch_log(server, path)) == 2 and patch_log(server, path),
        "the access-log line of the broken PATCH",
    )
    assert lines[1][1] == 0
    assert await offset_of(server.port, path) == len(first)
    assert stored.read_bytes() == first


# --- 5. take-over of a stalled request, and the idle timeout -------------------------------


@pytest.mark.also_workers
async def test_stalled_patch_is_taken_over_by_head(server_process):
    server = server_process()  # lock_timeout 3 s, idle_timeout 60 s: only take-over can help
    data = payload(4 * MIB, seed=5)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[: MIB + 777])
    await poll(lambda: file_size(stored) == MIB + 777, "the stalled body's bytes on disk")

    started = time.monotonic()
    response = await head(server.port, path)
    took = time.monotonic() - started
    assert took < 1.5, f"HEAD waited {took:.2f} s for the stalled PATCH"
    assert response.headers["upload-offset"] == str(MIB + 777)
    assert response.headers["upload-length"] == str(len(data))
    # The stale request was cut off: its connection is closed without a 204.
    leftover = await stale.closed_by_server(timeout=5)
    assert b" 204 " not in leftover
    await stale.abort()

    await finish_upload(server.port, path, data)
    assert stored.read_bytes() == data


@pytest.mark.also_workers
async def test_stalled_patch_is_taken_over_by_patch(server_process):
    server = server_process()
    data = payload(3 * MIB, seed=51)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[: 2 * MIB])
    await poll(lambda: file_size(stored) == 2 * MIB, "the stalled body's bytes on disk")

    # The client reconnects and, trusting what it sent, continues at 2 MiB at once.
    started = time.monotonic()
    response = await patch(server.port, path, 2 * MIB, data[2 * MIB :])
    took = time.monotonic() - started
    assert response.status == 204, response
    assert response.headers["upload-offset"] == str(len(data))
    assert took < 2, f"the new PATCH waited {took:.2f} s for the stalled one"
    await stale.closed_by_server(timeout=5)
    await stale.abort()
    await assert_download(server.port, path, data)
    assert stored.read_bytes() == data


@pytest.mark.slow
async def test_idle_timeout_cuts_stalled_body_and_commits(server_process):
    server = server_process("--idle-timeout", "1")
    data = payload(MIB, seed=52)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    stale = await OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[: 300 * KIB])
    await poll(lambda: file_size(stored) == 300 * KIB, "the stalled body's bytes on disk")
    stalled_at = time.monotonic()

    # Nobody else touches the upload: the server itself must give up on the body.
    await stale.closed_by_server(timeout=6)
    waited = time.monotonic() - stalled_at
    assert 0.5 <= waited < 4, f"idle timeout of 1 s cut the body after {waited:.2f} s"
    await stale.abort()
    await poll(
        lambda: re.search(rf"PATCH {path} \d+ upload=\S+ received={300 * KIB}\b", server.log()),
        "the access-log line of the cut PATCH",
    )
    assert await offset_of(server.port, path) == 300 * KIB
    await finish_upload(server.port, path, data)


# --- 6. racing PATCHes ------------------------------------------------------------------


async def _race(port: int, path: str, bodies: list[bytes], piece: int) -> list[int | None]:
    """PATCH every body at offset 0 at once; the statuses, None where the server hung up."""

    async def racer(body: bytes) -> int | None:
        try:
            racing = await OpenPatch.start(port, path, 0, len(body))
            try:
                await racing.send(body, piece=piece)
                return (await racing.response()).status
            finally:
                await racing.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            return None  # taken over by a newer request: cut off without an answer

    return list(await asyncio.wait_for(asyncio.gather(*(racer(body) for body in bodies)), 20))


async def _check_race(server: Any, path: str, bodies: list[bytes], statuses: list[int | None]) -> int:
    """Assert that what is stored is one body's prefix, as much as the server accepted."""
    assert set(statuses) <= {204, 409, 423, None}, statuses
    accepted = [number for number, status in enumerate(statuses) if status == 204]
    assert len(accepted) <= 1, f"two PATCHes at offset 0 both succeeded: {statuses}"
    log = await poll(
        lambda: len(patch_log(server, path)) == len(bodies) and patch_log(server, path),
        "an access-log line for every racing PATCH",
    )
    offset = await offset_of(server.port, path)
    content = data_file(server, path).read_bytes()
    assert len(content) == offset
    # Exactly the bytes the server reports as received are stored, no more, no less ...
    assert offset == sum(received for _, received in log), (log, offset)
    assert sorted(status for status, _ in log if status == 204) == [204] * len(accepted)
    # ... and they are the beginning of exactly one body, never a mix.
    owners = [number for number, body in enumerate(bodies) if body[:offset] == content]
    assert owners, f"stored bytes are not a prefix of any single body ({statuses})"
    if accepted:
        assert owners == accepted and offset == len(bodies[accepted[0]])
        return accepted[0]
    return owners[0]


@pytest.mark.also_workers
async def test_concurrent_patches_do_not_interleave(server_process):
    server = server_process()
    length = 2 * MIB
    path = await create(server.port, length)
    bodies = [payload(length, seed=600 + number) for number in range(4)]
    statuses = await _race(server.port, path, bodies, piece=256 * KIB)
    owner = await _check_race(server, path, bodies, statuses)
    # The owner's client resumes from the kept offset (a no-op when it already finished).
    if await offset_of(server.port, path) < length:
        await finish_upload(server.port, path, bodies[owner])
    await assert_download(server.port, path, bodies[owner])
    assert data_file(server, path).read_bytes() == bodies[owner]

    # Again with small bodies that each arrive in one piece, on a fresh upload.
    path = await create(server.port, 64 * KIB)
    small = [payload(64 * KIB, seed=700 + number) for number in range(6)]
    statuses = await _race(server.port, path, small, piece=64 * KIB)
    owner = await _check_race(server, path, small, statuses)
    if await offset_of(server.port, path) < 64 * KIB:
        await finish_upload(server.port, path, small[owner])
    await assert_download(server.port, path, small[owner])


# --- 7. SIGTERM while a body streams in -------------------------------------------------


@pytest.mark.also_workers
async def test_sigterm_during_patch_exits_cleanly_and_keeps_bytes(server_process):
    server = server_process("--shutdown-timeout", "5")
    data = payload(8 * MIB, seed=7)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    streaming = await OpenPatch.start(server.port, path, 0, len(data))
    await streaming.send(data[: 3 * MIB + 5])
    await poll(lambda: file_size(stored) == 3 * MIB + 5, "the streamed bytes on disk")

    started = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM, 15)
    took = time.monotonic() - started
    assert code == 0, server.log()
    assert took < 5, f"shutdown took {took:.2f} s"
    await streaming.closed_by_server(timeout=5)
    await streaming.abort()
    assert "Traceback" not in server.log()

    server.start()
    offset = await offset_of(server.port, path)
    assert offset == 3 * MIB + 5, "bytes received before SIGTERM were not committed"
    assert stored.read_bytes()[:offset] == data[:offset]
    await finish_upload(server.port, path, data)


# --- 8. periodic commits survive SIGKILL ------------------------------------------------


@pytest.mark.also_workers
async def test_sigkill_during_long_patch_keeps_periodic_commits(server_process):
    server = server_process("--commit-bytes", "1MiB", "--commit-seconds", "60")
    data = payload(8 * MIB, seed=8)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    streaming = await OpenPatch.start(server.port, path, 0, len(data))
    sent_target = 3 * MIB + MIB // 2
    for start in range(0, sent_target, 256 * KIB):  # a slow client: 14 pieces
        await streaming.send(data[start : start + 256 * KIB])
        await poll(
            lambda target=start + 256 * KIB: file_size(stored) >= target, "the piece on disk"
        )

    assert await asyncio.to_thread(server.stop, signal.SIGKILL) == -signal.SIGKILL
    await streaming.abort()
    on_disk = file_size(stored)
    assert on_disk == sent_target

    server.start()
    offset = await offset_of(server.port, path)
    assert 2 * MIB <= offset <= on_disk, (offset, on_disk)
    assert stored.read_bytes()[:offset] == data[:offset]
    await finish_upload(server.port, path, data)
    assert stored.read_bytes() == data


# --- 9. the access log ------------------------------------------------------------------


async def _traffic(port: int) -> tuple[str, bytes]:
    data = payload(300 * KIB, seed=9)
    path = await create(port, len(data))
    assert (await patch(port, path, 0, data[: 100 * KIB])).status == 204
    assert (await patch(port, path, 100 * KIB, data[100 * KIB :])).status == 204
    assert (await patch(port, path, 0, b"late")).status == 409
    await head(port, path)
    await assert_download(port, path, data)
    return path, data


async def test_access_log_text(server_process):
    server = server_process()
    path, data = await _traffic(server.port)
    ident = upload_id(path)
    pattern = re.compile(
        r"(?P<method>[A-Z]+) (?P<path>/\S*) (?P<status>\d{3}) upload=(?P<upload>\S+) "
        r"received=(?P<received>\d+) duration=(?P<duration>\d+\.\d+)"
    )

    def entries() -> list[re.Match[str]]:
        return [match for match in pattern.finditer(server.log())]

    found = await poll(lambda: len(entries()) >= 6 and entries(), "six access-log lines")
    assert len(found) == 6, server.log()
    summary = [(m["method"], m["path"], m["status"], m["upload"], m["received"]) for m in found]
    assert summary == [
        ("POST", "/files/", "201", "-", "0"),
        ("PATCH", path, "204", ident, str(100 * KIB)),
        ("PATCH", path, "204", ident, str(200 * KIB)),
        ("PATCH", path, "409", ident, "0"),
        ("HEAD", path, "200", ident, "0"),
        ("GET", path, "200", ident, "0"),
    ]
    assert all(0 <= float(m["duration"]) < 10 for m in found)
    # An error answer's line ends with its stable code; others have none.
    lines = [line for line in server.log().splitlines() if pattern.search(line)]
    assert [line.rsplit(" ", 1)[-1] for line in lines if " error=" in line] == [
        "error=offset-mismatch"
    ]


async def test_access_log_json(server_process):
    server = server_process("--log-format", "json")
    path, data = await _traffic(server.port)
    ident = upload_id(path)

    def entries() -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        return [entry for entry in parsed if "method" in entry]

    found = await poll(lambda: len(entries()) >= 6 and entries(), "six JSON access entries")
    assert len(found) == 6
    for entry in found:
        assert {"method", "path", "status", "upload_id", "received", "duration"} <= set(entry)
        assert isinstance(entry["status"], int) and isinstance(entry["received"], int)
        assert isinstance(entry["duration"], (int, float)) and 0 <= entry["duration"] < 10
    summary = [(e["method"], e["path"], e["status"], e["upload_id"], e["received"]) for e in found]
    assert summary == [
        ("POST", "/files/", 201, "-", 0),
        ("PATCH", path, 204, ident, 100 * KIB),
        ("PATCH", path, 204, ident, 200 * KIB),
        ("PATCH", path, 409, ident, 0),
        ("HEAD", path, 200, ident, 0),
        ("GET", path, 200, ident, 0),
    ]


# --- a body longer than the upload, after periodic commits ------------------------------


async def test_too_long_chunked_body_after_periodic_commits_leaves_a_usable_upload(server_process):
    server = server_process("--commit-bytes", "256KiB")
    data = payload(MIB, seed=10)
    path = await create(server.port, len(data))
    stored = data_file(server, path)
    # Chunked: the server learns only while reading that the body is too long.
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(request_head("PATCH", path, server.port, {
            "Tus-Resumable": "1.0.0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
            "Transfer-Encoding": "chunked",
        }))
        too_long = data + b"x" * (128 * KIB)
        for start in range(0, len(too_long), 64 * KIB):
            piece = too_long[start : start + 64 * KIB]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await asyncio.wait_for(writer.drain(), 10)
        writer.write(b"0\r\n\r\n")
        await asyncio.wait_for(writer.drain(), 10)
        response = await read_response(reader, "PATCH")
    finally:
        await close_writer(writer)
    assert response.status == 413, response

    # Nothing of the refused body is kept, and the offset agrees with the data file.
    offset = await offset_of(server.port, path)
    assert offset == 0
    assert file_size(stored) == 0
    await finish_upload(server.port, path, data)
    assert stored.read_bytes() == data
