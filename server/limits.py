"""Overload protection: a creation rate per client, and caps on bodies and connections.

- ``create_rate`` / ``create_burst``: a token bucket per client address. Each ``POST`` to
  the creation URL takes a token; a client without one gets ``429`` with ``Retry-After``.
- ``max_uploads_receiving``: request bodies (``PATCH``, ``POST`` with data) received at
  once, server-wide. Beyond it ``503`` with ``Retry-After``, before the body is read, the
  upload's lock taken or its state touched.
- ``max_connections``: open client connections. Counted as the protocol sees them come
  and go (:class:`~server.connections.AppRunner`), so they hold no request or upload. At the
  limit, a new connection takes the place of the one that has waited longest without a
  request under way (silent, sending its headers, or idle between requests), which is
  closed: connections that do nothing cannot keep others out, however fast they come.
  When every connection has a request under way, up to
  :data:`REFUSING_CONNECTIONS` more are answered ``503`` with ``Connection: close``
  (``/healthz`` is still answered, so that a full server is not restarted by its
  liveness probe); further ones are closed at once, which bounds the descriptors a
  flood of connections can take.
- ``header_timeout``, ``body_min_rate``, ``send_timeout`` (kept by
  :class:`~server.connections.AppRunner` and :mod:`server.receive`, the first two on
  :attr:`Limits.deadlines`): the connection of a slow or silent client is closed, so that
  it holds neither a connection nor a receiving slot for long; counted by
  :meth:`Limits.cut_off`.

Every refusal is counted in :meth:`Metrics.refused <server.metrics.Metrics.refused>` and
logged at debug level; the first of each kind is a warning, and so is the next one once
:data:`WARNING_INTERVAL` seconds have passed, with the number refused in between.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import math
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from .config import Settings
from .deadlines import Deadlines
from .errors import Overloaded, TooManyRequests
from .metrics import Metrics
from .proxy import ip_address_of

log = logging.getLogger("aiotusd")

BUSY_RETRY_AFTER = 5
"""``Retry-After`` seconds of a ``503`` at ``max_uploads_receiving`` or ``max_connections``."""
MAX_CLIENTS = 50_000
"""Most client buckets remembered (about 10 MB); beyond it the least recently used goes."""
REFUSING_CONNECTIONS = 64
"""Connections over ``max_connections`` answered ``503`` at once; further ones are closed."""
REFUSAL_GRACE = 2.0
"""Seconds a connection over ``max_connections`` gets to send its request, and to finish
sending a body after its ``503`` (to be read and dropped), before it is closed."""
WARNING_INTERVAL = 60.0
"""Least seconds between two warnings about refusals of one kind."""
_DESCRIPTOR_RESERVE = 64
"""File descriptors besides connections and uploads: database, S3 pool, hooks, logs."""
_MAX_CLIENT_KEY = 64
"""Longest client identifier kept: a forwarded ``for=`` may be any token, of any length."""
_CACHED_CLIENT_KEYS = 4096
"""Client addresses whose keys are remembered (the least recently used go first)."""
_MAX_RETRY_AFTER = 86400
"""Longest ``Retry-After`` given, whatever tiny ``create_rate`` would make the wait."""
_SLACK = 1e-6
"""Seconds of rounding error in the bucket arithmetic that do not count as a wait."""


class CreationRate:
    """Token buckets per client: ``burst`` creations at once, then ``rate`` per second.

    A bucket is kept as the one time at which it is full again (the "theoretical arrival
    time" of the generic cell rate algorithm), in order of last use. A full bucket is the
    same as none, so buckets are forgotten once full: each lives at most ``burst / rate``
    seconds after its client's last request, and at most ``max_clients`` are kept (the
    least recently used goes first, which gives its client a full bucket again).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = 1 / rate
        self._depth = burst * self._interval
        self._max_clients = max_clients
        self._clock = clock
        self._full_at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._full_at)

    def take(self, client: str) -> float:
        """Take one of ``client``'s tokens: 0.0 if it had one, else the seconds until it has."""
        now = self._clock()
        self._forget_full(now)
        full_at = max(self._full_at.pop(client, now), now)
        wait = full_at + self._interval - self._depth - now
        if wait > _SLACK:
            self._full_at[client] = full_at
            return wait
        self._full_at[client] = full_at + self._interval
        if len(self._full_at) > self._max_clients:
            self._full_at.popitem(last=False)
        return 0.0

    def _forget_full(self, now: float) -> None:
        # The least recently used come first; each bucket is full within ``burst / rate``
        # seconds of its last use, so looking at the front forgets all but the recent.
        while self._full_at:
            client, full_at = next(iter(self._full_at.items()))
            if full_at > now:
                return
            del self._full_at[client]


