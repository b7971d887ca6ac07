"""Reading a Prometheus exposition, and checking the process metrics in one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: ``(name, sorted labels) -> value``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return 1024 * int(next(line for line in status.splitlines() if line.startswith("VmRSS:"))
                      .split()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_plausible_process(metrics: dict, pid: int, labelled: bool = False) -> None:
    """The process metrics of ``pid`` (with ``labelled``, those of its ``pid`` label) agree
    with what ``/proc`` tells the test."""
    labels = {"pid": str(pid)} if labelled else {}
    fds = value(metrics, "process_open_fds", **labels)
    assert 5 <= fds < value(metrics, "process_max_fds", **labels)
    assert abs(fds - open_fds(pid)) <= 8, (fds, open_fds(pid))
    rss = value(metrics, "process_resident_memory_bytes", **labels)
    assert 0.5 * resident_bytes(pid) <= rss <= 2 * resident_bytes(pid)
    # A worker that has served nothing may not have used a clock tick yet.
    cpu = metrics[("process_cpu_seconds_total", tuple(sorted(labels.items())))]
    # The metric adds user and system time as floats (0.43000000000000005 for 0.43).
    assert 0 <= round(cpu, 6) <= cpu_seconds(pid)
    started = value(metrics, "process_start_time_seconds", **labels)
    assert time.time() - 300 < started <= time.time()
