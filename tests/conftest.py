"""Shared fixtures: an in-process app behind aiohttp's test client, and real server processes.

The app stores uploads on the filesystem, or on S3 (moto's server on loopback) for the
``storage`` param that ``support.markers`` gives the tests of ``all_backends`` modules; its
state in SQLite, or in PostgreSQL (a throwaway cluster, ``support.postgres``) for the
``database`` param of the tests marked ``all_databases``.

The helpers the tests import are in the ``support`` package; its ``markers``, ``s3``,
``hooks`` and ``postgres`` modules are plugins too, for their hooks and fixtures.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings
from storage_backends.s3 import S3Settings

# Before the first import of a support module: their asserts say what they compared.
pytest.register_assert_rewrite("support")

from support.http import ClientFactory
from support.processes import ServerProcess, free_port
from support.s3 import s3_settings
from support.storage import FilesystemView, S3View, StorageView

pytest_plugins = ["support.markers", "support.s3", "support.hooks", "support.postgres"]


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> str:
    """The backend of the test's app: "filesystem" unless parametrized (``all_backends``,
    see ``support.markers``)."""
    return str(getattr(request, "param", "filesystem"))


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """The state store of the test's app: "sqlite" unless parametrized (``all_databases``,
    see ``support.markers``)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def settings(
    tmp_path: Path, storage: str, database: str, request: pytest.FixtureRequest
) -> Settings:
    settings = Settings().with_values(data_dir=str(tmp_path / "data"), expiry_interval=3600)
    if database == "postgresql":
        settings = settings.with_values(database=request.getfixturevalue("postgres_url"))
    if storage == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
        settings = settings.with_values(**s3_settings(endpoint, bucket))
    return settings


@pytest.fixture
def storage_view(settings: Settings, request: pytest.FixtureRequest) -> StorageView:
    """What the test's backend holds of uploads: the data files, or S3 and the spool."""
    if settings.storage.backend == "s3":
        return S3View(request.getfixturevalue("s3"), S3Settings.from_settings(settings))
    return FilesystemView(Path(settings.storage.data_dir))


@pytest.fixture
async def make_client(
    aiohttp_client: Any, settings: Settings
) -> AsyncIterator[ClientFactory]:
    """``await make_client(max_size=10)``: a test client for an app with changed settings."""

    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(settings.with_values(**changes)))

    yield make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


@pytest.fixture
def server_workers(request: pytest.FixtureRequest) -> int:
    """How many workers every server of ``server_process`` runs: the test's param (tests
    marked ``also_workers``, see ``support.markers``), else ``--server-workers`` (1)."""
    count = getattr(request, "param", None) or request.config.getoption("server_workers")
    return int(count)


@pytest.fixture
def server_process(
    tmp_path: Path, server_workers: int
) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process("--max-size", "100")``: start a real aiotusd, with
    ``server_workers`` workers; stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        index = len(started)
        server = ServerProcess(
            data_dir=tmp_path / f"server{index}",
            port=free_port(),
            extra_args=list(args),
            log_path=tmp_path / f"server{index}.log",
            workers=server_workers,
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None:
            server.stop(signal.SIGKILL)