class Capacity:
    """A count of things going on at once, with a limit (0: none)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def take(self) -> bool:
        """Count one more if there is room; False if the limit is reached."""
        if self.limit and self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class OpenConnection(Protocol):
    """A client connection as :class:`Limits` sees it (``server.app``'s protocol)."""

    def waiting_for_a_request(self) -> bool:
        """Whether it has no request under way: nothing to read, handle or send."""

    def close_now(self) -> None:
        """Close it, whatever it has not sent or received yet."""


class Admission(enum.Enum):
    """What becomes of a new connection under ``max_connections``."""

    ADMITTED = "admitted"
    REFUSED = "refused"
    """Over the limit: its request is answered ``503`` and the connection closed."""
    DROPPED = "dropped"
    """Over the limit and :data:`REFUSING_CONNECTIONS`: closed without an answer."""


def client_key(address: str) -> str:
    """Whose bucket a client address draws on: its IP, or for IPv6 its /64, the network
    one subscriber gets (and could otherwise take a fresh address from for each request);
    an identifier that is not an IP (``Forwarded: for=_hidden``) stands for itself.

    Worked out once per address: a client sends request after request from the same one,
    and :mod:`ipaddress`, pure Python, parsing it again cost a body request more than the
    rest of the per-client share. Addresses longer than any IP are not remembered.
    """
    if len(address) > _MAX_CLIENT_KEY:
        return _client_key(address)
    return _cached_client_key(address)


def _client_key(address: str) -> str:
    ip = ip_address_of(address)
    if ip is None:
        return address[:_MAX_CLIENT_KEY]
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_cached_client_key = functools.lru_cache(maxsize=_CACHED_CLIENT_KEYS)(_client_key)


class Limits:
    """The limits of one server, with their counts; see the module's docstring."""

    def __init__(
        self, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.creations = (
            CreationRate(settings.limits.create_rate, settings.limits.create_burst, clock=clock)
            if settings.limits.create_rate
            else None
        )
        self.bodies = Capacity(settings.limits.max_uploads_receiving)
        self._client_bodies: dict[str, int] = {}
        """Bodies being received, by client (only clients with one or more)."""
        self.connections = Capacity(settings.limits.max_connections)
        self._open: dict[OpenConnection, None] = {}
        """Admitted connections, the longest open first."""
        self.refusing = Capacity(REFUSING_CONNECTIONS)
        self._metrics = metrics
        self._clock = clock
        self._warned_at: dict[str, float] = {}
        self._unreported: dict[str, int] = {}
        self.deadlines = Deadlines(_shortest_timeout(settings))
        """The connections' header clocks and the bodies' stall checks."""

    def check_creation(self, request: web.Request) -> None:
        """Take a token of the client's for a ``POST`` to the creation URL, or refuse (429)."""
        if self.creations is None:
            return
        client = request.remote or ""
        wait = self.creations.take(client_key(client))
        if wait:
            seconds = max(1, math.ceil(min(wait, _MAX_RETRY_AFTER)))
            self._refused(
                "create_rate",
                f"client {client[:_MAX_CLIENT_KEY] or '-'} creates uploads faster than "
                f"create_rate = {self.settings.limits.create_rate:g} per second "
                f"(create_burst = {self.settings.limits.create_burst})",
            )
            raise TooManyRequests(
                f"too many uploads created; try again in {seconds} s",
                {"Retry-After": str(seconds)},
            )

    def receiving(self, request: web.Request) -> Receiving:
        """``with limits.receiving(request):`` while a request with a body is handled, hold
        one of the ``max_uploads_receiving`` slots, and one of its client's
        ``max_uploads_receiving_per_client``; none free: refuse it (503) before anything
        else is done with it."""
        return Receiving(self, request)

    def _take_body_slot(self, request: web.Request) -> str | None:
        """Take a receiving slot and its client's (see :meth:`receiving`); the client."""
        client = self._take_client_slot(request)
        if not self.bodies.take():
            self._release_client_slot(client)
            self._refused(
                "uploads_receiving",
                f"{request.method} {request.path[:100]}: max_uploads_receiving = "
                f"{self.bodies.limit} bodies are being received",
            )
            raise Overloaded(
                "too many uploads in progress; try again later",
                {"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        return client

    def _take_client_slot(self, request: web.Request) -> str | None:
        """Count a body of the request's client; refuse one over its share (503), so that
        one client that drips just above ``body_min_rate`` cannot hold every slot.

        The share holds once half the slots are taken: while there are plenty, a client
        takes what it needs. That also spares a server whose proxy is not trusted (all
        its clients have the proxy's address) until it is busy.
        """
        limit = self.settings.limits.max_uploads_receiving_per_client
        if not limit or not self.bodies.limit:
            return None
        address = request.remote or ""
        client = client_key(address)
        bodies = self._client_bodies.get(client, 0)
        if bodies >= limit and 2 * self.bodies.in_use >= self.bodies.limit:
            self._refused(
                "uploads_receiving",
                f"client {address[:_MAX_CLIENT_KEY] or '-'} sends {bodies} bodies at once: "
                f"max_uploads_receiving_per_client = {limit}",
            )
            raise Overloaded(
                "too many uploads in progress from this client; try again later",
                {"Retry-After": str(BUSY_RETRY_AFTER)},
            )
        self._client_bodies[client] = bodies + 1
        return client

    def _release_client_slot(self, client: str | None) -> None:
        if client is None:
            return
        left = self._client_bodies[client] - 1
        if left:
            self._client_bodies[client] = left
        else:
            del self._client_bodies[client]

    def connection_opened(self, connection: OpenConnection) -> Admission:
        """Count a new connection, and say what becomes of it."""
        if self.connections.take() or self._make_room():
            self._open[connection] = None
            return Admission.ADMITTED
        admission = Admission.REFUSED if self.refusing.take() else Admission.DROPPED
        self._refused(
            "connections",
            f"max_connections = {self.connections.limit} connections are open; a new one is "
            + ("answered 503" if admission is Admission.REFUSED else "closed"),
        )
        return admission

    def connection_closed(self, connection: OpenConnection, admission: Admission) -> None:
        if admission is Admission.ADMITTED:
            if self._open.pop(connection, False) is None:  # not one that gave up its place
                self.connections.release()
        elif admission is Admission.REFUSED:
            self.refusing.release()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without a request under way; its
        place is the new one's. False when every connection has a request under way."""
        for connection in self._open:
            if connection.waiting_for_a_request():
                del self._open[connection]
                self.cut_off(
                    "connections_replaced",
                    f"max_connections = {self.connections.limit} connections are open: one "
                    "without a request under way is closed for a new one",
                )
                connection.close_now()
                return True
        return False

    def descriptor_shortfall(self) -> str | None:
        """Why the open file limit (``ulimit -n``) may run out before ``max_connections``
        and ``max_uploads_receiving`` are reached, or None if it will not."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        connections = self.connections.limit
        if soft == resource.RLIM_INFINITY or not connections:
            return None
        # A connection, and the upload file of the body it sends, if any.
        bodies = min(self.bodies.limit or connections, connections)
        needed = connections + REFUSING_CONNECTIONS + bodies + _DESCRIPTOR_RESERVE
        if needed <= soft:
            return None
        return (
            f"the open file limit (ulimit -n) is {soft}, but max_connections = {connections} "
            f"and max_uploads_receiving = {self.bodies.limit} may take {needed} file "
            "descriptors: raise the limit or lower those settings"
        )

    def cut_off(self, reason: str, detail: str) -> None:
        """Count a connection closed because its client took too long (``reason``: which
        timeout), and log it at debug level only: silent connections from scanners and
        browsers' spare ones are everyday, and the count in the metrics shows when not."""
        self._metrics.refused(reason)
        log.debug("closed (%s): %s", reason, detail, extra={"refusal": reason})

    def _refused(self, reason: str, detail: str) -> None:
        self._metrics.refused(reason)
        log.debug("refused (%s): %s", reason, detail, extra={"refusal": reason})
        now = self._clock()
        count = self._unreported.get(reason, 0) + 1
        last = self._warned_at.get(reason)
        if last is not None and now - last < WARNING_INTERVAL:
            self._unreported[reason] = count
            return
        self._unreported[reason] = 0
        self._warned_at[reason] = now
        log.warning(
            "limit reached: %s; refused: %d since the last such warning (at most one every "
            "%g s; each refusal is logged at debug level)",
            detail, count, WARNING_INTERVAL, extra={"refusal": reason},
        )


def _shortest_timeout(settings: Settings) -> float:
    """The shortest of the timeouts that :attr:`Limits.deadlines` keeps, but for
    :data:`REFUSAL_GRACE`, which may be met up to its resolution late: five looks a second
    for a connection that is refused anyway would cost every body watched."""
    limits = settings.limits
    timeouts = [limits.header_timeout, limits.idle_timeout]
    if limits.body_min_rate:
        timeouts.append(limits.body_rate_window)
    return min(timeout for timeout in timeouts if timeout > 0)


class Receiving:
    """The slots of :meth:`Limits.receiving`, held for a ``with`` block. A class, not a
    generator (``contextlib.contextmanager``): every POST and PATCH enters one, and a
    generator's context took some four calls more."""

    __slots__ = ("_client", "_holds", "_limits", "_request")

    def __init__(self, limits: Limits, request: web.Request) -> None:
        self._limits = limits
        self._request = request
        self._client: str | None = None
        self._holds = False

    def __enter__(self) -> None:
        if self._request.body_exists:
            self._client = self._limits._take_body_slot(self._request)
            self._holds = True

    def __exit__(self, *exc_info: object) -> None:
        if self._holds:
            self._holds = False
            self._limits.bodies.release()
            self._limits._release_client_slot(self._client)


LIMITS = web.AppKey("aiotusd.limits", Limits)
