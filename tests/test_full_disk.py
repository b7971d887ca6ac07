"""A full disk: a write that hits ENOSPC answers 507 with a one-line reason, the recorded
offset never runs ahead of the bytes stored, and the upload resumes once space is free.

The disk is a real tmpfs of 2 MiB, so ENOSPC comes from the kernel, not from a stand-in.
Where the tests may mount (root, as in CI) the fixture mounts it under ``tmp_path`` and
unmounts it after the test. Where they may not, the server runs in a user and mount
namespace of its own (``unshare``), mounts the tmpfs there, and the test reaches that
filesystem through ``/proc/<pid>/root``. Either way the server is a real ``aiotusd``
process, and the tests talk to it over loopback with ``requests`` and tuspy.

One failure no tmpfs produces on demand, a sync that fails after the writes succeeded
(NFS says ENOSPC only then), is injected at the system call in the last test.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    create_upload,
    head_offset,
    upload_id,
)
from support.processes import free_port, stop_process, wait_listening
from support.storage import data_file, payload
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from server.config import Settings
from storage_backends.kernel_syncs import SYNCS

KIB = 1024
MIB = 1024 * KIB
DISK_SIZE = 2 * MIB
FULL_REASON = "storage is full; try again later\n"
MOUNT_IN_NAMESPACE = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'


@dataclasses.dataclass
class DiskServer:
    """An aiotusd process whose data directory lives on a small tmpfs."""

    process: subprocess.Popen[bytes]
    port: int
    mount_point: Path
    log_path: Path
    in_namespace: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    @property
    def disk(self) -> Path:
        """The tmpfs as this test process sees it."""
        if self.in_namespace:
            return Path(f"/proc/{self.process.pid}/root") / self.mount_point.relative_to("/")
        return self.mount_point

    @property
    def filler(self) -> Path:
        return self.disk / "filler"

    def data_file(self, url: str) -> Path:
        return self.disk / "data" / upload_id(url)

    def upload_files(self) -> list[str]:
        """Names of the upload files in the data directory (the SQLite files left out)."""
        return sorted(
            p.name for p in (self.disk / "data").iterdir() if not p.name.startswith("aiotusd.")
        )

    def free_bytes(self) -> int:
        stat = os.statvfs(self.disk)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take all space but ``leave`` bytes (a multiple of the page size) with a filler file."""
        target = self.free_bytes() - leave
        block = b"\0" * (64 * KIB)
        with open(self.filler, "ab", buffering=0) as filler:
            while filler.tell() < target:
                try:
                    filler.write(block[: target - filler.tell()])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        assert self.free_bytes() == leave

    def free(self) -> None:
        self.filler.unlink()

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_process(self.process, timeout=20)


StartServer = Callable[..., DiskServer]


def _mount(mount_point: Path, options: str) -> str:
    """Mount a tmpfs here; why not, when this process may not (empty when mounted)."""
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        check=False, capture_output=True, text=True, timeout=30,
    )
    if result.returncode == 0:
        return ""
    return (result.stderr.strip().splitlines() or ["mount failed"])[0]


def _unmount(mount_point: Path) -> None:
    result = subprocess.run(
        ["umount", str(mount_point)], check=False, capture_output=True, timeout=30
    )
    if result.returncode != 0:
        # Something still holds a file open: detach now, the kernel frees it once released.
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True, timeout=30)


