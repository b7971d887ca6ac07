"""Prometheus metrics of one server: what happened to uploads, requests and storage.

Every app has its own registry (so that several apps in one process, as in the tests,
count apart). Metrics are always counted, which costs a few counter increments per
request and none per body chunk (:mod:`server.ops` counts requests and serves
``/metrics`` when ``--metrics`` is on).

Hook delivery is counted by whoever delivers: :meth:`Metrics.hook_delivery` for each
attempt of a post-hook event and :meth:`Metrics.hook_outbox` for the outbox's depth.

With ``--workers``, each worker counts in memory and writes its counts to files of a
directory they share (:func:`count_across_processes`, the files of prometheus_client's
multiprocess mode) every :data:`PUBLISH_SECONDS`, before it answers ``/metrics`` and as it
stops; ``/metrics`` of whichever worker answers reports the sums: the server's totals, the
other workers' as of their last write.

The process's own metrics (``process_open_fds``, ``process_resident_memory_bytes``,
``process_cpu_seconds_total`` and the rest of prometheus_client's
:class:`~prometheus_client.ProcessCollector`) come with them. Multiprocess mode has no
such thing: it sums what was counted in files, and CPU or memory are not counted but read
from ``/proc`` at the scrape. So with ``--workers`` the worker that answers reads them for
every worker (the children of the supervising process) and labels each with its ``pid``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Counters get no ``_created`` series: they double the output and nobody reads them.
prometheus_client.disable_created_metrics()

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# From a quick HEAD to a PATCH of a large chunk over a slow link.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Why :mod:`server.limits` refused a request or a connection, or closed a slow one.
REFUSAL_REASONS = (
    "create_rate", "uploads_receiving", "connections", "connections_replaced",
    "header_timeout", "body_timeout", "send_timeout",
)


PUBLISH_SECONDS = 1.0
"""How often a worker writes what it counted to its files (see :class:`WorkerValue`)."""


def count_across_processes(directory: str) -> None:
    """Count the metrics made from now on in this process in memory, written to files in
    ``directory`` by :func:`publish`, where every worker of one server counts, so that any
    of them can report the sums.

    prometheus_client's multiprocess mode writes a value's file at every increment, five
    calls more each (some 25,000 instructions per small upload); a worker forks no process
    that counts (hooks' commands are executed), so it counts as one process does and
    writes the same files itself, in the same format.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    WorkerValue.files = _Files(directory)
    values.ValueClass = WorkerValue


def publish() -> None:
    """Write what this worker counted since it last did to its files, for the others'
    ``/metrics``; nothing outside a worker."""
    if WorkerValue.files is not None:
        WorkerValue.files.write_changed()


async def keep_published() -> None:
    """:func:`publish` every :data:`PUBLISH_SECONDS`, and once more when cancelled (the
    worker stops): a worker killed outright loses what it counted since the last write."""
    try:
        while True:
            await asyncio.sleep(PUBLISH_SECONDS)
            publish()
    finally:
        publish()


class _Files:
    """A worker's files of counts in ``directory``, one per kind of metric, named by its
    process id as prometheus_client's multiprocess collector expects; and the values
    changed since they were last written."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._pid = os.getpid()
        self._files: dict[str, MmapedDict] = {}
        self.changed: set[WorkerValue] = set()
        self.lock = threading.Lock()

    def file(self, prefix: str) -> MmapedDict:
        if prefix not in self._files:
            path = os.path.join(self._directory, f"{prefix}_{self._pid}.db")
            self._files[prefix] = MmapedDict(path)
        return self._files[prefix]

    def write_changed(self) -> None:
        with self.lock:
            changed, self.changed = self.changed, set()
            for value in changed:
                value.write()


class WorkerValue:
    """A metric's value in a worker (prometheus_client's ``ValueClass``): counted in memory,
    written to the worker's file by :func:`publish`."""

    _multiprocess = True
    files: ClassVar[_Files | None] = None

    def __init__(
        self, typ: str, metric_name: str, name: str, labelnames: list[str],
        labelvalues: list[str], help_text: str, multiprocess_mode: str = "", **kwargs: object,
    ) -> None:
        assert self.files is not None, "count_across_processes() makes this the ValueClass"
        self._files = self.files
        kind = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._file = self._files.file(kind)
        self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        # Written at once (0 for a new series), as prometheus_client does.
        self._value, self._timestamp = self._file.read_value(self._key)

    def inc(self, amount: float) -> None:
        with self._files.lock:
            self._value += amount
            self._files.changed.add(self)

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._files.lock:
            self._value = value
            self._timestamp = timestamp or 0.0
            self._files.changed.add(self)

    def get(self) -> float:
        return self._value

    def write(self) -> None:
        """Into the file, under the files' lock."""
        self._file.write_value(self._key, self._value, self._timestamp)

    def set_exemplar(self, exemplar: object) -> None:
        """Exemplars are not kept across processes (nor by prometheus_client)."""

    def get_exemplar(self) -> None:
        return None


