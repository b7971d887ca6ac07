"""Server CPU per small upload of aiotusd checkouts, side by side.

    python bench/cpu_ab.py [options] NAME=CHECKOUT[::OPTIONS] [NAME=CHECKOUT[::OPTIONS] | sink ...]

Each target is ``python -m server`` run from CHECKOUT (whose code it imports: checked
first), with an empty data directory and, after ``::``, more command-line options of
its own (``old=../old new=.  new-no-share=.::--max-uploads-receiving-per-client 0``).
``NAME*K=...`` runs K such servers, each with a data directory (and database) of its own,
each sent its share of every batch, K times fewer at once: what K processes cost on this
machine when they share nothing (against ``--workers K``, which share the database).
The target ``sink`` is the framework ceiling of ``bench/run`` (``bench/peers/sink.py``: a
bare aiohttp app that streams each body to a file, which ignores ``--fsync``): next to it,
what aiotusd costs on top of aiohttp itself. Uploads are of ``--size`` bytes, as POST +
PATCH and as creation-with-upload.

CPU time (the default). Every target's server runs at the same time. After a warm-up,
batches of ``--batch`` uploads, ``--concurrency`` at once, go to one server after the
other (the order reversed every other batch); each batch reads the CPU time its server
spent (all threads, in nanoseconds, from ``/proc/PID/task/*/schedstat``). On a shared
machine the neighbours slow every batch that runs next to them, so the table gives the
10th and 25th percentiles and the median over the batches, and the median ratio of each
batch to the first target's batch next to it; then user CPU alone over all batches
(kernel time is left out there: on ext4, creating a file costs more or less depending
on what the machine deleted lately; ``--work-dir`` on a tmpfs leaves that out too).

Instructions (``--instructions``): one target after the other runs under valgrind's
callgrind, which counts the instructions its processes (workers and ``*K`` servers too)
execute in user space, whatever else the machine does: from start to exit with
``--warmup`` and ``--count`` uploads, less the same without the ``--count``. These go one
at a time (so that nothing depends on timing): deterministic to about half a percent,
for small differences. ``--at-once N`` sends N at a time instead: what batching saves,
and what splitting the uploads among workers or servers costs, without what more busy
processes than cores cost this machine (cache misses, scheduling); batches depend on
timing then, and the counts of ``--workers`` move by a percent or two between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from harness.client import TUS, many_uploads
from harness.common import BENCH, KIB, free_port, parse_size
from harness.procs import TICKS, Command, clean_env, running, tree_cpu_ns, tree_pids

# uvloop makes the load generator cheaper; bench/setup installs it.
try:
    from uvloop import run as run_loop
except ImportError:
    from asyncio import run as run_loop

KINDS = (("post+patch", False), ("cwu", True))
SINK = BENCH / "peers" / "sink.py"
VALGRIND_READY = 600.0
"""Seconds a server under valgrind may take to answer (it runs some 50 times slower)."""
Results = dict[tuple[str, str], list[float]]


@dataclass(frozen=True)
class Target:
    name: str
    checkout: Path
    options: list[str]
    copies: int = 1
    """Servers that share each batch, each on its own data directory."""
    sink: bool = False
    """The framework ceiling rather than aiotusd (see the module's text)."""

    @classmethod
    def parse(cls, text: str) -> Target:
        if text == "sink":
            return cls("sink", SINK.parent, [], sink=True)
        name, _, rest = text.partition("=")
        path, _, options = rest.partition("::")
        copies = int(name.rpartition("*")[2]) if "*" in name else 1
        return cls(name, Path(path).resolve(), shlex.split(options), copies)

    def command(self, port: int, data_dir: Path, fsync: str, valgrind: list[str]) -> Command:
        """The server's command line; under ``valgrind`` when given (then with no expiry
        sweep in the middle of the uploads measured)."""
        if self.sink:
            argv = [*valgrind, sys.executable, str(SINK), str(port), str(data_dir)]
            return Command(argv, clean_env(), self.checkout)
        argv = [*valgrind, sys.executable, "-m", "server", "--host", "127.0.0.1",
                "--port", str(port), "--data-dir", str(data_dir), "--log-level", "warning",
                "--fsync", fsync, "--create-rate", "0",
                *(["--expiry-interval", "3600"] if valgrind else []), *self.options]
        return Command(argv, clean_env(PYTHONPATH=str(self.checkout)), self.checkout)

    def check_imports(self) -> None:
        """Fail unless ``python -m server`` in the checkout imports that checkout's code;
        compile that code first. (A module whose ``.pyc`` is older than its source is
        compiled by the process that imports it, and by every one after it where
        ``PYTHONDONTWRITEBYTECODE`` is set: some 50 million instructions a process for a few
        changed modules, which ``--instructions`` would count.)"""
        if self.sink:
            return
        subprocess.run([sys.executable, "-m", "compileall", "-q", "server", "storage_backends"],
                       cwd=self.checkout, capture_output=True, timeout=300, check=True)
        code = "import server, storage_backends; print(server.__file__, storage_backends.__file__)"
        done = subprocess.run([sys.executable, "-c", code], cwd=self.checkout,
                              env=clean_env(PYTHONPATH=str(self.checkout)),
                              capture_output=True, text=True, timeout=60, check=True)
        for path in done.stdout.split():
            if not Path(path).resolve().is_relative_to(self.checkout):
                sys.exit(f"{self.name}: {self.checkout} imports {path}")


def _user_seconds(pid: int) -> float:
    """User CPU time of ``pid`` and its descendants, all their threads, past ones too (in
    clock ticks' steps)."""
    total = 0
    for process in tree_pids(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11])
    return total / TICKS


