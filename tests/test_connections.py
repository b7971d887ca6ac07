"""aiohttp's internals that server.connections reads are still there, as it reads them.

aiohttp does not promise them; this test fails on a release that renamed or dropped one,
before a server built on it would silently lose a deadline or a connection count."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestHandler

from server import connections


def test_the_request_handler_has_the_attributes_the_connections_read():
    slots = set()
    for cls in RequestHandler.__mro__:
        slots |= set(getattr(cls, "__slots__", ()))
    for name in ("_messages", "_waiter", "_current_request", "_request_in_progress",
                 "_lingering_time", "_loop"):
        assert name in slots, name
    for method in ("data_received", "connection_made", "connection_lost", "pause_writing",
                   "resume_writing", "log_access", "handle_error", "log_exception"):
        assert callable(getattr(RequestHandler, method)), method


def test_the_server_runner_and_site_have_what_the_connections_use():
    assert callable(web.AppRunner._make_server)
    site_slots = set()
    for cls in web.SockSite.__mro__:
        site_slots |= set(getattr(cls, "__slots__", ()))
    for name in ("_runner", "_sock", "_ssl_context", "_backlog", "_server"):
        assert name in site_slots, name


def test_a_request_keeps_its_remote_in_its_cache():
    request = make_mocked_request("GET", "/")
    assert request.remote is None  # read, and so cached, before it is replaced
    assert isinstance(request._cache, dict)
    request._cache["remote"] = "203.0.113.9"
    assert request.remote == "203.0.113.9"


async def test_a_server_made_by_the_runner_keeps_its_arguments():
    runner = connections.AppRunner(web.Application(), handle_signals=False)
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, web.Server)
        assert isinstance(server._kwargs, dict)
        assert isinstance(server(), connections.RequestHandler)
    finally:
        await runner.cleanup()


def test_the_installed_aiohttp_is_one_the_project_allows():
    major, minor = (int(part) for part in aiohttp.__version__.split(".")[:2])
    assert (major, minor) == (3, 14), aiohttp.__version__
