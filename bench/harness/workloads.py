"""The workloads W1–W6: what one run of one target does, and the figures it yields.

A run starts its server fresh, with a fresh data directory, and stops it at the end
(``serve``). The figures of a run are a flat dict; ``METRICS`` says which of them the
tables show and how. Figures not in ``METRICS`` (CPU use) only go to the JSON.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .client import (
    extensions,
    head_latencies,
    many_uploads,
    session,
    unfinished_uploads,
    upload_in_patches,
    upload_with_curl,
)
from .common import MIB, format_size, free_port, percentile
from .procs import TreeMonitor, running
from .s3 import moto, objects_of_size, plain_multipart
from .targets import Launch, S3Place, Target


@dataclass(frozen=True)
class Options:
    size: int
    chunk: int
    small_count: int
    small_size: int
    small_concurrency: int
    many_count: int
    many_size: int
    head_count: int
    head_concurrency: int
    s3_size: int
    s3_chunk: int
    timeout: float


@dataclass
class Payload:
    """``size`` random bytes in a file (for curl and dd) and mapped into memory (for aiohttp)."""

    path: Path
    view: memoryview

    @classmethod
    def make(cls, path: Path, size: int) -> Payload:
        with open(path, "wb") as file:
            file.writelines(os.urandom(min(8 * MIB, size - start))
                            for start in range(0, size, 8 * MIB))
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ)
        return cls(path, memoryview(mapped))


@dataclass
class Bench:
    """What every run shares: the options, the work directory and the payloads in it."""

    options: Options
    work: Path
    _payloads: dict[int, Payload] = field(default_factory=dict)

    def payload(self, size: int) -> Payload:
        if size not in self._payloads:
            self._payloads[size] = Payload.make(self.work / f"payload-{size}.bin", size)
        return self._payloads[size]


@dataclass
class Outcome:
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS = {
    "w1_mibs": Metric("throughput", "MiB/s", True),
    "w1_rss": Metric("peak RSS during W1", "MiB", False, 1),
    "w2_mibs": Metric("throughput", "MiB/s", True),
    "w3_rate": Metric("POST+PATCH", "uploads/s", True),
    "w3_p99": Metric("POST+PATCH p99", "ms", False, 1),
    "w3_cpu": Metric("POST+PATCH server CPU", "µs/upload", False),
    "w3c_rate": Metric("creation-with-upload", "uploads/s", True),
    "w3c_p99": Metric("creation-with-upload p99", "ms", False, 1),
    "w3c_cpu": Metric("creation-with-upload server CPU", "µs/upload", False),
    "w4_rss": Metric("peak RSS", "MiB", False, 1),
    "w4_mibs": Metric("throughput", "MiB/s", True),
    "w5_p50": Metric("HEAD p50", "ms", False, 2),
    "w5_p99": Metric("HEAD p99", "ms", False, 2),
    "w5_rate": Metric("rate", "HEADs/s", True),
    "w5_alone_p99": Metric("HEAD p99, one at a time", "ms", False, 2),
    "w6_patches_mibs": Metric("in PATCHes", "MiB/s", True),
    "w6_single_mibs": Metric("one PATCH", "MiB/s", True),
}


@dataclass
class Clock:
    """Wall time of a phase, and the CPU time the load generator and the server spent in it.

    The load generator is this process and its waited-for children (curl, dd).
    """

    server: TreeMonitor | None = None
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    def __enter__(self) -> Self:
        self._started = (time.perf_counter(), self._client_now(), self._server_now())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, client, server = self._started
        self.wall = time.perf_counter() - wall
        self.client_cpu = self._client_now() - client
        self.server_cpu = self._server_now() - server

    @staticmethod
    def _client_now() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def _server_now(self) -> float:
        return self.server.cpu_now() if self.server is not None else 0.0

    def usage(self, prefix: str) -> dict[str, float]:
        """CPU use in cores (1.0 = one core busy all along) of load generator and server."""
        usage = {f"{prefix}_client_cores": self.client_cpu / self.wall}
        if self.server is not None:
            usage[f"{prefix}_server_cores"] = self.server_cpu / self.wall
        return usage


@asynccontextmanager
async def serve(
    target: Target, run_dir: Path, s3: S3Place | None = None
) -> AsyncIterator[tuple[str, TreeMonitor]]:
    """Start ``target`` fresh on a free port with an empty data directory in ``run_dir``."""
    assert target.command is not None
    data_dir = run_dir / "data"
    data_dir.mkdir()
    launch = Launch(free_port(), data_dir, s3)
    url = f"http://127.0.0.1:{launch.port}{target.base_path}"
    async with running(target.command(launch), url, run_dir / "server.log") as pid:
        with TreeMonitor(pid) as monitor:
            yield url, monitor


async def _dd(payload: Payload, target: Path) -> Clock:
    """The disk ceiling: copy the payload with ``dd ... conv=fdatasync``."""
    with Clock() as clock:
        process = await asyncio.create_subprocess_exec(
            "dd", f"if={payload.path}", f"of={target}", "bs=1M", "conv=fdatasync",
            "status=none", stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"dd failed: {err.decode(errors='replace').strip()}")
    return clock


def _rate(prefix: str, size: int, clock: Clock) -> dict[str, float]:
    return {f"{prefix}_mibs": size / MIB / clock.wall, **clock.usage(prefix)}


async def single_patch(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W1: SIZE in one PATCH, streamed from a file by curl. Also W4's first peak RSS."""
    size = bench.options.size
    payload = bench.payload(size)
    if target.command is None:
        return Outcome(_rate("w1", size, await _dd(payload, run_dir / "dd.out")))
    async with serve(target, run_dir) as (url, monitor):
        with Clock(monitor) as clock:
            await upload_with_curl(url, payload.path, size, bench.options.timeout)
    return Outcome({**_rate("w1", size, clock), "w1_rss": monitor.peak_bytes / MIB})


