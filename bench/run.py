"""aiotusd next to other tus servers and next to the ceilings, on the same workloads.

    bench/setup                 # once: the peers, in bench/.venv and bench/peers/node
    bench/run [options]         # or: python bench/run.py [options]

Prints one markdown table per workload and writes results.md, results.json (every run's
figures) and results.png into --out. bench/README.md says what each workload does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness.common import BENCH, parse_size, positive
from harness.machine import facts
from harness.report import Record, markdown, table, write_chart, write_json
from harness.targets import Target, all_targets
from harness.workloads import METRICS, WORKLOADS, Bench, Options, Workload

# uvloop makes the load generator cheaper; bench/setup installs it, the test environment not.
try:
    from uvloop import run as run_loop
except ImportError:
    from asyncio import run as run_loop


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rounds", type=positive, default=5, help="rounds per workload (default 5)")
    add("--size", type=parse_size, default="1GiB", help="W1/W2 upload size (default 1GiB)")
    add("--chunk", type=parse_size, default="8MiB", help="W2 PATCH size (default 8MiB)")
    add("--only", default=",".join(WORKLOADS), help="workloads, e.g. W1,W3 (default all)")
    add("--servers", default="", help="targets, e.g. aiotusd,tus-node,sink (default all)")
    add("--out", type=Path, default=BENCH / "results", help="directory for the result files")
    add("--work-dir", type=Path, default=BENCH / ".work",
        help="where payloads, data directories and the dd copies go: put it on the disk "
             "to measure, not on tmpfs (default bench/.work)")
    add("--small-count", type=positive, default=200, help="W3 uploads (default 200)")
    add("--small-size", type=parse_size, default="64KiB", help="W3 upload size (default 64KiB)")
    add("--small-concurrency", type=positive, default=32, help="W3 concurrency (default 32)")
    add("--many-count", type=positive, default=100, help="W4 concurrent uploads (default 100)")
    add("--many-size", type=parse_size, default="16MiB", help="W4 upload size (default 16MiB)")
    add("--head-count", type=positive, default=5000, help="W5 HEAD requests (default 5000)")
    add("--head-concurrency", type=positive, default=64, help="W5 concurrency (default 64)")
    add("--s3-size", type=parse_size, default="256MiB", help="W6 upload size (default 256MiB)")
    add("--s3-chunk", type=parse_size, default="1MiB", help="W6 PATCH size (default 1MiB)")
    add("--timeout", type=float, default=900, help="seconds one run may take (default 900)")
    return parser.parse_args()


def _options(args: argparse.Namespace) -> Options:
    return Options(
        size=args.size, chunk=args.chunk, small_count=args.small_count,
        small_size=args.small_size, small_concurrency=args.small_concurrency,
        many_count=args.many_count, many_size=args.many_size, head_count=args.head_count,
        head_concurrency=args.head_concurrency, s3_size=args.s3_size, s3_chunk=args.s3_chunk,
        timeout=args.timeout,
    )


def _workloads(only: str) -> list[str]:
    chosen = {name.strip().upper() for name in only.split(",") if name.strip()}
    unknown = chosen - set(WORKLOADS)
    if unknown or not chosen:
        sys.exit(f"--only: unknown workload(s) {sorted(unknown)}; choose from {list(WORKLOADS)}")
    return [name for name in WORKLOADS if name in chosen]


def _targets(servers: str, workloads: list[str]) -> tuple[list[Target], dict[str, str]]:
    """The targets to run, in table order, and those left out with the reason why."""
    every = all_targets()
    names = [t.name for t in every]
    wanted = [name.strip() for name in servers.split(",") if name.strip()] or names
    unknown = set(wanted) - set(names)
    if unknown:
        sys.exit(f"--servers: unknown {sorted(unknown)}; choose from {names}")
    skipped = {}
    chosen = []
    for target in every:
        if target.name not in wanted or not target.workloads & set(workloads):
            continue
        reason = target.available()
        if reason is None:
            chosen.append(target)
        else:
            skipped[target.label] = reason
    return chosen, skipped


async def _run_one(workload: Workload, target: Target, bench: Bench, number: int) -> Record:
    """One fresh run in its own directory, removed afterwards unless the workload keeps it
    (the whole work directory goes at the end); a failure is the record's error."""
    record = Record(workload.id, number, target.name)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{workload.id}-{target.name}-", dir=bench.work))
    started = time.perf_counter()
    try:
        outcome = await asyncio.wait_for(workload.measure(target, bench, run_dir),
                                         bench.options.timeout)
        record.figures, record.notes = outcome.figures, outcome.notes
    except Exception as exc:  # noqa: BLE001 - a failing peer is a finding, not the end
        record.error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__
    finally:
        if not workload.keeps_run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
        os.sync()  # no write-back of this run's data during the next one
    record.seconds = time.perf_counter() - started
    return record


def _progress(record: Record, rounds: int, target: Target) -> None:
    shown = record.error or ", ".join(
        f"{key} {value:,.{METRICS[key].digits}f} {METRICS[key].unit}"
        for key, value in record.figures.items() if key in METRICS)
    print(f"{record.workload} round {record.round + 1}/{rounds} {target.label}: {shown} "
          f"({record.seconds:.1f} s)", file=sys.stderr, flush=True)


async def _measure(workloads: list[str], targets: list[Target], bench: Bench,
                   rounds: int) -> list[Record]:
    """Every workload, round after round; targets in A-B-B-A order so that drift cancels."""
    records: list[Record] = []
    for name in workloads:
        failed: set[str] = set()
        for number in range(rounds):
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                if name not in target.workloads or target.name in failed:
                    continue
                record = await _run_one(WORKLOADS[name], target, bench, number)
                _progress(record, rounds, target)
                records.append(record)
                if record.error:
                    failed.add(target.name)
    return records


def main() -> int:
    args = _arguments()
    options = _options(args)
    shown = _workloads(args.only)
    # W4's table also shows the peak RSS of W1's runs.
    measured = [w for w in WORKLOADS if w in shown or (w == "W1" and "W4" in shown)]
    targets, skipped = _targets(args.servers, measured)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    try:
        machine = facts(work)
        records = run_loop(_measure(measured, targets, Bench(options, work), args.rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tables = [table(w, options, records, targets) for w in shown]
    report = markdown(tables, options, args.rounds, machine, targets, skipped)
    print(report)
    (args.out / "results.md").write_text(report)
    write_json(args.out / "results.json", records, options, machine, skipped)
    if write_chart(args.out / "results.png", shown, records, targets):
        print(f"chart: {args.out / 'results.png'}", file=sys.stderr)
    own_failures = [r for r in records if r.error and r.target.startswith("aiotusd")]
    return 1 if own_failures else 0


if __name__ == "__main__":
    sys.exit(main())