def _fresh_dir(work: Path, name: str) -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    (run_dir / "data").mkdir()
    return run_dir


async def _cpu(targets: list[Target], fsync: str, args: argparse.Namespace,
               work: Path) -> Results:
    """Per (kind, target): us of CPU per upload of each batch; per (kind user, target):
    user CPU seconds of each batch."""
    body = memoryview(os.urandom(args.size))
    results: Results = {}
    async with AsyncExitStack() as stack:
        servers: list[tuple[str, list[tuple[str, int]]]] = []
        for target in targets:
            copies = []
            for _ in range(target.copies):
                run_dir = _fresh_dir(work, target.name)
                port = free_port()
                url = f"http://127.0.0.1:{port}/files/"
                command = target.command(port, run_dir / "data", fsync, [])
                pid = await stack.enter_async_context(running(command, url, run_dir / "log"))
                copies.append((url, pid))
            servers.append((target.name, copies))

        async def batch(copies: list[tuple[str, int]], count: int, with_upload: bool) -> None:
            await asyncio.gather(*(
                many_uploads(url, body, count // len(copies),
                             max(1, args.concurrency // len(copies)), 600, with_upload)
                for url, _ in copies
            ))

        for _, copies in servers:
            for _, with_upload in KINDS:
                await batch(copies, args.warmup, with_upload)
        for number in range(args.batches):
            order = servers if number % 2 == 0 else servers[::-1]
            for kind, with_upload in KINDS:
                for name, copies in order:
                    cpu = sum(tree_cpu_ns(pid) for _, pid in copies)
                    user = sum(_user_seconds(pid) for _, pid in copies)
                    await batch(copies, args.batch, with_upload)
                    results.setdefault((kind, name), []).append(
                        (sum(tree_cpu_ns(pid) for _, pid in copies) - cpu) / args.batch / 1000)
                    results.setdefault((f"{kind} user", name), []).append(
                        sum(_user_seconds(pid) for _, pid in copies) - user)
    return results


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_table(names: list[str], fsync: str, results: Results, batch: int) -> None:
    print(f"\nfsync {fsync}: server CPU per upload, us: p10 / p25 / median over batches "
          f"[median ratio to {names[0]}]; user CPU over all batches [ratio]")
    print("| kind | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for kind, _ in KINDS:
        first = results[(kind, names[0])]
        cells = []
        for name in names:
            values = results[(kind, name)]
            ratio = statistics.median(b / a for a, b in zip(first, values, strict=True))
            cells.append(f"{_quantile(values, 0.1):.0f} / {_quantile(values, 0.25):.0f} / "
                         f"{statistics.median(values):.0f} [x{ratio:.3f}]")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for kind, _ in KINDS:
        users = [sum(results[(f"{kind} user", name)]) for name in names]
        uploads = len(results[(kind, names[0])]) * batch
        print(f"| {kind} user | " + " | ".join(
            f"{user / uploads * 1e6:.0f} [x{user / users[0]:.3f}]" for user in users) + " |")


async def _ready(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + VALGRIND_READY
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                sys.exit(f"the server under valgrind exited with {process.returncode}")
            try:
                async with session.options(url, headers=TUS):
                    return
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.5)
    sys.exit(f"the server under valgrind did not answer within {VALGRIND_READY:.0f} s")


async def _instructions(target: Target, with_upload: bool, fsync: str,
                        args: argparse.Namespace, work: Path) -> float:
    """Instructions the server executed per upload, counted by callgrind: all its
    processes' from start to exit, with the measured uploads after the warm-up, less the
    same without them. (``callgrind_control`` cannot reach forked workers to start the
    counts after the warm-up.)"""
    without = await _instructions_to_exit(target, with_upload, fsync, args, work, 0)
    with_them = await _instructions_to_exit(target, with_upload, fsync, args, work, args.count)
    return (with_them - without) / args.count


async def _instructions_to_exit(target: Target, with_upload: bool, fsync: str,
                                args: argparse.Namespace, work: Path, count: int) -> int:
    """Instructions of all the target's processes (of each of its servers), from start to
    exit, with ``--warmup`` and then ``count`` uploads, shared among its servers."""
    started: list[tuple[asyncio.subprocess.Process, str, Path]] = []
    try:
        for _ in range(target.copies):
            started.append(await _start_under_callgrind(target, fsync, work))
        body = memoryview(os.urandom(args.size))
        copies = len(started)
        await asyncio.gather(*(
            many_uploads(url, body, (args.warmup + count) // copies,
                         max(1, args.at_once // copies), 1200, with_upload)
            for _, url, _ in started
        ))
        processes = sum(len(tree_pids(process.pid)) for process, _, _ in started)
    finally:
        for process, _, _ in started:
            process.send_signal(signal.SIGTERM)
        for process, _, _ in started:
            await process.wait()
    counts = []
    for _, _, run_dir in started:
        for dump in run_dir.glob("callgrind.out.*"):
            totals = re.search(r"^(?:summary|totals): (\d+)",
                               dump.read_text(errors="replace"), re.MULTILINE)
            if totals:
                counts.append(int(totals.group(1)))
    if len(counts) != processes:
        sys.exit(f"{target.name}: {len(counts)} callgrind counts in {work}, "
                 f"for {processes} processes")
    return sum(counts)


async def _start_under_callgrind(
    target: Target, fsync: str, work: Path
) -> tuple[asyncio.subprocess.Process, str, Path]:
    """One server of the target under callgrind, answering: its process, URL and run
    directory (where each of its processes leaves its counts)."""
    run_dir = _fresh_dir(work, target.name)
    port = free_port()
    url = f"http://127.0.0.1:{port}/files/"
    # %p: each forked worker counts into a file of its own.
    out = run_dir / "callgrind.out.%p"
    command = target.command(port, run_dir / "data", fsync,
                             ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
    log = os.open(run_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *command.argv, env=command.env, cwd=command.cwd, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT)
    finally:
        os.close(log)
    try:
        await _ready(url, process)
    except BaseException:
        process.send_signal(signal.SIGTERM)
        await process.wait()
        raise
    return process, url, run_dir


async def _instruction_table(targets: list[Target], fsync: str, args: argparse.Namespace,
                             work: Path) -> None:
    counts = {(kind, target.name): await _instructions(target, with_upload, fsync, args, work)
              for target in targets for kind, with_upload in KINDS}
    names = [target.name for target in targets]
    at_once = "one upload at a time" if args.at_once == 1 else f"{args.at_once} uploads at once"
    print(f"\nfsync {fsync}: thousands of instructions per upload, {at_once} "
          f"[ratio to {names[0]}]")
    print("| kind | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for kind, _ in KINDS:
        first = counts[(kind, names[0])]
        print(f"| {kind} | " + " | ".join(
            f"{counts[(kind, name)] / 1000:,.0f} [x{counts[(kind, name)] / first:.3f}]"
            for name in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("targets", nargs="+", type=Target.parse, help="NAME=CHECKOUT[::OPTIONS], or sink")
    add("--batches", type=int, default=60, help="batches per kind and target (default 60)")
    add("--batch", type=int, default=100, help="uploads per batch (default 100)")
    add("--concurrency", type=int, default=32, help="uploads at once (default 32)")
    add("--warmup", type=int, default=200, help="uploads before measuring (default 200)")
    add("--size", type=parse_size, default=64 * KIB, help="upload size (default 64KiB)")
    add("--fsync", default="none,always", help="fsync modes, in turn (default none,always)")
    add("--instructions", action="store_true", help="count instructions under callgrind")
    add("--count", type=int, default=200, help="with --instructions: uploads (default 200)")
    add("--at-once", type=int, default=1,
        help="with --instructions: uploads at once (default 1)")
    add("--work-dir", type=Path, default=BENCH / ".work",
        help="where the data directories go (default bench/.work)")
    args = parser.parse_args()
    for target in args.targets:
        target.check_imports()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cpu-ab-", dir=args.work_dir))
    names = [target.name for target in args.targets]
    try:
        for fsync in args.fsync.split(","):
            if args.instructions:
                run_loop(_instruction_table(args.targets, fsync, args, work))
            else:
                results = run_loop(_cpu(args.targets, fsync, args, work))
                _cpu_table(names, fsync, results, args.batch)
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
