"""One SQLite database, one server: a second ``aiotusd`` on the same file refuses to start,
in one line, while the first keeps serving; the lock goes with the process that held it,
however it ended, so that a restart right after ``kill -9`` starts normally.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from support.http import TUS
from support.processes import (
    ServerProcess,
    refused_start,
    run_cli,
)

pytestmark = pytest.mark.e2e




def create_upload(server: ServerProcess) -> str:
    response = requests.post(server.url, headers={**TUS, "Upload-Length": "5"}, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


def offset_of(url: str) -> str:
    response = requests.head(url, headers=TUS, timeout=10)
    assert response.status_code == 200
    return str(response.headers["Upload-Offset"])


def test_a_second_server_on_the_data_dir_of_a_running_one_refuses_to_start_in_one_line(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_process()
    url = create_upload(server)
    line = refused_start(tmp_path, "--data-dir", str(server.data_dir))
    database = server.data_dir / "aiotusd.sqlite3"
    assert " ERROR aiotusd: " in line, line
    assert f"cannot use the database {database}: another aiotusd uses it" in line, line
    assert offset_of(url) == "0"  # the first one serves on
    assert server.process is not None and server.process.poll() is None


def test_a_second_server_with_another_data_dir_but_the_same_database_refuses_to_start(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    database = tmp_path / "shared.sqlite3"
    server_process("--database", str(database))
    line = refused_start(
        tmp_path, "--data-dir", str(tmp_path / "other"), "--database", str(database)
    )
    assert f"cannot use the database {database}: another aiotusd uses it" in line, line


def test_a_server_killed_with_sigkill_starts_again_at_once_on_its_database(
    server_process: Callable[..., ServerProcess]
) -> None:
    server = server_process()
    url = create_upload(server)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()  # no wait for anything: the lock went with the process
    assert offset_of(url) == "0"


@pytest.mark.slow
def test_hooks_commands_work_while_the_server_runs(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_process()
    listed = run_cli(tmp_path, "hooks", "list", "--data-dir", str(server.data_dir))
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "no hook events waiting\n", "")
    retried = run_cli(tmp_path, "hooks", "retry", "--all-dead", "--data-dir", str(server.data_dir))
    assert (retried.returncode, retried.stdout, retried.stderr) == (0, "no dead hook events\n", "")
