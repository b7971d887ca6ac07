"""``--workers N``: N real processes serving one port under a supervisor.

Which worker takes a connection is the kernel's choice; the tests choose for it by
stopping one worker (SIGSTOP): a stopped process accepts nothing, so every new
connection goes to the other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from support import rawhttp
from support.hooks import Receiver
from support.http import PATCH_HEADERS, upload_id
from support.metrics import assert_plausible_process, samples
from support.processes import (
    ServerProcess,
    clean_env,
    free_port,
    refused_start,
    run_cli,
)
from support.rawhttp import MIB
from support.storage import data_file, file_size, payload
from support.waiting import poll, wait_for

from server.config import Settings
from server.database import HOST_LOCKS_SUFFIX
from server.host_locks import _FLOCK, byte_of
from server.metrics import PUBLISH_SECONDS
from server.workers import share_of

pytestmark = pytest.mark.e2e



def workers_of(server: ServerProcess) -> list[int]:
    """The pids of the server's workers: the children of its process."""
    assert server.process is not None
    pid = server.process.pid
    return sorted(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text()
                  .split())


def state_of(pid: int) -> str:
    """The process's state letter (R, S, T for stopped, Z for a zombie), "" once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def gone(pid: int) -> bool:
    return state_of(pid) in ("", "Z", "X")


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """The worker ``pid`` stopped (it accepts no connection) for the block."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: state_of(pid) == "T", 10, f"worker {pid} to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection for every request, so that the kernel hands
    each to a worker afresh."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s


async def create(session: aiohttp.ClientSession, server: ServerProcess, body: bytes = b"") -> str:
    headers = {**PATCH_HEADERS, "Upload-Length": "10"}
    async with session.post(server.url, data=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        return response.headers["Location"]


async def created_total(session: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return next(line for line in text.splitlines()
                if line.startswith("aiotusd_uploads_created_total ")).split()[1]


def outbox_events(server: ServerProcess) -> int:
    """Events in the server's outbox, read from its SQLite file as it stands."""
    database = server.data_dir / "aiotusd.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM hook_outbox").fetchone()[0])


def start_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.log().splitlines() if "listening on" in line]


def with_workers(
    server_process: Callable[..., ServerProcess], count: int, *args: str
) -> ServerProcess:
    """A server with ``count`` workers, once every one serves: the port takes connections
    once the first does, the start-up line comes once all do."""
    server = server_process("--workers", str(count), *args)
    wait_for(lambda: start_lines(server), 20, "the start-up line")
    assert len(workers_of(server)) == count
    return server


async def test_two_workers_serve_one_port_and_metrics_give_the_server_s_totals(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = with_workers(server_process, 2, "--metrics", "true")
    assert len(start_lines(server)) == 1
    assert start_lines(server)[0].endswith(
        f" INFO aiotusd: aiotusd listening on {server.url}, workers 2"
    )
    first, second = workers_of(server)
    with paused(second):
        url = await create(session, server, b"hello")  # by the first worker
        await create(session, server)
        await create(session, server)
        # A worker writes its own counts before it answers: now, not within a second.
        assert await created_total(session, server) == "3.0"
    with paused(first):
        async with session.patch(
            url, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "5"}
        ) as response:
            assert (response.status, response.headers["Upload-Offset"]) == (204, "10")
        await create(session, server)
        assert await created_total(session, server) == "4.0"  # the second one's answer
        async with session.get(url) as response:
            assert await response.read() == b"helloworld"
    with paused(second):
        assert await created_total(session, server) == "4.0"  # the first one's answer


