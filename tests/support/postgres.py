"""A throwaway PostgreSQL cluster on loopback for the tests (also a pytest plugin).

Debian's server binaries make a cluster in a temporary directory, listening on 127.0.0.1
and a free port only, with ``fsync`` off: its data is worth nothing after the session.
Loopback connections are trusted, except for the role :data:`PASSWORD_ROLE`, which must
give its password (for the tests of a refused login). PostgreSQL refuses to run as root,
so as root the cluster belongs to the ``postgres`` user, as Debian's package makes it.

Each test gets a database of its own (``CREATE DATABASE``, a few tens of milliseconds),
so that tests never see each other's rows. Tests that use these fixtures are marked
``postgres`` (``support.markers`` refuses them otherwise): ``-m 'not postgres'`` leaves
them out.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.processes import free_port

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
"""Debian's ``initdb`` of each PostgreSQL version installed, oldest first."""
INSTALL = "install Debian's postgresql package (apt-get install postgresql; .ci/run does)"
PASSWORD_ROLE, PASSWORD = "with_password", "right-password"
SUPERUSER = "postgres"
START_SECONDS = 60


def _as_cluster_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` user when this process is root (PostgreSQL will not
    run as root), else as it is."""
    return ["runuser", "-u", SUPERUSER, "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str, timeout: float = START_SECONDS) -> None:
    """Run ``argv`` to its end; fail the test session with its output when it fails."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}", False)


HBA = f"""\
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
local all all trust
"""


@dataclass
class Cluster:
    """A running cluster: its directory, its port, and SQL run as its superuser."""

    directory: Path
    port: int
    bin: Path

    def url(self, database: str, user: str = SUPERUSER, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run ``statement`` with psql as the superuser; what it printed (unaligned)."""
        done = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database,
             "-c", statement],
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"psql {statement!r}: {done.stderr}"
        return done.stdout.strip()

    def start(self) -> None:
        _run(_as_cluster_owner([
            str(self.bin / "pg_ctl"), "start", "-w", "-t", str(START_SECONDS), "-s",
            "-D", str(self.directory / "data"), "-l", str(self.directory / "server.log"),
            "-o", " ".join(self.options()),
        ]), "starting PostgreSQL")

    def options(self) -> list[str]:
        """The server's settings: loopback only, and no syncing of data worth nothing."""
        return [
            "-c listen_addresses=127.0.0.1", f"-p {self.port}",
            f"-c unix_socket_directories={self.directory}", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off", "-c max_connections=200",
        ]

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` drops everything, ``fast`` first ends every
        session (each client is told: "terminating connection due to administrator
        command"), as an operator's restart does."""
        _run(_as_cluster_owner([
            str(self.bin / "pg_ctl"), "stop", "-w", "-s", "-m", mode,
            "-D", str(self.directory / "data"),
        ]), "stopping PostgreSQL")


def make_cluster(directory: Path) -> Cluster:
    """A new cluster in ``directory`` (owned by the cluster's user), started."""
    if not BINARIES:
        pytest.fail(f"PostgreSQL's server binaries are not in /usr/lib/postgresql: {INSTALL}",
                    False)
    binaries = BINARIES[-1].parent
    if os.geteuid() == 0:
        shutil.chown(directory, SUPERUSER, SUPERUSER)
    _run(_as_cluster_owner([
        str(binaries / "initdb"), "-D", str(directory / "data"), "-U", SUPERUSER,
        "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C",
    ]), "initdb")
    (directory / "data" / "pg_hba.conf").write_text(HBA)
    cluster = Cluster(directory, free_port(), binaries)
    cluster.start()
    cluster.sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
    return cluster


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A cluster for the block, stopped and removed at its end."""
    # Not under pytest's own temporary directory: only root may enter that one.
    directory = Path(tempfile.mkdtemp(prefix="aiotusd-postgres-"))
    try:
        cluster = make_cluster(directory)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """The session's cluster."""
    with throwaway_cluster() as cluster:
        yield cluster


_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """The URL of an empty database of the test's own (the cluster's superuser, no password)."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    postgres_cluster.sql(f"CREATE DATABASE {name}")
    return postgres_cluster.url(name)
