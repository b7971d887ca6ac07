"""What a small upload's requests do in Python, counted: work that is the same for every
request of a client or an upload is done once, not again on each request.

Server CPU per small upload is mostly Python function calls, so these tests profile
real requests to the app as aiotusd serves it (behind its own runner, on a loopback
port, in this process) with ``cProfile`` and count the calls made while they were
answered: deterministic where a timing is not. Each exchange runs once first, so that
what is rightly done once is done by then.
"""

from __future__ import annotations

import base64
import contextlib
import cProfile
import dataclasses
import itertools
import pstats
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest
from aiohttp import ClientSession, TCPConnector, web
from support.http import PATCH_HEADERS, TUS

from server.app import create_app
from server.config import Settings
from server.connections import AppRunner
from server.state import Upload

BODY = b"x" * 1024
NUMBERS = itertools.count()


def metadata() -> str:
    """Two pairs, with a file name of its own, as every upload of bench/run.py has."""
    name = base64.b64encode(f"upload-{next(NUMBERS)}.bin".encode()).decode()
    return f"filename {name},filetype YXBwbGljYXRpb24vb2N0ZXQtc3RyZWFt"


@pytest.fixture
async def session(settings: Settings) -> AsyncIterator[tuple[ClientSession, str]]:
    """A client on one keep-alive connection, and the URL of the app's uploads."""
    async with serving(settings) as served:
        yield served


@pytest.fixture
async def hooked_session(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ClientSession, str]]:
    """The same, of a server with post-create and post-finish hooks (in this process)."""
    (tmp_path / "quiet_hooks.py").write_text("async def hook(event):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooked = settings.with_values(
        hooks_python="quiet_hooks:hook", hooks_events="post-create,post-finish"
    )
    async with serving(hooked) as served:
        yield served


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[ClientSession, str]]:
    runner = AppRunner(create_app(settings), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with ClientSession(connector=TCPConnector(limit=1)) as client:
            yield client, f"http://127.0.0.1:{site.port}/files/"
    finally:
        await runner.cleanup()


async def calls_while(exchange: Awaitable[object]) -> Counter[tuple[str, str]]:
    """The Python functions called while ``exchange`` was awaited, as (file name, function
    name), with how many times each was called."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        await exchange
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # not in the stubs
    return Counter({(Path(file).name, name): calls
                    for (file, _, name), (_, calls, *_) in stats.items()})


def calls_in(calls: Counter[tuple[str, str]], file_name: str) -> int:
    return sum(count for (file, _), count in calls.items() if file == file_name)


async def post_and_patch(session: tuple[ClientSession, str]) -> None:
    client, url = session
    headers = {**TUS, "Upload-Length": str(len(BODY)), "Upload-Metadata": metadata()}
    async with client.post(url, headers=headers) as created:
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
    async with client.patch(
        location, data=BODY, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    ) as patched:
        assert patched.status == 204, await patched.text()


async def profiled_upload(session: tuple[ClientSession, str]) -> Counter[tuple[str, str]]:
    """The calls of a POST + PATCH after one like it."""
    await post_and_patch(session)
    return await calls_while(post_and_patch(session))


async def test_a_client_address_is_parsed_once_not_on_every_body(session) -> None:
    calls = await profiled_upload(session)
    assert calls[("limits.py", "_take_client_slot")] == 1  # the per-client share holds
    assert calls_in(calls, "ipaddress.py") == 0, calls


async def test_a_host_seen_before_is_not_validated_again(session) -> None:
    calls = await profiled_upload(session)
    assert calls[("__init__.py", "_check_host")] == 2  # each request's Host is checked
    assert calls[("protocol.py", "is_host")] == 0, calls


async def test_the_connection_layer_adds_no_call_of_its_own_to_a_request(session) -> None:
    """Its deadlines hold (tests/test_slow_clients.py): on a connection that keeps to them
    it only passes requests, data and finished responses through."""
    calls = await profiled_upload(session)
    own = {name for file, name in calls if file == "connections.py"}
    assert own == {"handle", "data_received", "log_access"}, own
    assert calls[("connections.py", "log_access")] == 2


async def test_an_upload_file_is_named_without_pathlib(session) -> None:
    calls = await profiled_upload(session)
    assert calls[("filesystem.py", "create")] == 1 and calls[("filesystem.py", "open_writer")] == 1
    assert calls_in(calls, "pathlib.py") == 0, calls


async def test_an_uploads_metadata_is_decoded_once(session) -> None:
    """Each upload's is new: decoded for its creation, then remembered for the calls to
    the storage backend that its POST and PATCH make (they get the same pairs)."""
    calls = await profiled_upload(session)
    assert calls[("filesystem.py", "create")] == 1 and calls[("filesystem.py", "open_writer")] == 1
    assert calls[("base64.py", "b64decode")] == 2, calls  # one per pair


async def test_a_write_takes_its_turn_without_an_async_generator(session) -> None:
    """The upload's creation and the offset of its body are two writes, each in its turn
    at the gate (server/state/sqlite/writes.py); only the PATCH's upload lock is a
    ``contextlib.asynccontextmanager``."""
    calls = await profiled_upload(session)
    assert calls[("writes.py", "_let_in")] == 2  # the two writes' turns
    assert calls[("contextlib.py", "__aenter__")] == 1, calls


async def test_a_small_uploads_writes_run_on_the_event_loops_thread(session) -> None:
    """Its two writes (the creation, the offset) run where the request runs, none on
    aiosqlite's thread: a hop there and back cost more than the writes themselves."""
    calls = await profiled_upload(session)
    assert calls[("writes.py", "_run_here")] == 2, calls
    assert calls[("core.py", "_execute")] == 0, calls  # aiosqlite.Connection._execute


async def test_a_small_uploads_writes_with_hook_events_run_on_the_event_loops_thread(
    hooked_session,
) -> None:
    """With post hooks, its two writes carry an event each, recorded in the write's
    transaction: that goes with the other writes on the event loop's thread too. As a
    transaction on aiosqlite's thread (a round trip per statement: BEGIN, the write, the
    event, COMMIT) it cost a small upload three times the CPU, and one at a time."""
    calls = await profiled_upload(hooked_session)
    assert calls[("uploads.py", "_write")] >= 2
    assert calls[("database.py", "transaction")] == 0, calls
    assert calls[("outbox.py", "inserts")] == 2, calls  # the events, as the writes' follow-ups


async def test_a_patchs_syncs_go_to_the_kernel_on_no_thread(session) -> None:
    """With fsync always, the PATCH's syncs (its bytes, its new file's directory entry) are
    handed to the kernel as asynchronous requests (storage_backends/kernel_syncs.py): on a
    thread, each cost the GIL's hand-overs to it and back, some 11-15 % of a small upload's
    CPU time (and asyncio.to_thread's way through concurrent.futures some 70,000
    instructions more)."""
    calls = await profiled_upload(session)
    # One call each, each counted again as it resumes.
    assert calls[("kernel_syncs.py", "fdatasync")] == 2, calls
    assert calls[("kernel_syncs.py", "fsync")] == 2, calls
    assert calls[("blocking.py", "submit")] == 0, calls
    assert calls_in(calls, "thread.py") == 0, calls  # concurrent/futures/thread.py


async def test_a_write_or_a_sync_is_waited_for_without_asyncio_shield(session) -> None:
    """A cancelled caller still waits for its write or sync to have run (tests/test_state.py,
    tests/test_blocking.py), on a future that its cancellation does not cancel:
    ``asyncio.shield`` cost each a future, two callbacks and a turn of the event loop."""
    calls = await profiled_upload(session)
    assert calls[("writes.py", "run")] >= 2 and calls[("kernel_syncs.py", "_sync")] == 4
    assert calls[("tasks.py", "shield")] == 0, calls


async def test_a_bodys_stall_check_sets_no_timer_of_its_own(session) -> None:
    """The body's watchdog is watched on the server's deadlines (server/deadlines.py;
    tests/test_slow_clients.py: it still cuts a stalled body off): a timer each cost a
    handle on the event loop's heap and the comparisons of its way in and out."""
    await post_and_patch(session)
    profile = cProfile.Profile()
    profile.enable()
    try:
        await post_and_patch(session)
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]  # not in the stubs
    watched = sum(calls for (file, _, name), (_, calls, *_) in stats.items()
                  if (Path(file).name, name) == ("deadlines.py", "watch"))
    timers = {("base_events.py", "call_at"), ("base_events.py", "call_later")}
    timers_set_by = {
        Path(caller[0]).name
        for (file, _, name), (*_, callers) in stats.items()
        if (Path(file).name, name) in timers
        for caller in callers
    }
    assert watched == 1  # the PATCH's body
    assert "receive.py" not in timers_set_by, timers_set_by


