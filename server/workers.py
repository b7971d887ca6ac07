"""One worker of ``--workers``: what it is to the app, and its share of the server's limits.

The processes themselves are started and kept by :mod:`server.supervisor`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import Settings


@dataclass(frozen=True)
class Worker:
    """The worker ``index`` (from 0) of ``count``, serving the ports it inherited."""

    index: int
    count: int
    metrics_dir: str
    """Where every worker counts its metrics, so that ``/metrics`` of any of them reports
    the server's totals (see :func:`server.metrics.count_across_processes`)."""
    ready: int
    """The pipe the worker writes one byte to once it serves: the supervisor waits for it."""
    lifeline: int
    """The pipe only the supervisor writes to: its end (the supervisor is gone, killed
    even) tells the worker to stop, which leaves no worker serving unsupervised."""

    @property
    def runs_sweeps(self) -> bool:
        """Whether this worker runs the expiry sweep: one of them does, always the same,
        restarted or not, so that the uploads' removals are not raced for."""
        return self.index == 0


def _share(limit: int, count: int) -> int:
    """``limit`` divided by ``count``, rounded up; 0 (no limit) stays 0."""
    return -(-limit // count)


def share_of(settings: Settings, count: int) -> Settings:
    """The settings of one of ``count`` workers: the limits that are the server's
    (``max_connections``, ``max_uploads_receiving``, its per-client share, and the creation
    rate and burst) divided between them, rounded up.

    Each worker enforces its share of what it sees, so the server's total is kept when
    the kernel spreads connections evenly, as it does over many. A client on one
    keep-alive connection reaches one worker, and is held to that worker's share of
    ``create_rate`` and ``create_burst`` (docs/scale-out.md says so).
    """
    if count == 1:
        return settings
    limits = settings.limits
    return dataclasses.replace(settings, limits=dataclasses.replace(
        limits,
        max_connections=_share(limits.max_connections, count),
        max_uploads_receiving=_share(limits.max_uploads_receiving, count),
        max_uploads_receiving_per_client=_share(limits.max_uploads_receiving_per_client, count),
        create_rate=limits.create_rate / count,
        create_burst=_share(limits.create_burst, count),
    ))