class Metrics:
    """The metrics of one server; ``shared_dir``: the directory of
    :func:`count_across_processes`, whose sums :meth:`exposition` reports."""

    def __init__(self, shared_dir: str | None = None) -> None:
        self._shared_dir = shared_dir
        # A worker is made by the supervisor: its parent now, not once it is orphaned.
        self._supervisor = os.getppid()
        self.registry = CollectorRegistry(auto_describe=True)
        if shared_dir is None:
            ProcessCollector(registry=self.registry)

        def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, help, labels, registry=self.registry)

        self.uploads_created = counter("aiotusd_uploads_created", "Uploads created.")
        self.uploads_finished = counter(
            "aiotusd_uploads_finished", "Uploads that received every byte (finals: assembled)."
        )
        self.uploads_terminated = counter(
            "aiotusd_uploads_terminated", "Uploads terminated with DELETE."
        )
        self.uploads_expired = counter(
            "aiotusd_uploads_expired", "Unfinished uploads removed because they expired."
        )
        self.received_bytes = counter(
            "aiotusd_received_bytes", "Bytes of request bodies added to uploads."
        )
        self.storage_errors = counter(
            "aiotusd_storage_errors", "Requests that failed because storage failed or was full."
        )
        self.hook_deliveries = counter(
            "aiotusd_hook_deliveries",
            "Delivery attempts of post-hook events, by event and outcome "
            "(delivered, failed: retried later, dead: given up).",
            ("event", "outcome"),
        )
        self.refusals = counter(
            "aiotusd_refusals",
            "Requests and connections refused at a limit, by reason (create_rate: 429, "
            "uploads_receiving and connections: 503; the timeouts: connection closed).",
            ("reason",),
        )
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        # Counted in the database at each scrape: across workers, the latest count is it.
        self.uploads_in_progress = Gauge(
            "aiotusd_uploads_in_progress",
            "Active uploads that are not finished yet.",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.hook_outbox_events = Gauge(
            "aiotusd_hook_outbox_events",
            "Post-hook events in the outbox, pending or dead.",
            ("state",),
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.request_duration = Histogram(
            "aiotusd_request_duration_seconds",
            "Time from a request's headers until its response was sent, by method and status.",
            ("method", "status"),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.hook_outbox(0, 0)

    def removed(self, status: str) -> None:
        """An upload was terminated or expired (``status`` as in :mod:`server.state`)."""
        if status == "terminated":
            self.uploads_terminated.inc()
        elif status == "expired":
            self.uploads_expired.inc()

    def hook_delivery(self, event: str, outcome: str) -> None:
        """One delivery attempt of a post-hook ``event`` ended: ``delivered``, ``failed``
        (to be retried) or ``dead``."""
        self.hook_deliveries.labels(event, outcome).inc()

    def hook_outbox(self, pending: int, dead: int) -> None:
        """How many post-hook events wait in the outbox, and how many were given up on."""
        self.hook_outbox_events.labels("pending").set(pending)
        self.hook_outbox_events.labels("dead").set(dead)

    def refused(self, reason: str) -> None:
        """A limit refused a request or a connection (``reason`` of :data:`REFUSAL_REASONS`)."""
        self.refusals.labels(reason).inc()

    def exposition(self) -> bytes:
        if self._shared_dir is None:
            return prometheus_client.generate_latest(self.registry)
        publish()  # this worker's own, up to date
        registry = CollectorRegistry()
        MultiProcessCollector(registry, self._shared_dir)
        registry.register(WorkerProcesses(self._supervisor))
        return prometheus_client.generate_latest(registry)


class WorkerProcesses(Collector):
    """The process metrics of every worker of the supervisor ``supervisor`` (a pid), each
    sample labelled with the worker's ``pid``: what a :class:`ProcessCollector` reads of one
    process in ``/proc``, for each child of the supervisor at the time of the scrape."""

    def __init__(self, supervisor: int) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.workers():
            collector = ProcessCollector(pid=functools.partial(int, pid), registry=None)
            for metric in collector.collect():
                family = families.setdefault(
                    metric.name, Metric(metric.name, metric.documentation, metric.type)
                )
                for sample in metric.samples:
                    family.add_sample(sample.name, {"pid": str(pid)}, sample.value)
        return families.values()

    def workers(self) -> list[int]:
        """The supervisor's children (it forks nothing but workers); none if ``/proc``
        does not tell them."""
        children: list[int] = []
        try:
            for task in Path(f"/proc/{self._supervisor}/task").iterdir():
                children += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            return []
        return sorted(set(children))
