"""The ``fsync`` setting: what is synced before an offset is recorded, and what survives."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from support.http import PATCH_HEADERS, TUS, ClientFactory, create_upload, head_offset
from support.storage import data_file, payload

from server.context import CONTEXT
from server.state import StateStore, Upload
from storage_backends import filesystem, kernel_syncs
from storage_backends.kernel_syncs import SYNCS

MIB = 1024 * 1024


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the sync calls made (``fdatasync``, ``fsync``, ``fsync-directory``),
    and ``commit`` for each offset recorded; they still sync and record."""
    calls: list[str] = []

    Sync = Callable[[int], Awaitable[None]]

    def counting(name: str, real: Sync) -> Sync:
        async def sync(fd: int) -> None:
            directory = stat.S_ISDIR(os.fstat(fd).st_mode)
            calls.append(f"{name}-directory" if directory else name)
            await real(fd)

        return sync

    # The syncs go to the kernel (storage_backends/kernel_syncs.py).
    monkeypatch.setattr(SYNCS, "fdatasync", counting("fdatasync", SYNCS.fdatasync))
    monkeypatch.setattr(SYNCS, "fsync", counting("fsync", SYNCS.fsync))
    save_progress = StateStore.save_progress

    async def recording(self: StateStore, *args: Any, **kwargs: Any) -> Upload:
        calls.append("commit")
        return await save_progress(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "save_progress", recording)
    return calls


@pytest.mark.parametrize("fsync", ["always", "none"])
async def test_data_is_synced_before_its_offset_is_recorded_only_with_fsync_always(
    make_client: ClientFactory, syncs: list[str], fsync: str
) -> None:
    client = await make_client(fsync=fsync, commit_bytes=MIB)
    data = payload(4 * MIB, seed=5)
    path = await create_upload(client, len(data))
    syncs.clear()
    for offset in (0, 3 * MIB):
        end = min(offset + 3 * MIB, len(data))
        response = await client.patch(
            path, data=data[offset:end], headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}
        )
        assert response.status == 204
    assert data_file(client.app[CONTEXT].settings, path).read_bytes() == data
    if fsync == "always":
        # One at the end of each PATCH, and at least one while the first 3 MiB arrived.
        assert syncs.count("fdatasync") >= 3
    else:
        assert set(syncs) == {"commit"}


async def test_a_new_files_directory_entry_is_synced_before_its_first_offset_is_recorded(
    make_client: ClientFactory, syncs: list[str]
) -> None:
    client = await make_client(fsync="always")
    data = payload(2000, seed=8)
    path = await create_upload(client, len(data))
    # Creating costs no sync: an upload at offset 0 has no byte to lose.
    assert syncs == []
    for offset in (0, 1000):
        response = await client.patch(
            path, data=data[offset : offset + 1000],
            headers={**PATCH_HEADERS, "Upload-Offset": str(offset)},
        )
        assert response.status == 204
    first_commit = syncs.index("commit")
    assert syncs[:first_commit] == ["fdatasync", "fsync-directory"]
    # Later bytes of the same file need no directory sync.
    assert "fsync-directory" not in syncs[first_commit:]
    assert data_file(client.app[CONTEXT].settings, path).read_bytes() == data


async def test_a_concatenated_files_directory_entry_is_synced_before_it_is_recorded(
    make_client: ClientFactory, syncs: list[str]
) -> None:
    client = await make_client(fsync="always")
    parts = []
    for data in (b"first ", b"second"):
        path = await create_upload(client, len(data), **{"Upload-Concat": "partial"})
        response = await client.patch(
            path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
        )
        assert response.status == 204
        parts.append(path)
    syncs.clear()
    final = await create_upload(client, None, **{"Upload-Concat": "final;" + " ".join(parts)})
    # The final's bytes are copied and synced on a thread, its new entry by the kernel.
    assert "fsync-directory" in syncs
    assert data_file(client.app[CONTEXT].settings, final).read_bytes() == b"first second"