def counted_in_files(directory: Path) -> float:
    """``aiotusd_uploads_created_total`` as the workers' files in ``directory`` sum it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    return registry.get_sample_value("aiotusd_uploads_created_total") or 0.0


@pytest.mark.slow
async def test_a_worker_writes_its_counts_every_second_and_as_it_stops(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    temporary = tmp_path / "tmp"  # where the server keeps its metrics' files
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    server = with_workers(server_process, 2, "--metrics", "true")
    [directory] = temporary.iterdir()
    first, second = workers_of(server)
    with paused(second):
        await create(session, server)  # by the first worker, which nobody asks for /metrics
        await poll(lambda: counted_in_files(directory) == 1.0, "the count in the files",
                   timeout=5 * PUBLISH_SECONDS)
        await create(session, server)
        os.kill(first, signal.SIGTERM)  # within the second: written as it stops
        wait_for(lambda: gone(first), 20, "the first worker to stop")
        assert counted_in_files(directory) == 2.0


async def test_metrics_tell_each_worker_s_process_metrics_by_pid(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = with_workers(server_process, 2, "--metrics", "true")
    async with session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
        metrics = samples(await response.text())
    for pid in workers_of(server):
        assert_plausible_process(metrics, pid, labelled=True)
    labelled = {labels for name, labels in metrics if name == "process_open_fds"}
    assert labelled == {(("pid", str(pid)),) for pid in workers_of(server)}


async def test_a_worker_that_dies_is_started_again_and_the_server_serves_on(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = with_workers(server_process, 2)
    first, second = workers_of(server)
    os.kill(second, signal.SIGKILL)
    with paused(first):  # a request the new worker answers
        await poll(lambda: len(set(workers_of(server)) - {first, second}) == 1,
                   "a worker in place of the one killed", timeout=10)
        await create(session, server)
    assert f"worker 1 (pid {second}) was killed by SIGKILL; starting it again in 0.5 s" in (
        server.log()
    )
    assert len(start_lines(server)) == 1


async def test_sigterm_stops_every_worker_and_the_server_exits_0(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = with_workers(server_process, 3)
    await create(session, server)
    workers = workers_of(server)
    assert await asyncio.to_thread(server.stop, signal.SIGTERM) == 0
    assert all(gone(pid) for pid in workers)
    told = [line.split(" INFO aiotusd: ")[1] for line in server.log().splitlines()
            if " INFO aiotusd: " in line]
    # The supervisor's, once: the start-up lines, then the stop.
    stop = told.index("shutting down")
    assert [line.split(":")[0] for line in told[:stop]] == [
        "aiotusd listening on http", "storage", "database"]
    assert told[stop:] == ["shutting down", "stopped"]



@pytest.mark.slow
def test_workers_share_the_database_lock_and_stop_when_their_supervisor_is_killed(
    server_process: Callable[..., ServerProcess], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    temporary = tmp_path / "tmp"  # where the server keeps its metrics' files
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    server = with_workers(server_process, 2)
    assert [path.name[:16] for path in temporary.iterdir()] == ["aiotusd-metrics-"]
    line = refused_start(tmp_path, "--port", str(free_port()), "--data-dir", str(server.data_dir))
    assert "another aiotusd uses it" in line, line
    workers = workers_of(server)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: all(gone(pid) for pid in workers), 20, "the orphaned workers to stop")
    assert list(temporary.iterdir()) == []  # the workers removed the metrics' files
    server.start()  # the lock went with the last of them
    wait_for(lambda: len(start_lines(server)) == 2, 20, "the second start-up line")


_BREAK_WORKERS = """
import server.app

def _broken(settings, hooks=None, worker=None):
    if worker is not None:
        raise RuntimeError("a bug in a worker's start")
    return _real(settings, hooks, worker)

