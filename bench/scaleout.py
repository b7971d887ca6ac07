"""Small uploads over more than one process: what sharing the state costs.

    .venv/bin/python bench/scaleout.py [--uploads 2000] [--batch 200] [--rounds 3] [--fsync always]

Run with the test environment's interpreter (``pip install -e '.[test]'``): PostgreSQL is
the test suite's throwaway cluster (tests/support/postgres.py: Debian's binaries,
loopback, ``fsync`` off). Five setups, each on a fresh data directory and database:

| setup | what runs |
|---|---|
| ``sqlite`` | one server, SQLite (the default) |
| ``sqlite-workers-2`` | one server with ``--workers 2`` on SQLite |
| ``sqlite-2-servers`` | two servers that share nothing (a data directory and SQLite file each), each sent half the uploads: what two processes cost on this machine, the yardstick for ``--workers 2`` |
| ``postgresql`` | one server on PostgreSQL |
| ``postgresql-2-servers`` | two servers on one PostgreSQL database and one data directory, each sent half the uploads |

Every setup runs for the whole measurement. Each round sends ``--uploads`` uploads of
``--size`` bytes, ``--concurrency`` at once, as POST + PATCH and then as
creation-with-upload, in batches of ``--batch``: a batch to each setup in turn, the order
reversed every other batch, so that a neighbour's load on a shared machine falls on every
setup alike; then one upload of ``--large`` bytes in a single PATCH (W1's shape) to each.
Figures, medians over the batches (over the rounds for the large one): uploads per second
(MiB/s), and CPU in microseconds per small upload (seconds per GiB for the large one) of the
servers (every process of each, workers included, all threads, in nanoseconds) and of
PostgreSQL (the postmaster and its backends); and the median ratio of each batch's server
CPU to that of the first setup's batch next to it. On a machine with two cores the uploads
per second of two processes say little (the load generator needs a core too); the CPU per
upload is what sharing costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.client import many_uploads, upload_in_patches
from harness.common import BENCH, GIB, KIB, MIB, REPO, free_port, parse_size
from harness.procs import Command, clean_env, running, tree_cpu_ns

sys.path.insert(0, str(REPO / "tests"))
from support.postgres import Cluster, throwaway_cluster

KINDS = (("post+patch", False), ("cwu", True))
LARGE = "one large PATCH"
SETUPS = ("sqlite", "sqlite-workers-2", "sqlite-2-servers", "postgresql", "postgresql-2-servers")


def _postmaster(cluster: Cluster) -> int:
    return int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0])


@dataclass
class Setup:
    name: str
    urls: list[str]
    pids: list[int]


@asynccontextmanager
async def started(name: str, cluster: Cluster, fsync: str, work: Path) -> AsyncIterator[Setup]:
    """The servers of setup ``name``, on a fresh data directory (and database)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    options = ["--fsync", fsync, "--log-level", "warning", "--create-rate", "0",
               "--expiry-interval", "3600"]
    servers = 2 if name.endswith("2-servers") else 1
    shared = name != "sqlite-2-servers"
    if name == "sqlite-workers-2":
        options += ["--workers", "2"]
    if name.startswith("postgresql"):
        database = name.replace("-", "_")
        cluster.sql(f"DROP DATABASE IF EXISTS {database}")
        cluster.sql(f"CREATE DATABASE {database}")
        options += ["--database", cluster.url(database)]
    async with AsyncExitStack() as stack:
        setup = Setup(name, [], [])
        for number in range(servers):
            port = free_port()
            url = f"http://127.0.0.1:{port}/files/"
            data_dir = run_dir / ("data" if shared else f"data-{number}")
            argv = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--data-dir", str(data_dir), *options]
            command = Command(argv, clean_env(), REPO)
            log = run_dir / f"log-{number}"
            setup.pids.append(await stack.enter_async_context(running(command, url, log)))
            setup.urls.append(url)
        yield setup
    shutil.rmtree(run_dir, ignore_errors=True)