async def test_files_made_before_a_directory_sync_began_share_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    synced: list[str] = []

    async def held_sync(directory: str) -> None:
        synced.append(directory)
        started.set()
        await asyncio.wait_for(release.wait(), 10)

    monkeypatch.setattr(filesystem, "_fsync_directory", held_sync)
    directory_sync = filesystem.DirectorySync(tmp_path)
    before = [directory_sync.ticket() for _ in range(10)]
    waiting = [asyncio.create_task(directory_sync.wait(t)) for t in before]
    await asyncio.wait_for(started.wait(), 10)
    # Made while the sync runs: not covered by it, so one more sync follows, for all of them.
    during = [directory_sync.ticket() for _ in range(5)]
    waiting += [asyncio.create_task(directory_sync.wait(t)) for t in during]
    release.set()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert synced == [str(tmp_path)] * 2
    await directory_sync.wait(during[0])
    assert len(synced) == 2


async def test_files_made_before_a_failed_directory_sync_are_never_counted_as_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes: list[OSError | None] = [OSError(errno.EIO, "Input/output error"), None]
    synced: list[str] = []

    async def flaky_sync(directory: str) -> None:
        synced.append(directory)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(filesystem, "_fsync_directory", flaky_sync)
    directory_sync = filesystem.DirectorySync(tmp_path)
    before = directory_sync.ticket()
    with pytest.raises(OSError, match="Input/output error"):
        await directory_sync.wait(before)
    after = directory_sync.ticket()
    await directory_sync.wait(after)  # a sync of its own, which works
    assert synced == [str(tmp_path)] * 2
    # It says nothing of the entries the failed one may have dropped.
    with pytest.raises(OSError, match="Input/output error") as raised:
        await directory_sync.wait(before)
    assert raised.value.errno == errno.EIO
    assert len(synced) == 2


async def test_a_patch_whose_sync_the_disk_never_finishes_is_answered_503_and_lets_go(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk or file server that hangs: the PATCH is answered 503 (try again later) once
    its sync took kernel_syncs.SYNC_SECONDS (here 0.5 s), records nothing, and lets go of
    the upload, which the next PATCH resumes from the recorded offset. Before, it waited
    for ever, holding the upload's lock."""
    monkeypatch.setattr(kernel_syncs, "SYNC_SECONDS", 0.5)
    hung: list[int] = []
    submit = kernel_syncs._Kernel.submit

    def first_fdatasync_hangs(self: Any, fd: int, opcode: int, done: Any) -> int:
        if opcode == kernel_syncs._IOCB_CMD_FDSYNC and not hung:
            hung.append(fd)
            return 0  # taken, and never completed
        return submit(self, fd, opcode, done)

    monkeypatch.setattr(kernel_syncs._Kernel, "submit", first_fdatasync_hangs)
    client = await make_client()
    path = await create_upload(client, 10)
    headers = {**PATCH_HEADERS, "Upload-Offset": "0"}
    response = await asyncio.wait_for(client.patch(path, data=b"0123456789", headers=headers), 10)
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "30"
    assert hung and await head_offset(client, path) == "0"
    response = await client.patch(path, data=b"0123456789", headers=headers)
    assert response.status == 204
    assert await head_offset(client, path) == "10"


async def test_an_empty_upload_whose_file_a_power_cut_took_downloads_empty(
    make_client: ClientFactory,
) -> None:
    client = await make_client(fsync="always")
    path = await create_upload(client, 0)
    data_file(client.app[CONTEXT].settings, path).unlink()
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.e2e
def test_with_fsync_none_acknowledged_bytes_survive_a_kill_9(server_process: Any) -> None:
    server = server_process("--fsync", "none")
    data = payload(3 * MIB, seed=6)
    response = requests.post(server.url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=30)
    url = response.headers["Location"]
    patched = requests.patch(
        url, data=data[: 2 * MIB], headers={**PATCH_HEADERS, "Upload-Offset": "0"}, timeout=30
    )
    assert patched.status_code == 204 and patched.headers["Upload-Offset"] == str(2 * MIB)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()
    head = requests.head(url, headers=TUS, timeout=30)
    assert head.headers["Upload-Offset"] == str(2 * MIB)
    patched = requests.patch(
        url, data=data[2 * MIB :], headers={**PATCH_HEADERS, "Upload-Offset": str(2 * MIB)},
        timeout=30,
    )
    assert patched.status_code == 204
    assert requests.get(url, timeout=30).content == data
