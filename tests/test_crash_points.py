"""A real server process after a crash at a chosen point, in a fixed order (no random timing).

A crash is made from what it leaves behind: the server is stopped with SIGKILL at a
quiet moment, then its data directory and database are made to hold exactly what the
crashed step had committed (as the server's own code commits it), and it starts
again. tests/test_crash_random.py finds such points by chance; these pin them down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.http import PATCH_HEADERS, TUS, upload_id
from support.markers import backend_params
from support.processes import ServerProcess
from support.s3 import multipart_uploads, object_keys, s3_args
from support.storage import data_file, payload
from support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.also_workers]

KIB = 1024
MIB = 1024 * KIB


@contextlib.contextmanager
def database(server: ServerProcess) -> Iterator[sqlite3.Connection]:
    """The stopped server's database, committed and closed on leaving."""
    assert server.process is None, "the server must be stopped"
    connection = sqlite3.connect(server.data_dir / "aiotusd.sqlite3")
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def row_of(server: ServerProcess, path: str) -> dict[str, Any]:
    with database(server) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id(path),)).fetchone()
    assert row is not None, path
    return dict(row)


def url(server: ServerProcess, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def create(server: ServerProcess, length: int | None = None, **headers: str) -> str:
    """POST an upload; returns its path."""
    if length is not None:
        headers["Upload-Length"] = str(length)
    response = requests.post(server.url, headers={**TUS, **headers}, timeout=30)
    assert response.status_code == 201, response.text
    location = response.headers["Location"]
    return location[location.index("/files/") :]


def patch(server: ServerProcess, path: str, offset: int, body: bytes) -> requests.Response:
    response = requests.patch(
        url(server, path), data=body, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)},
        timeout=60,
    )
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(offset + len(body))
    return response


def head(server: ServerProcess, path: str) -> requests.Response:
    return requests.head(url(server, path), headers=TUS, timeout=30)


def kill(server: ServerProcess) -> None:
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL


def test_head_assembles_a_final_whose_last_part_finished_right_before_a_crash(server_process):
    """concatenation-unfinished: the final is POSTed while a part still uploads; the
    finish of that part is committed, then the server dies before it assembles the final.
    Nothing but a HEAD of the final assembles it then."""
    server = server_process()
    first, second = payload(300 * KIB, seed=61), payload(200 * KIB + 1, seed=62)
    part_a = create(server, len(first), **{"Upload-Concat": "partial"})
    part_b = create(server, len(second), **{"Upload-Concat": "partial"})
    patch(server, part_a, 0, first)
    patch(server, part_b, 0, second[:-1])
    final = create(server, **{"Upload-Concat": f"final;{part_a} {part_b}"})
    response = head(server, final)
    assert response.status_code == 200 and "Upload-Offset" not in response.headers
    kill(server)

    # What the last PATCH of part_b would have committed before the crash: its last byte,
    # synced, then the offset, then the finish (receive._commit, uploads.finish).
    with open(data_file(server, part_b), "ab") as stored:
        stored.write(second[-1:])
        os.fdatasync(stored.fileno())
    row = row_of(server, part_b)
    assert row["offset"] == len(second) - 1 and row["completed_at"] is None, row
    now = time.time()
    with database(server) as db:
        db.execute(
            'UPDATE uploads SET "offset" = ?, completed_at = ?, expires_at = NULL, '
            "updated_at = ? WHERE id = ?",
            (len(second), now, now, upload_id(part_b)),
        )
    assert data_file(server, final).stat().st_size == 0, "the final must not be assembled yet"
    assert row_of(server, final)["completed_at"] is None

    server.start()
    response = head(server, final)
    assert response.status_code == 200
    total = str(len(first) + len(second))
    assert response.headers.get("Upload-Offset") == total, "HEAD did not assemble the final"
    assert response.headers["Upload-Length"] == total
    response = requests.get(url(server, final), timeout=30)
    assert response.status_code == 200 and response.content == first + second
    assert data_file(server, final).read_bytes() == first + second
    response = requests.get(url(server, part_b), timeout=30)
    assert response.status_code == 200 and response.content == second


