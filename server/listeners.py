"""The server's ports, bound before anything else starts.

Binding first and listening later is what lets ``--workers`` share one port: the
supervisor binds, each worker it forks inherits the sockets, and the first worker that
is ready calls ``listen()`` (asyncio does, as a site starts). Until then the port is
taken but refuses connections, as a server that is not up yet should; a port in use
stops the start before the storage and the database are touched.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from .config import Settings


class CannotListen(Exception):
    """A port cannot be opened: in use, not ours to take, or its host is no address of ours."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``port`` on every address of ``host`` (as asyncio's
    ``create_server`` binds them: ``SO_REUSEADDR``, IPv6 sockets IPv6 only), not listening.

    Raises :class:`CannotListen` naming ``host:port`` in one line: the OSError of a failed
    bind tells the address as a tuple, and a host that does not resolve does not tell it.
    """
    sockets: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, protocol, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise CannotListen(f"cannot listen on {_address(host, port)}: {reason or exc}") from None
    return sockets


@dataclass
class Listeners:
    """The bound sockets of the main port and, with ``metrics_port``, of the metrics."""

    main: list[socket.socket]
    metrics: list[socket.socket] = field(default_factory=list)

    @classmethod
    def bind(cls, settings: Settings) -> Listeners:
        """Bind the ports the settings name; raises :class:`CannotListen`."""
        main = bind(settings.server.host, settings.server.port)
        if not (settings.metrics.enabled and settings.metrics.port):
            return cls(main)
        try:
            return cls(main, bind(settings.server.host, settings.metrics.port))
        except CannotListen:
            for sock in main:
                sock.close()
            raise

    def close(self) -> None:
        for sock in (*self.main, *self.metrics):
            sock.close()
