"""Micro-benchmark of the state store's hot write: ``save_progress`` of many uploads at once.

Every PATCH ends in one such write, and a small upload makes two (its row, then its
offset), so this is what many small uploads cost the state layer. ``--concurrency``
tasks each write the progress of an upload of their own, one write after the other,
for ``--seconds``; each round opens a fresh database. Printed: per round and as the
median of the rounds, writes per second and the process's CPU time per write (the
event loop and the database connection's thread together)::

    python bench/state_writes.py                          # 32 at once, 3 s, 5 rounds
    python bench/state_writes.py --dir /dev/shm --concurrency 1

Commits never wait for an fsync (WAL with ``synchronous=NORMAL``), so the figures are of
CPU and of the file system's page cache: ``--dir`` on a tmpfs or on the disk give alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.state import StateStore, Upload


async def one_round(directory: Path, concurrency: int, seconds: float) -> tuple[float, float]:
    """Writes per second and CPU microseconds per write, in a fresh database."""
    store = await StateStore.open(directory / "state.sqlite3")
    try:
        uploads = [Upload(id=f"u{n}", length=1 << 40) for n in range(concurrency)]
        for upload in uploads:
            await store.create(upload)
        writes = 0
        deadline = time.monotonic() + seconds
        saved: dict[str, Upload] = {}

        async def writer(upload: Upload) -> None:
            nonlocal writes
            while time.monotonic() < deadline:
                upload = await store.save_progress(replace(upload, offset=upload.offset + 1))
                writes += 1
            saved[upload.id] = upload

        started, cpu_started = time.monotonic(), time.process_time()
        await asyncio.gather(*(writer(upload) for upload in uploads))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
        stored = await store.get_many(tuple(u.id for u in uploads))
        assert all(stored[u.id].offset == saved[u.id].offset for u in uploads), (
            "a write did not land"
        )
    finally:
        await store.close()
    return writes / elapsed, cpu / writes * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32, help="uploads written at once")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=5, help="the median of these is reported")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    args = parser.parse_args()
    results = []
    for number in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            rate, cpu = asyncio.run(one_round(Path(directory), args.concurrency, args.seconds))
        results.append((rate, cpu))
        print(f"round {number + 1}: {rate:,.0f} writes/s, {cpu:.1f} us CPU per write")
    rate = statistics.median(r for r, _ in results)
    cpu = statistics.median(c for _, c in results)
    print(f"median of {args.rounds}: {rate:,.0f} writes/s, {cpu:.1f} us CPU per write "
          f"(concurrency {args.concurrency})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