@pytest.fixture(params=backend_params())
def stored_view(
    request: pytest.FixtureRequest,
) -> tuple[list[str], Callable[[ServerProcess, str], list[str]]]:
    """Server flags, and what a server stores of an upload (empty once its bytes are gone)."""
    if request.param == "filesystem":
        return [], lambda server, path: ["data file"] if data_file(server, path).exists() else []
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("bucket")

    def leftovers(server: ServerProcess, path: str) -> list[str]:
        key = upload_id(path)
        found = [f"multipart upload {mpu['UploadId']}" for mpu in multipart_uploads(s3, bucket)
                 if mpu["Key"] == key]
        keys = object_keys(s3, bucket)
        found += ["object"] if key in keys else []
        found += [name for name in keys if name.startswith(key + ".part")]
        spool: Path = server.data_dir / "s3-spool" / key
        return found + (["spool directory"] if spool.exists() else [])

    return s3_args(endpoint, bucket), leftovers


@pytest.mark.slow
def test_bytes_of_an_upload_whose_expiry_was_cut_short_are_deleted(server_process, stored_view):
    """The sweep marks an expired upload gone, then deletes its bytes: a crash in between
    leaves a tombstone with bytes. It answers as gone, and forgetting it deletes them."""
    args, leftovers = stored_view
    server = server_process(*args)
    data = payload(6 * MIB, seed=63)  # S3: one part in a multipart upload, one in a tail
    path = create(server, 8 * MIB)
    patch(server, path, 0, data)
    kill(server)

    # What uploads.remove commits first, for the sweep (state.mark_gone).
    with database(server) as db:
        db.execute(
            "UPDATE uploads SET status = 'expired', updated_at = ?, expires_at = NULL "
            "WHERE id = ?",
            (time.time(), upload_id(path)),
        )
    assert leftovers(server, path), "the bytes must still be there"

    # The first sweep comes after expiry_interval (60 s): nothing is deleted yet.
    server.start()
    assert head(server, path).status_code == 410
    assert requests.get(url(server, path), timeout=30).status_code == 410
    assert leftovers(server, path), "the bytes must still be there"

    server.extra_args += ["--expiry-interval", "0.05", "--gone-retention", "0"]
    server.restart()
    wait_for(lambda: not leftovers(server, path), timeout=20,
             what="the sweep to delete the tombstone's bytes")
    wait_for(lambda: head(server, path).status_code == 404, timeout=20,
             what="the sweep to forget the tombstone")


def test_a_final_goes_with_a_partial_whose_termination_was_cut_short(server_process):
    """A partial terminated, but not the unfinished final waiting on it: what a crash left
    when a partial and its finals were removed in separate transactions (now they are
    removed in one). HEAD of the final removes it, since it can never be finished."""
    server = server_process()
    first, second = payload(100 * KIB, seed=64), payload(100 * KIB, seed=65)
    part_a = create(server, len(first), **{"Upload-Concat": "partial"})
    part_b = create(server, len(second), **{"Upload-Concat": "partial"})
    patch(server, part_a, 0, first)
    patch(server, part_b, 0, second[:KIB])
    final = create(server, **{"Upload-Concat": f"final;{part_a} {part_b}"})
    kill(server)

    # What the DELETE of part_b did before the crash: its tombstone, then its bytes gone.
    with database(server) as db:
        db.execute(
            "UPDATE uploads SET status = 'terminated', updated_at = ?, expires_at = NULL "
            "WHERE id = ?",
            (time.time(), upload_id(part_b)),
        )
    data_file(server, part_b).unlink()

    server.start()
    assert head(server, part_b).status_code == 410
    assert head(server, final).status_code == 410
    assert head(server, final).status_code == 410
    assert not data_file(server, final).exists()
    assert head(server, part_a).status_code == 200  # the other part stays
