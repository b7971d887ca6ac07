"""The ``aiotusd`` command line as operators type it: booleans bare, negated or with a value,
global options on either side of a subcommand, and tusd's flags. Real processes."""

from __future__ import annotations

import asyncio
import http.client
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

import pytest
from support.processes import clean_env, free_port, run_cli, wait_listening

from server.config import Settings
from server.database import open_store

pytestmark = pytest.mark.e2e


def _get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
         ) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


class Served:
    """A real server started with some arguments (``--port`` among them), stopped on exit."""

    def __init__(self, tmp_path: Path, port: int, *args: str, **env: str) -> None:
        self.port, self.log = port, tmp_path / "server.log"
        with open(self.log, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", *args], cwd=tmp_path, env=clean_env(**env),
                stdout=log_file, stderr=subprocess.STDOUT,
            )

    def __enter__(self) -> Self:
        wait_listening(self.process, self.port, "aiotusd", self.log.read_text)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text()


# --- booleans ----------------------------------------------------------------------------


@pytest.mark.parametrize("demo", [["--demo"], ["--demo", "true"], ["--demo=yes"], ["-demo"]])
def test_a_boolean_flag_is_true_bare_or_with_a_value_before_another_flag(tmp_path, demo):
    port = free_port()
    args = ["--metrics", *demo, "--port", str(port), "--data-dir", str(tmp_path / "d")]
    with Served(tmp_path, port, *args):
        assert _get(port, "/metrics").status == 200
        assert _get(port, "/").status == 200  # the demo page


def test_no_turns_a_boolean_off_whatever_came_before(tmp_path):
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "d"), "--no-metrics", "--no-demo"]
    with Served(tmp_path, port, *args, AIOTUSD_METRICS="true", AIOTUSD_DEMO="1"):
        assert _get(port, "/metrics").status == 404
        assert _get(port, "/").status == 404


@pytest.mark.parametrize(("args", "needle"), [
    (["--demo=maybe"], "bad value 'maybe' for 'demo' in flag --demo"),
    (["--no-demo=true"], "flag --no-demo takes no value"),
    (["--demo", "maybe"], "unrecognized arguments: maybe"),
])
def test_a_bad_boolean_is_one_line_and_status_2(tmp_path, args, needle):
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("aiotusd: error: ") and needle in result.stderr


# --- subcommands: global options before or after ------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """An SQLite database of aiotusd's, made by the state store itself."""
    settings = Settings().with_values(data_dir=str(tmp_path / "store"))

    async def create() -> None:
        await (await open_store(settings)).close()

    asyncio.run(create())
    return settings.storage.database_path


@pytest.mark.parametrize("order", [
    ["{opt}", "hooks", "list"], ["hooks", "{opt}", "list"], ["hooks", "list", "{opt}"],
    ["--metrics", "{opt}", "hooks", "list"],  # a bare boolean before the subcommand
])
@pytest.mark.parametrize("option", ["--config", "--data-dir", "--database"])
def test_a_subcommand_takes_global_options_before_or_after_it(tmp_path, database, order, option):
    value = {"--config": str(tmp_path / "c.toml"), "--data-dir": str(database.parent),
             "--database": str(database)}[option]
    (tmp_path / "c.toml").write_text(f'data_dir = "{database.parent.as_posix()}"\n')
    args = [part for item in order for part in ([option, value] if item == "{opt}" else [item])]
    result = run_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no hook events waiting\n"


def test_a_subcommand_without_the_database_says_where_it_looked(tmp_path):
    result = run_cli(tmp_path, "hooks", "retry", "--all-dead", "--data-dir", str(tmp_path / "x"))
    assert result.returncode == 1
    assert result.stderr == f"aiotusd: error: no database at {tmp_path / 'x' / 'aiotusd.sqlite3'}\n"
