"""tus-js-client's IETF draft protocols (``ietf-draft-03`` sends interop version 5,
``ietf-draft-05`` sends 6) in Node.js against a real aiotusd.

The client comes from the npm registry at the version ``tests/node/package-lock.json``
pins, installed with ``npm ci`` once per run when it is not there yet.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from support.http import TUS
from support.processes import ServerProcess

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).parent / "node"
PROTOCOLS = ["ietf-draft-03", "ietf-draft-05"]
CHUNK = 64 * 1024


@pytest.fixture(scope="session")
def node_client() -> Path:
    """``tests/node`` with its packages installed."""
    if not (NODE_DIR / "node_modules" / "tus-js-client").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=300, capture_output=True)
    return NODE_DIR


def run_upload(
    node_client: Path, server: ServerProcess, protocol: str, file: Path, mode: str
) -> list[dict[str, Any]]:
    """Run ``draft_upload.mjs``; its events, once it succeeded."""
    done = subprocess.run(
        ["node", "draft_upload.mjs", server.url, protocol, str(file), str(CHUNK), mode],
        check=False, cwd=node_client, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert done.returncode == 0, (done.stdout, done.stderr, server.log()[-3000:])
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def payload_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(5 * CHUNK + 1234)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["whole", "with-data", "abort-resume"])
def test_tus_js_client_uploads_with_the_draft(
    node_client: Path,
    server_process: Callable[..., ServerProcess],
    payload_file: tuple[Path, bytes],
    protocol: str,
    mode: str,
) -> None:
    server = server_process()
    file, data = payload_file
    events = run_upload(node_client, server, protocol, file, mode)
    url = events[-1]["url"]
    assert events[-1]["event"] == "done"
    if mode == "abort-resume":
        aborted = events[0]
        assert (aborted["event"], aborted["url"], aborted["offset"]) == ("aborted", url, CHUNK)
        # Resumed from the offset the draft's HEAD gave (204; tus answers 200).
        assert f"HEAD {url[url.index('/files/'):]} 204 " in server.log()
    # The upload a draft client made, read with tus.
    state = requests.head(url, headers=TUS, timeout=10)
    assert state.status_code == 200
    assert state.headers["Upload-Offset"] == state.headers["Upload-Length"] == str(len(data))
    assert requests.get(url, timeout=30).content == data


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tus_js_client_takes_progress_104s_in_its_stride(
    node_client: Path,
    server_process: Callable[..., ServerProcess],
    payload_file: tuple[Path, bytes],
    protocol: str,
) -> None:
    """With a commit every 16 KiB, an append of a 64 KiB chunk may get progress 104s
    before its answer: tus-js-client, on Node's HTTP client, goes on past them."""
    server = server_process("--commit-bytes", "16KiB")
    file, data = payload_file
    events = run_upload(node_client, server, protocol, file, "whole")
    url = events[-1]["url"]
    assert requests.get(url, timeout=30).content == data