@pytest.fixture
def disk_server(tmp_path: Path) -> Iterator[StartServer]:
    """``disk_server(database_on_disk=False, inodes=4)``: start aiotusd with its data directory
    (and, if asked, its database) on a fresh 2 MiB tmpfs; both go away after the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    servers: list[DiskServer] = []
    mounted = False

    def start(database_on_disk: bool = True, inodes: int | None = None) -> DiskServer:
        nonlocal mounted
        assert not servers, "one server per test: the tmpfs is its own"
        options = f"size={DISK_SIZE}" + (f",nr_inodes={inodes}" if inodes else "")
        command = [
            sys.executable, "-m", "server", "--port", str(port := free_port()),
            "--data-dir", str(mount_point / "data"), "--expiry-interval", "3600", "--metrics", "true",
        ]
        if database_on_disk:
            command += ["--database", str(tmp_path / "aiotusd.sqlite3")]
        log_path = tmp_path / "server.log"
        refused = _mount(mount_point, options)
        mounted = not refused
        if refused:
            log_path.write_text(f"{refused}; the server mounts its tmpfs in a namespace\n")
            command = [
                "unshare", "--user", "--map-root-user", "--mount",
                "sh", "-c", MOUNT_IN_NAMESPACE, "sh", options, str(mount_point), *command,
            ]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
            )
        server = DiskServer(process, port, mount_point, log_path, in_namespace=not mounted)
        servers.append(server)
        wait_listening(process, port, "aiotusd on a small tmpfs", server.log)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        if mounted:
            _unmount(mount_point)


def create(server: DiskServer, length: int) -> str:
    response = requests.post(server.url, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
    assert response.status_code == 201, response.text
    return response.headers["Location"]


def patch(url: str, offset: int, body: bytes) -> requests.Response:
    return requests.patch(
        url, data=body, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}, timeout=60
    )


def offset_of(url: str) -> int:
    response = requests.head(url, headers=TUS, timeout=30)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def assert_full(response: requests.Response) -> None:
    """507 with the one-line plain-text reason."""
    assert response.status_code == 507, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text == FULL_REASON


def assert_resumes_once_freed(server: DiskServer, url: str, offset: int, data: bytes) -> None:
    """With space free again, the rest of ``data`` goes up from ``offset`` and all is stored."""
    server.free()
    resumed = patch(url, offset, data[offset:])
    assert resumed.status_code == 204, resumed.text
    assert_stored(server, url, data)


def assert_stored(server: DiskServer, url: str, data: bytes) -> None:
    """The upload is finished and holds exactly ``data``: by HEAD, by GET and on disk."""
    response = requests.head(url, headers=TUS, timeout=30)
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(data))
    download = requests.get(url, timeout=60)
    assert download.status_code == 200
    assert download.content == data
    assert server.data_file(url).read_bytes() == data


def assert_kept_prefix(server: DiskServer, url: str, data: bytes) -> int:
    """HEAD's offset is backed by the file: the file holds at least that many bytes and they
    are the first bytes sent. Returns the offset."""
    offset = offset_of(url)
    stored = server.data_file(url).read_bytes()
    assert len(stored) >= offset
    assert stored[:offset] == data[:offset]
    return offset


@pytest.mark.e2e
def test_a_patch_that_fills_the_disk_answers_507_keeps_its_bytes_and_resumes(
    disk_server: StartServer,
) -> None:
    server = disk_server()
    data = payload(MIB, seed=61)
    url = create(server, len(data))
    server.fill(leave=256 * KIB)

    assert_full(patch(url, 0, data))
    offset = assert_kept_prefix(server, url, data)
    # Every byte the disk took was synced and recorded: the offset is the file's size.
    assert 0 < offset == server.data_file(url).stat().st_size <= 256 * KIB
    # Still full: a retry at that offset gets 507 again and changes nothing.
    assert_full(patch(url, offset, data[offset:]))
    assert offset_of(url) == offset

    server.free()
    resumed = patch(url, offset, data[offset:])
    assert resumed.status_code == 204, resumed.text
    assert resumed.headers["Upload-Offset"] == str(len(data))
    assert_stored(server, url, data)


@pytest.mark.e2e
def test_creation_with_upload_on_a_full_disk_answers_507_with_its_location(
    disk_server: StartServer,
) -> None:
    server = disk_server()
    data = payload(MIB, seed=62)
    server.fill(leave=128 * KIB)

    response = requests.post(
        server.url, data=data,
        headers={**PATCH_HEADERS, "Upload-Length": str(len(data))}, timeout=60,
    )
    assert_full(response)
    url = response.headers["Location"]
    offset = int(response.headers["Upload-Offset"])
    assert 0 < offset <= 128 * KIB
    assert assert_kept_prefix(server, url, data) == offset

    assert_resumes_once_freed(server, url, offset, data)


@pytest.mark.e2e
def test_an_empty_upload_is_created_on_a_full_disk_and_its_first_byte_gets_507(
    disk_server: StartServer,
) -> None:
    """A new upload takes no space until it gets bytes, so creation still succeeds."""
    server = disk_server()
    server.fill()
    data = payload(64 * KIB, seed=63)
    url = create(server, len(data))
    assert_full(patch(url, 0, data))
    assert offset_of(url) == 0
    assert server.data_file(url).stat().st_size == 0

    server.free()
    assert patch(url, 0, data).status_code == 204
    assert_stored(server, url, data)


@pytest.mark.e2e
def test_creation_when_no_file_can_be_created_answers_507_and_leaves_nothing(
    disk_server: StartServer,
) -> None:
    # Inodes for the root, the data directory and two upload files.
    server = disk_server(inodes=4)
    created = [create(server, 10) for _ in range(2)]
    refused = requests.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=30)
    assert_full(refused)
    assert "Location" not in refused.headers
    assert server.upload_files() == sorted(upload_id(url) for url in created)
    assert "Traceback" not in server.log()

    # Terminating an upload deletes its file, which frees an inode for the next one.
    deleted = requests.delete(created[0], headers=TUS, timeout=30)
    assert deleted.status_code == 204
    url = create(server, 2)
    assert patch(url, 0, b"ok").status_code == 204
    assert_stored(server, url, b"ok")


@pytest.mark.e2e
def test_a_database_on_the_full_disk_answers_507_and_never_records_lost_bytes(
    disk_server: StartServer,
) -> None:
    """When the database shares the full disk, recording the offset fails too ("database or
    disk is full"): that is a 507 as well, and the recorded offset stays where it was."""
    server = disk_server(database_on_disk=False)
    data = payload(MIB, seed=64)
    url = create(server, len(data))
    server.fill(leave=128 * KIB)

    # The data file takes the last 128 KiB; then the database cannot grow its WAL.
    assert_full(patch(url, 0, data))
    assert "database or disk is full" in server.log()
    offset = assert_kept_prefix(server, url, data)
    assert offset == 0 < server.data_file(url).stat().st_size

    # Nothing new can be recorded, and nothing is left behind by trying.
    files = server.upload_files()
    assert_full(requests.post(server.url, headers={**TUS, "Upload-Length": "1"}, timeout=30))
    assert server.upload_files() == files
    assert "Traceback" not in server.log()
    # Both refusals count as storage errors.
    metrics = requests.get(url.split("/files/")[0] + "/metrics", timeout=30).text
    assert re.search(r"^aiotusd_storage_errors_total 2\.0$", metrics, re.MULTILINE), metrics

    assert_resumes_once_freed(server, url, offset, data)


@pytest.mark.e2e
def test_creation_with_upload_when_the_database_fills_up_answers_507_with_its_offset(
    disk_server: StartServer,
) -> None:
    """The new row still fits, the body takes the rest of the disk, and the offset cannot be
    recorded: the client gets the upload's location and the offset that is recorded."""
    server = disk_server(database_on_disk=False)
    data = payload(MIB, seed=66)
    server.fill(leave=128 * KIB)

    response = requests.post(
        server.url, data=data,
        headers={**PATCH_HEADERS, "Upload-Length": str(len(data))}, timeout=60,
    )
    assert_full(response)
    assert "database or disk is full" in server.log()
    url = response.headers["Location"]
    assert response.headers["Upload-Offset"] == "0"
    assert assert_kept_prefix(server, url, data) == 0 < server.data_file(url).stat().st_size

    server.free()
    resumed = patch(url, 0, data)
    assert resumed.status_code == 204, resumed.text
    assert_stored(server, url, data)


@pytest.mark.e2e
def test_tuspy_resumes_an_upload_that_filled_the_disk(disk_server: StartServer) -> None:
    server = disk_server()
    data = payload(MIB + 12345, seed=65)
    server.fill(leave=512 * KIB)
    uploader = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), chunk_size=256 * KIB
    )
    with pytest.raises(TusCommunicationError) as failure:
        uploader.upload()
    assert failure.value.status_code == 507
    offset = assert_kept_prefix(server, uploader.url, data)
    assert 256 * KIB <= offset <= 512 * KIB

    server.free()
    resumed = tus_client.TusClient(server.url).uploader(
        file_stream=io.BytesIO(data), url=uploader.url, chunk_size=256 * KIB
    )
    assert resumed.offset == offset  # asked the server with HEAD
    resumed.upload()
    assert_stored(server, uploader.url, data)


async def test_a_failed_sync_is_not_taken_back_by_the_next_one(
    make_client: ClientFactory, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a failed writeback (NFS says ENOSPC only when syncing) to one fdatasync;
    the next one succeeds with those bytes lost. No filesystem here fails a sync on demand, so
    this test alone injects the failure, where the writer asks for the sync: the first fails."""
    synced: list[int] = []
    real_fdatasync = SYNCS.fdatasync

    async def fdatasync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        await real_fdatasync(fd)

    monkeypatch.setattr(SYNCS, "fdatasync", fdatasync)
    client = await make_client()
    path = await create_upload(client, 10)
    headers = {**PATCH_HEADERS, "Upload-Offset": "0"}

    response = await client.patch(path, data=b"0123456789", headers=headers)
    assert response.status == 507 and await response.text() == FULL_REASON
    assert len(synced) == 1  # the failed sync was not asked again
    assert await head_offset(client, path) == "0"

    response = await client.patch(path, data=b"0123456789", headers=headers)
    assert response.status == 204
    assert await head_offset(client, path) == "10"
    assert data_file(settings, path).read_bytes() == b"0123456789"