async def patches(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W2: SIZE in CHUNK-sized PATCHes, one after another on one keep-alive connection."""
    options = bench.options
    payload = bench.payload(options.size)
    if target.command is None:
        return Outcome(_rate("w2", options.size, await _dd(payload, run_dir / "dd.out")))
    async with serve(target, run_dir) as (url, monitor):
        with Clock(monitor) as clock:
            await upload_in_patches(url, payload.view, options.chunk, options.timeout)
    return Outcome(_rate("w2", options.size, clock))


async def small_uploads(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W3: many small uploads at once, as POST + PATCH and as creation-with-upload; with
    the server's CPU time per upload, which a busy machine moves less than throughput."""
    options = bench.options
    body = bench.payload(options.small_size).view
    outcome = Outcome()
    async with serve(target, run_dir) as (url, monitor):
        async with session(1, options.timeout) as client:
            can_upload = "creation-with-upload" in await extensions(client, url)
        if not can_upload:
            outcome.notes.append("no creation-with-upload in its Tus-Extension")
        for key, with_upload in (("w3", False), ("w3c", True))[: 2 if can_upload else 1]:
            with Clock(monitor) as clock:
                latencies = await many_uploads(url, body, options.small_count,
                                               options.small_concurrency, options.timeout,
                                               with_upload)
            outcome.figures |= {f"{key}_rate": options.small_count / clock.wall,
                                f"{key}_p99": percentile(latencies, 99) * 1000,
                                f"{key}_cpu": clock.server_cpu / options.small_count * 1e6,
                                **clock.usage(key)}
    return outcome


async def concurrent_uploads(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W4: MANY_COUNT uploads of MANY_SIZE all at once, each in one PATCH: peak RSS."""
    options = bench.options
    body = bench.payload(options.many_size).view
    async with serve(target, run_dir) as (url, monitor):
        with Clock(monitor) as clock:
            await many_uploads(url, body, options.many_count, options.many_count, options.timeout)
    total = options.many_count * options.many_size
    return Outcome({**_rate("w4", total, clock), "w4_rss": monitor.peak_bytes / MIB})


async def heads(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W5: HEAD_COUNT HEADs of HEAD_CONCURRENCY unfinished uploads, HEAD_CONCURRENCY at once;
    then a fifth as many one at a time, where the latency is the server's, not the queue's."""
    options = bench.options
    async with serve(target, run_dir) as (url, monitor):
        locations = await unfinished_uploads(url, options.head_concurrency, options.timeout)
        with Clock(monitor) as clock:
            latencies = await head_latencies(locations, options.head_count,
                                             options.head_concurrency, options.timeout)
        alone = await head_latencies(locations, max(options.head_count // 5, 1), 1,
                                     options.timeout)
    return Outcome({"w5_p50": percentile(latencies, 50) * 1000,
                    "w5_p99": percentile(latencies, 99) * 1000,
                    "w5_rate": options.head_count / clock.wall,
                    "w5_alone_p99": percentile(alone, 99) * 1000, **clock.usage("w5")})


async def to_s3(target: Target, bench: Bench, run_dir: Path) -> Outcome:
    """W6: S3_SIZE in S3_CHUNK PATCHes, then in one PATCH (curl), each to a fresh moto.

    A fresh moto (and server) for each column: moto keeps every object in memory, and
    its CompleteMultipartUpload, which copies the whole object, slows down the more it
    already holds, so a second upload into the same moto would pay more than the first.
    """
    options = bench.options
    payload = bench.payload(options.s3_size)
    figures: dict[str, float] = {}
    for key in ("w6_patches", "w6_single"):
        column_dir = run_dir / key
        column_dir.mkdir()
        async with moto(column_dir / "moto.log") as place:
            if target.command is None:
                with Clock() as clock:
                    await plain_multipart(place, key, payload.view)
            else:
                async with serve(target, column_dir, place) as (url, monitor):
                    with Clock(monitor) as clock:
                        if key == "w6_patches":
                            await upload_in_patches(url, payload.view, options.s3_chunk,
                                                    options.timeout)
                        else:
                            await upload_with_curl(url, payload.path, options.s3_size,
                                                   options.timeout)
            stored = await objects_of_size(place, options.s3_size)
        if stored != 1:
            raise RuntimeError(f"{stored} objects of {options.s3_size} bytes in S3, expected 1")
        figures |= _rate(key, options.s3_size, clock)
    return Outcome(figures)


@dataclass(frozen=True)
class Workload:
    id: str
    title: Callable[[Options], str]
    measure: Callable[[Target, Bench, Path], Awaitable[Outcome]]
    table: tuple[str, ...]
    """The figures in this workload's table, keys of METRICS."""
    keeps_run_dirs: bool = False
    """Its runs' directories stay until the whole benchmark ends, not just their run.

    For workloads of many small files. On ext4 without a journal, the kernel does not hand
    out again an inode freed in the last minute: every file created scans past those,
    reading each one's inode-table block. Removing one run's hundreds of files would slow
    the file creations of the runs in the minute after it, by how many files the run
    before happened to make."""


WORKLOADS = {
    workload.id: workload
    for workload in (
        Workload("W1", lambda o: f"one {format_size(o.size)} upload in a single PATCH (curl)",
                 single_patch, ("w1_mibs",)),
        Workload("W2", lambda o: f"{format_size(o.size)} in {format_size(o.chunk)} PATCHes "
                                 "on one connection", patches, ("w2_mibs",)),
        Workload("W3", lambda o: f"{o.small_count} uploads of {format_size(o.small_size)}, "
                                 f"{o.small_concurrency} at once", small_uploads,
                 ("w3_rate", "w3_p99", "w3_cpu", "w3c_rate", "w3c_p99", "w3c_cpu"),
                 keeps_run_dirs=True),
        Workload("W4", lambda o: f"peak server RSS: during W1, and during {o.many_count} "
                                 f"concurrent {format_size(o.many_size)} uploads",
                 concurrent_uploads, ("w1_rss", "w4_rss", "w4_mibs")),
        Workload("W5", lambda o: f"{o.head_count} HEADs of unfinished uploads, "
                                 f"{o.head_concurrency} at once, then one at a time", heads,
                 ("w5_p50", "w5_p99", "w5_rate", "w5_alone_p99")),
        Workload("W6", lambda o: f"{format_size(o.s3_size)} to S3 (moto), in "
                                 f"{format_size(o.s3_chunk)} PATCHes and in one PATCH",
                 to_s3, ("w6_patches_mibs", "w6_single_mibs")),
    )
}
