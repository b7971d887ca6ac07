"""The ``fsync`` setting: what is synced before an offset is recorded, and what survives."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import requests
from conftest import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    create_upload,
    data_file,
    payload,
)

from server.context import CONTEXT

MIB = 1024 * 1024


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the sync calls made (``fdatasync``, ``fsync``); they still sync."""
    calls: list[str] = []

    def counting(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            calls.append(name)
            real(fd)

        return sync

    monkeypatch.setattr(os, "fdatasync", counting("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", counting("fsync", os.fsync))
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
        assert syncs == []


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