async def _send(setup: Setup, body: memoryview, count: int, concurrency: int,
                with_upload: bool) -> None:
    """``count`` uploads, split evenly between the setup's servers."""
    share = len(setup.urls)
    await asyncio.gather(*(
        many_uploads(url, body, count // share, max(1, concurrency // share), 600, with_upload)
        for url in setup.urls
    ))


Figures = dict[tuple[str, str], list[tuple[float, float, float]]]


async def measure(args: argparse.Namespace, cluster: Cluster, work: Path) -> Figures:
    """Per (setup, kind): (uploads/s, server CPU us/upload, PostgreSQL CPU us/upload) a
    batch (a round for the large upload)."""
    body = memoryview(os.urandom(args.size))
    large = memoryview(os.urandom(args.large))
    figures: Figures = {}
    postmaster = _postmaster(cluster)
    names = [name for name in SETUPS if name in args.setups.split(",")]
    async with AsyncExitStack() as stack:
        setups = [await stack.enter_async_context(started(name, cluster, args.fsync, work))
                  for name in names]
        for setup in setups:
            for _, with_upload in KINDS:
                await _send(setup, body, args.warmup, args.concurrency, with_upload)
        batches = max(1, args.uploads // args.batch)
        for number in range(args.rounds):
            for kind, with_upload in KINDS:
                for batch in range(batches):
                    for setup in setups if (number + batch) % 2 == 0 else setups[::-1]:
                        figures.setdefault((setup.name, kind), []).append(
                            await _batch(setup, body, args, with_upload, postmaster))
            for setup in setups:
                figures.setdefault((setup.name, LARGE), []).append(
                    await _large(setup, large, postmaster))
    return figures


async def _batch(setup: Setup, body: memoryview, args: argparse.Namespace, with_upload: bool,
                 postmaster: int) -> tuple[float, float, float]:
    """One batch of small uploads: (uploads/s, server CPU us/upload, PostgreSQL's)."""
    servers = sum(tree_cpu_ns(pid) for pid in setup.pids)
    database = tree_cpu_ns(postmaster)
    began = time.perf_counter()
    await _send(setup, body, args.batch, args.concurrency, with_upload)
    seconds = time.perf_counter() - began
    return (args.batch / seconds,
            (sum(tree_cpu_ns(pid) for pid in setup.pids) - servers) / 1000 / args.batch,
            (tree_cpu_ns(postmaster) - database) / 1000 / args.batch)


async def _large(setup: Setup, body: memoryview, postmaster: int) -> tuple[float, float, float]:
    """One upload of ``body`` in one PATCH to the setup's first server: (MiB/s, server CPU
    seconds per GiB, PostgreSQL CPU seconds per GiB)."""
    servers = sum(tree_cpu_ns(pid) for pid in setup.pids)
    database = tree_cpu_ns(postmaster)
    began = time.perf_counter()
    await upload_in_patches(setup.urls[0], body, len(body), 600)
    seconds = time.perf_counter() - began
    gibs = len(body) / GIB
    return (len(body) / MIB / seconds,
            (sum(tree_cpu_ns(pid) for pid in setup.pids) - servers) / 1e9 / gibs,
            (tree_cpu_ns(postmaster) - database) / 1e9 / gibs)


def report(figures: Figures, args: argparse.Namespace) -> None:
    print(f"\n{args.uploads} uploads of {args.size // KIB} KiB a round, {args.concurrency} at "
          f"once, in batches of {args.batch}, fsync {args.fsync}; medians of the batches of "
          f"{args.rounds} rounds; [median ratio of server CPU to the first setup's batch]")
    print("| setup | kind | uploads/s | server CPU us/upload | PostgreSQL CPU us/upload |"
          " all CPU us/upload |")
    print("|---|---|---:|---:|---:|---:|")
    first = next(iter(figures))[0]
    for (name, kind), batches in figures.items():
        if kind == LARGE:
            continue
        rate, server, database = (
            statistics.median(column) for column in zip(*batches, strict=True))
        ratio = statistics.median(
            b[1] / a[1] for a, b in zip(figures[(first, kind)], batches, strict=True) if a[1]
        )
        print(f"| {name} | {kind} | {rate:,.0f} | {server:,.0f} [x{ratio:.2f}] | "
              f"{database:,.0f} | {server + database:,.0f} |")
    print(f"\none upload of {args.large // MIB} MiB in one PATCH; medians of {args.rounds} rounds")
    print("| setup | MiB/s | server CPU s/GiB | PostgreSQL CPU s/GiB |")
    print("|---|---:|---:|---:|")
    for (name, kind), rounds in figures.items():
        if kind == LARGE:
            rate, server, database = (
                statistics.median(column) for column in zip(*rounds, strict=True))
            print(f"| {name} | {rate:,.0f} | {server:.2f} | {database:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--uploads", type=int, default=2000, help="uploads per round and kind (default 2000)")
    add("--batch", type=int, default=200, help="uploads per batch (default 200)")
    add("--rounds", type=int, default=3, help="rounds (default 3)")
    add("--warmup", type=int, default=200, help="uploads before measuring (default 200)")
    add("--concurrency", type=int, default=32, help="uploads at once (default 32)")
    add("--size", type=parse_size, default=64 * KIB, help="upload size (default 64KiB)")
    add("--large", type=parse_size, default=256 * MIB,
        help="size of the one large upload (default 256MiB)")
    add("--fsync", default="always", choices=("always", "none"), help="(default always)")
    add("--setups", default=",".join(SETUPS), help=f"some of {','.join(SETUPS)}")
    add("--work-dir", type=Path, default=BENCH / ".work",
        help="where the data directories go (default bench/.work)")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scaleout-", dir=args.work_dir))
    try:
        with throwaway_cluster() as cluster:
            figures = asyncio.run(measure(args, cluster, work))
        report(figures, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
