"""Shared fixtures: an in-process app behind aiohttp's test client, and real server processes.

The app stores uploads on the filesystem. In a module marked ``all_backends`` every test
that uses the app (``settings``, ``make_client``, ``client``) runs once per backend: on
the filesystem, and on S3 (moto's server on loopback, marked ``s3``). A test marked
``filesystem_only("why")`` there runs on the filesystem alone, one marked
``needs("concatenator")`` on the backends with that capability.

The helpers the tests import are in the ``support`` package; its ``s3`` and ``hooks``
modules are plugins too, for their fixtures.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.capabilities import Capabilities
from server.config import Settings
from storage_backends import make_backend
from storage_backends.s3 import S3Settings

# Before the first import of a support module: their asserts say what they compared.
pytest.register_assert_rewrite("support")

from support.http import ClientFactory
from support.processes import ServerProcess, free_port
from support.s3 import s3_settings
from support.storage import (
    BACKENDS,
    FilesystemView,
    S3View,
    StorageView,
    backend_params,
)

pytest_plugins = ["support.s3", "support.hooks"]

@functools.cache
def capabilities_of(storage: str) -> Capabilities:
    """What the server finds the backend of ``storage`` can do. Asked of a backend made as
    the server makes one, never started: what it can do does not hang on its store."""
    return Capabilities.of(make_backend(Settings(storage=storage)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the app's tests of an ``all_backends`` module on every backend, or on those of
    them that a test allows (``filesystem_only``, ``needs``)."""
    test = metafunc.definition
    if "storage" not in metafunc.fixturenames or test.get_closest_marker("all_backends") is None:
        return
    names = list(BACKENDS)
    only = test.get_closest_marker("filesystem_only")
    if only is not None:
        if not only.args:
            raise pytest.UsageError(f"{test.nodeid}: filesystem_only needs the reason")
        names = ["filesystem"]
    for needs in test.iter_markers("needs"):
        names = [name for name in names if getattr(capabilities_of(name), needs.args[0])]
    metafunc.parametrize("storage", backend_params(names), indirect=True)


MARKED_BY_FIXTURE = {"server_process": "e2e", "s3_endpoint": "s3"}
"""A test that uses the fixture (or one that uses it) needs the mark, for ``-m`` to leave
it out: ``-m 'not e2e and not s3'`` must start no process and no moto."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} uses {fixture}: mark it {mark}"
        for item in items
        for fixture, mark in MARKED_BY_FIXTURE.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> str:
    """The backend of the test's app: "filesystem" unless parametrized (``all_backends``)."""
    return str(getattr(request, "param", "filesystem"))


@pytest.fixture
def settings(tmp_path: Path, storage: str, request: pytest.FixtureRequest) -> Settings:
    settings = Settings(data_dir=str(tmp_path / "data"), expiry_interval=3600)
    if storage == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
        settings = dataclasses.replace(settings, **s3_settings(endpoint, bucket))
    return settings


@pytest.fixture
def storage_view(settings: Settings, request: pytest.FixtureRequest) -> StorageView:
    """What the test's backend holds of uploads: the data files, or S3 and the spool."""
    if settings.storage == "s3":
        return S3View(request.getfixturevalue("s3"), S3Settings.from_settings(settings))
    return FilesystemView(Path(settings.data_dir))


@pytest.fixture
async def make_client(
    aiohttp_client: Any, settings: Settings
) -> AsyncIterator[ClientFactory]:
    """``await make_client(max_size=10)``: a test client for an app with changed settings."""

    async def make(**changes: Any) -> TestClient:
        return await aiohttp_client(create_app(dataclasses.replace(settings, **changes)))

    yield make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``server_process("--max-size", "100")``: start a real aiotusd; stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        index = len(started)
        server = ServerProcess(
            data_dir=tmp_path / f"server{index}",
            port=free_port(),
            extra_args=list(args),
            log_path=tmp_path / f"server{index}.log",
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None:
            server.stop(signal.SIGKILL)
