"""Shared fixtures: an in-process app behind aiohttp's test client, and real server processes.

The helpers the tests import are in the ``support`` package; its ``s3`` and ``hooks``
modules are plugins too, for their fixtures.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings

# Before the first import of a support module: their asserts say what they compared.
pytest.register_assert_rewrite("support")

from support.http import ClientFactory
from support.processes import ServerProcess, free_port

pytest_plugins = ["support.s3", "support.hooks"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), expiry_interval=3600)


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