_real, server.app.create_app = server.app.create_app, _broken
"""


def test_a_worker_that_fails_at_a_bug_says_where(tmp_path: Path) -> None:
    """Not a setting or something unusable (those are one line): a bug. A worker ends with
    ``os._exit``, before Python would print what it raised, so it logs it itself."""
    (tmp_path / "sitecustomize.py").write_text(_BREAK_WORKERS)  # imported at Python's start
    done = run_cli(
        tmp_path, "--port", "0", "--workers", "2", "--data-dir", str(tmp_path / "data"),
        PYTHONPATH=f"{tmp_path}{os.pathsep}{clean_env()['PYTHONPATH']}",
    )
    assert done.returncode == 1, done.stderr
    assert "ERROR aiotusd: worker 0: stopped by an unexpected error" in done.stderr, done.stderr
    assert done.stderr.rstrip().endswith("RuntimeError: a bug in a worker's start"), done.stderr


def test_a_start_that_fails_with_workers_is_told_in_one_line(tmp_path: Path) -> None:
    database = tmp_path / "state.sqlite3"
    database.write_bytes(os.urandom(20000))
    line = refused_start(
        tmp_path, "--port", "0", "--workers", "2", "--data-dir", str(tmp_path / "data"),
        "--database", str(database),
    )
    # Told by worker 0, which opens the database first and alone.
    assert (f"ERROR aiotusd: worker 0: cannot use the database {database}: file is not a "
            "database") in line
    with socket_taken() as port:
        line = refused_start(
            tmp_path, "--port", str(port), "--workers", "2", "--data-dir", str(tmp_path / "data")
        )
        assert f"ERROR aiotusd: cannot listen on 127.0.0.1:{port}: Address already in use" in line


@contextlib.contextmanager
def socket_taken() -> Iterator[int]:
    """A loopback port that another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_hook_events_from_every_worker_on_sqlite_are_delivered_once(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    receiver = Receiver()
    await receiver.start()
    try:
        server = with_workers(server_process, 2, "--hooks-url", receiver.url,
                              "--hooks-events", "post-create")
        first, second = workers_of(server)
        urls: list[str] = []
        for worker in (second, first):
            # A worker stopped while it writes (an event delivered) would hold the
            # database's write lock until it goes on: stop it once the outbox is empty.
            await poll(lambda: outbox_events(server) == 0, "the events delivered")
            with paused(worker):
                urls += [await create(session, server) for _ in range(2)]
        # Those the second worker recorded go out too, from the first one's outbox poll.
        await receiver.wait(lambda: len(receiver.received) >= 4, "every post-create", 20)
        ids = sorted(r.json["upload"]["id"] for r in receiver.received)
        assert ids == sorted(url.rsplit("/", 1)[1] for url in urls)
        assert len({r.id for r in receiver.received}) == 4
    finally:
        await receiver.stop()


def test_each_worker_gets_its_share_of_the_server_s_limits() -> None:
    settings = Settings().with_values(
        max_connections=601, max_uploads_receiving=0, max_uploads_receiving_per_client=32,
        create_rate=20, create_burst=3000,
    )
    limits = share_of(settings, 4).limits
    assert (limits.max_connections, limits.max_uploads_receiving,
            limits.max_uploads_receiving_per_client, limits.create_rate,
            limits.create_burst) == (151, 0, 8, 5.0, 750)
    assert share_of(settings, 1) is settings


async def test_a_worker_refuses_bodies_beyond_its_share_of_max_uploads_receiving(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    server = with_workers(server_process, 2, "--max-uploads-receiving", "2")
    second = workers_of(server)[1]
    sending, go_on = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        # Sent once the server answered "100 Continue": the body's slot is taken by then.
        sending.set()
        yield b"hello"
        await asyncio.wait_for(go_on.wait(), 30)
        yield b"world"

    with paused(second):
        held, refused = await create(session, server), await create(session, server)
        receiving = asyncio.create_task(session.patch(
            held, data=slow_body(), expect100=True,
            headers={**PATCH_HEADERS, "Upload-Offset": "0"},
        ))
        try:
            async with asyncio.timeout(10):
                await sending.wait()
            async with session.patch(
                refused, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
            ) as response:
                # One slot of the server's two is free, but it is the other worker's.
                assert response.status == 503, (response.status, await response.text())
                assert response.headers["Retry-After"] == "5"
        finally:
            go_on.set()
            response = await receiving
            assert response.status == 204, await response.text()
            response.release()


@pytest.mark.postgres
async def test_two_workers_on_postgresql_share_its_uploads(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession,
    postgres_url: str,
) -> None:
    server = with_workers(server_process, 2, "--database", postgres_url)
    first, second = workers_of(server)
    with paused(second):
        url = await create(session, server, b"hello")
    with paused(first):
        async with session.patch(
            url, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "5"}
        ) as response:
            assert (response.status, response.headers["Upload-Offset"]) == (204, "10")
    async with session.get(url) as response:
        assert await response.read() == b"helloworld"


@pytest.mark.slow
async def test_expired_uploads_are_swept_once_whichever_worker_made_them(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    metrics_port = free_port()
    server = with_workers(server_process, 2, "--metrics", "true", "--expiration", "1",
                          "--expiry-interval", "0.2", "--metrics-port", str(metrics_port))
    first, second = workers_of(server)
    for worker in (first, second):
        with paused(worker):
            await create(session, server)

    async def expired() -> bool:
        # On the metrics port, which the workers share as they share the main one.
        async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
            text = await response.text()
        return "\naiotusd_uploads_expired_total 2.0\n" in text

    await poll(expired, "both uploads to be counted expired", timeout=20)


@pytest.mark.slow
def test_workers_that_keep_dying_stop_the_server_with_status_1(
    server_process: Callable[..., ServerProcess]
) -> None:
    server = with_workers(server_process, 2)
    assert server.process is not None
    killed: set[int] = set()
    # Each death within a minute doubles the wait for the next start: 0.5 s, 1, 2, 4, 8.
    for _ in range(6):
        pid = wait_for(lambda: next(iter(set(workers_of(server)) - killed), None), 30,
                       "a worker not killed yet")
        killed.add(pid)
        os.kill(pid, signal.SIGKILL)
    assert server.process.wait(timeout=30) == 1
    assert "workers died within 60 s; stopping" in server.log()


async def test_a_stalled_patch_in_one_worker_is_taken_over_by_a_request_in_the_other(
    server_process: Callable[..., ServerProcess],
) -> None:
    """With several workers on one SQLite file the upload lock is one the kernel keeps for
    them all: a client whose PATCH stalls in one worker and who comes back through the
    other gets the upload (not 423 after lock_timeout), and the stalled body's late bytes
    land nowhere."""
    server = with_workers(server_process, 2, "--lock-timeout", "5")
    first, second = workers_of(server)
    data = payload(3 * MIB, seed=77)
    sent = MIB + 333
    with paused(second):
        path = await rawhttp.create(server.port, len(data))
        stale = await rawhttp.OpenPatch.start(server.port, path, 0, len(data))
        await stale.send(data[:sent])
        await poll(lambda: file_size(data_file(server, path)) == sent, "the stalled bytes")
    url = f"http://127.0.0.1:{server.port}{path}"
    # A kept-alive connection that the second worker answered once: the HEAD goes there.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as other:
        with paused(first):
            async with other.get(f"http://127.0.0.1:{server.port}/healthz") as response:
                assert response.status == 200
        started = asyncio.get_running_loop().time()
        async with other.head(url, headers={"Tus-Resumable": "1.0.0"}) as response:
            assert response.status == 200, response.status
            assert response.headers["Upload-Offset"] == str(sent)
        assert asyncio.get_running_loop().time() - started < 5
        with contextlib.suppress(ConnectionError, TimeoutError):
            await stale.send(b"\xee" * (len(data) - sent))
        await stale.abort()
        async with other.patch(url, data=data[sent:], headers={
            **PATCH_HEADERS, "Upload-Offset": str(sent)
        }) as response:
            assert response.status == 204, await response.text()
    assert data_file(server, path).read_bytes() == data


async def test_a_worker_answers_what_another_worker_wrote_since_its_own_write(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession,
) -> None:
    """A worker answers lookups from the uploads it wrote last, as long as no other worker
    wrote them since: an upload created and patched through one worker, patched through
    the other, is seen by the first at the other's offset (HEAD), and the first takes the
    next PATCH at that offset (not 409 at its own)."""
    server = with_workers(server_process, 2)
    first, second = workers_of(server)
    data = payload(12, seed=5)
    head = {"Tus-Resumable": "1.0.0"}

    async def patch(url: str, start: int, end: int) -> None:
        headers = {**PATCH_HEADERS, "Upload-Offset": str(start)}
        async with session.patch(url, data=data[start:end], headers=headers) as response:
            assert response.status == 204, await response.text()
            assert response.headers["Upload-Offset"] == str(end)

    async def offset(url: str) -> str:
        async with session.head(url, headers=head) as response:
            assert response.status == 200
            return response.headers["Upload-Offset"]

    with paused(second):
        async with session.post(server.url, headers={**head, "Upload-Length": "12"}) as created:
            assert created.status == 201
            url = created.headers["Location"]
        await patch(url, 0, 4)
        assert await offset(url) == "4"  # the first worker keeps what it wrote
    with paused(first):
        await patch(url, 4, 7)
    with paused(second):
        assert await offset(url) == "7"
        await patch(url, 7, 12)
    with paused(first):
        assert await offset(url) == "12"
    assert data_file(server, url).read_bytes() == data


async def test_uploads_held_when_a_server_with_workers_was_killed_are_free_once_it_restarts(
    server_process: Callable[..., ServerProcess],
) -> None:
    """The whole server is killed (supervisor and workers) in the middle of a PATCH: the
    kernel dropped the dead workers' locks, so the upload is free for the next server at
    once (no 423)."""
    server = with_workers(server_process, 2, "--lock-timeout", "1")
    data = payload(2 * MIB, seed=78)
    path = await rawhttp.create(server.port, len(data))
    stale = await rawhttp.OpenPatch.start(server.port, path, 0, len(data))
    await stale.send(data[:MIB])
    await poll(lambda: file_size(data_file(server, path)) == MIB, "the PATCH's bytes on disk")
    workers = workers_of(server)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: all(gone(pid) for pid in workers), 20, "the killed workers to be gone")
    await stale.abort()
    server.start()
    wait_for(lambda: len(start_lines(server)) == 2, 20, "the second start-up line")
    response = await rawhttp.request(server.port, "HEAD", path)
    assert response.status == 200, response
    offset = int(response.headers["upload-offset"])
    response = await rawhttp.patch(server.port, path, offset, data[offset:])
    assert response.status == 204, response
    assert data_file(server, path).read_bytes() == data


async def test_a_worker_killed_mid_patch_leaves_its_upload_to_the_other_at_once(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession
) -> None:
    """kill -9 of the worker that receives a PATCH: the kernel drops its lock with it, so
    the client resumes through the other worker at once (lock_timeout 1 s: no 423), and a
    worker started in its place takes nothing from the living one."""
    server = with_workers(server_process, 2, "--lock-timeout", "1")
    first, second = workers_of(server)
    data = payload(2 * MIB, seed=79)
    with paused(second):
        path = await rawhttp.create(server.port, len(data))
        stale = await rawhttp.OpenPatch.start(server.port, path, 0, len(data))
        await stale.send(data[:MIB])
        await poll(lambda: file_size(data_file(server, path)) == MIB, "the PATCH's bytes on disk")
    assert held_by_a_worker(server, path)
    os.kill(first, signal.SIGKILL)
    # Its last thread to end closes its files: a moment after its main thread is a zombie.
    wait_for(lambda: not held_by_a_worker(server, path), 5, "the killed worker's lock to go")
    await stale.abort()
    response = await rawhttp.request(server.port, "HEAD", path)
    assert response.status == 200, response
    offset = int(response.headers["upload-offset"])
    assert offset <= MIB
    await poll(lambda: len(set(workers_of(server)) - {first, second}) == 1,
               "a worker in place of the one killed", timeout=10)
    with paused(second):  # the new worker serves once it answers
        async with session.get(f"http://127.0.0.1:{server.port}/healthz") as health:
            assert health.status == 200
    half = offset + (len(data) - offset) // 2
    held = await rawhttp.OpenPatch.start(server.port, path, offset, len(data) - offset)
    await held.send(data[offset:half])
    await poll(lambda: held_by_a_worker(server, path), "the resumed PATCH's lock")
    await held.send(data[half:])
    assert (await held.response()).status == 204
    await held.abort()
    assert not held_by_a_worker(server, path)
    assert data_file(server, path).read_bytes() == data


def held_by_a_worker(server: ServerProcess, path: str) -> bool:
    """Whether a worker holds the upload's lock (server/host_locks.py), as another
    worker would find it."""
    locks = server.data_dir / ("aiotusd.sqlite3" + HOST_LOCKS_SUFFIX)
    descriptor = os.open(locks, os.O_RDONLY)
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte_of(upload_id(path)), 1, 0)
        found = fcntl.fcntl(descriptor, fcntl.F_OFD_GETLK, query)
    finally:
        os.close(descriptor)
    return _FLOCK.unpack(found)[0] != fcntl.F_UNLCK


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_every_line_a_worker_logs_names_it(
    server_process: Callable[..., ServerProcess], session: aiohttp.ClientSession,
    log_format: str,
) -> None:
    """The workers write to one log: each of their lines says which of them wrote it."""
    server = with_workers(server_process, 2, "--log-format", log_format)
    first, second = workers_of(server)  # in the order they were started: 0, then 1
    def created() -> list[str]:
        return [line for line in server.log().splitlines()
                if "POST /files/ 201" in line or '"status": 201' in line]

    for pid, answering in ((second, 0), (first, 1)):
        with paused(pid):
            await create(session, server)
        line = wait_for(lambda count=answering: created()[count:], 10, "the access line")[0]
        if log_format == "text":
            assert f" INFO aiohttp.access: worker {answering}: POST /files/ 201 " in line
        else:
            assert json.loads(line)["worker"] == answering
    supervisor = [line for line in server.log().splitlines() if "listening on" in line]
    assert "worker" not in supervisor[0].split("listening on")[0]  # the supervisor's own
