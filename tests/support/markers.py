"""The markers of ``setup.cfg``, made to hold (a pytest plugin).

- ``all_backends``: a module's tests that use the app (``settings``, ``make_client``,
  ``client``) run once per backend in :data:`BACKENDS`, through the ``storage`` fixture;
  ``filesystem_only("why")`` keeps a test to the filesystem, ``needs("concatenator")`` to
  the backends with that capability.
- ``all_databases``: a test that uses the app runs once per kind of state store in
  :data:`DATABASES` (SQLite, PostgreSQL), through the ``database`` fixture.
- ``also_workers``: a test that starts servers (``server_process``) runs twice: as it is,
  and with every server started with ``--workers 2`` (:data:`WORKERS`). ``pytest
  --server-workers N`` starts the servers of every test with N workers instead of one.
- ``e2e``, ``s3`` and ``postgres``: a test that uses ``server_process``, ``s3_endpoint`` or
  ``postgres_cluster`` without its mark is refused at collection, so that
  ``-m 'not e2e and not s3 and not postgres'`` starts no process, no moto and no
  PostgreSQL.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import pytest

from server.capabilities import Capabilities
from server.config import Settings
from storage_backends import make_backend

BACKENDS = {"filesystem": (), "s3": (pytest.mark.s3,)}
"""Every storage backend, with the marks of its tests."""
DATABASES = {"sqlite": (), "postgresql": (pytest.mark.postgres,)}
"""Every kind of state store, with the marks of its tests."""

WORKERS = 2
"""The workers of the servers of the second run of an ``also_workers`` test."""

MARKED_BY_FIXTURE = {
    "server_process": "e2e", "s3_endpoint": "s3", "postgres_cluster": "postgres"
}
"""The mark a test needs that uses the fixture, itself or through another."""


def backend_params(names: Iterable[str] = BACKENDS) -> list[pytest.ParameterSet]:
    """The backends ``names`` as pytest params, each with its marks: ``-m 'not s3'`` leaves
    S3 out."""
    return [pytest.param(name, marks=BACKENDS[name]) for name in names]


@functools.cache
def capabilities_of(storage: str) -> Capabilities:
    """What the server finds the backend of ``storage`` can do. Asked of a backend made as
    the server makes one, never started: what it can do does not hang on its store."""
    return Capabilities.of(make_backend(Settings().with_values(storage=storage)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--server-workers", type=int, default=1, metavar="N",
        help="start every server of server_process with --workers N (default 1: one process)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    test = metafunc.definition
    if "server_workers" in metafunc.fixturenames and test.get_closest_marker("also_workers"):
        metafunc.parametrize(
            "server_workers", [None, WORKERS], ids=["default", f"workers{WORKERS}"], indirect=True
        )
    if "database" in metafunc.fixturenames and test.get_closest_marker("all_databases"):
        metafunc.parametrize(
            "database", [pytest.param(name, marks=marks) for name, marks in DATABASES.items()],
            indirect=True,
        )
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
    if not names:
        raise pytest.UsageError(f"{test.nodeid}: no backend it may run on has what it needs")
    metafunc.parametrize("storage", backend_params(names), indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} uses {fixture}: mark it {mark}"
        for item in items
        for fixture, mark in MARKED_BY_FIXTURE.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))