async def test_a_requests_latency_goes_to_its_histogram_without_a_label_lookup(session) -> None:
    calls = await profiled_upload(session)
    assert calls[("metrics.py", "observe")] == 2  # prometheus_client's Histogram.observe
    assert calls[("metrics.py", "labels")] == 0, calls


async def test_a_request_id_is_made_without_the_uuid_module(session) -> None:
    calls = await profiled_upload(session)
    assert calls[("request_ids.py", "request_id_of")] == 2  # tests/test_request_ids.py: its form
    assert calls_in(calls, "uuid.py") == 0, calls


async def test_a_request_holds_its_receiving_slots_without_a_generator(session) -> None:
    """The PATCH's body holds one of the receiving slots and one of its client's
    (tests/test_limits.py: their limits)."""
    calls = await profiled_upload(session)
    assert calls[("limits.py", "_take_client_slot")] == 1
    assert calls[("contextlib.py", "__enter__")] == 0, calls


async def test_an_upload_is_changed_without_dataclasses_replace(session) -> None:
    """Each step hands on a new upload value: :meth:`Upload.but` copies it without the
    field-by-field ``__init__`` of ``dataclasses.replace``."""
    calls = await profiled_upload(session)
    assert calls[("model.py", "but")] >= 2  # the POST's storage record, the PATCH's offset
    assert calls[("dataclasses.py", "replace")] == 0, calls


def test_a_changed_upload_is_the_value_replace_makes() -> None:
    upload = Upload(id="a", length=10, metadata="filename eA==", storage={"path": "a"})
    changed = upload.but(offset=4, storage={"path": "b"})
    assert changed == dataclasses.replace(upload, offset=4, storage={"path": "b"})
    assert upload.offset == 0 and upload.storage == {"path": "a"}  # the original stays
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.offset = 5  # type: ignore[misc]
    with pytest.raises(AssertionError):
        upload.but(ofset=4)
