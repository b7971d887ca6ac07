"""The server's ports (or its unix socket), bound before anything else starts.

Binding first and listening later is what lets ``--workers`` share one port: the
supervisor binds, each worker it forks inherits the sockets, and the first worker that
is ready calls ``listen()`` (asyncio does, as a site starts). Until then the port is
taken but refuses connections, as a server that is not up yet should; a port in use
stops the start before the storage and the database are touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
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


def bind_unix(path: str) -> socket.socket:
    """A stream socket bound at ``path``, not listening.

    A socket file that a server which died left behind is replaced; one that a server
    still listens on, or a file that is no socket, is refused with :class:`CannotListen`
    (in one line, naming ``path``): the file is never taken from a live server.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _remove_stale(path)
        sock.bind(path)
    except OSError as exc:
        sock.close()
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise CannotListen(f"cannot listen on unix socket {path}: {reason or exc}") from None
    except CannotListen:
        sock.close()
        raise
    return sock


def _remove_stale(path: str) -> None:
    """Remove the socket file at ``path`` if no server answers on it (connecting is refused)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise CannotListen(f"cannot listen on unix socket {path}: the file there is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise CannotListen(f"cannot listen on unix socket {path}: a server is listening on it")


@dataclass
class Listeners:
    """The bound sockets of the main port (or ``unix_socket``) and, with ``metrics_port``,
    of the metrics."""

    main: list[socket.socket]
    metrics: list[socket.socket] = field(default_factory=list)
    unix_file: tuple[str, int] | None = None
    """The path and inode of the ``unix_socket`` file this server made, removed on close."""

    @classmethod
    def bind(cls, settings: Settings) -> Listeners:
        """Bind the ports (or the unix socket) the settings name; raises :class:`CannotListen`."""
        path = settings.server.unix_socket
        if path:
            main = [bind_unix(path)]
            listeners = cls(main, unix_file=(path, os.stat(path).st_ino))
        else:
            listeners = cls(bind(settings.server.host, settings.server.port))
        if settings.metrics.enabled and settings.metrics.port:
            try:
                listeners.metrics = bind(settings.server.host, settings.metrics.port)
            except CannotListen:
                listeners.close()
                raise
        return listeners

    def close(self) -> None:
        """Close the sockets, and remove the unix socket's file unless another server
        has put its own there since."""
        for sock in (*self.main, *self.metrics):
            sock.close()
        if self.unix_file is not None:
            path, inode = self.unix_file
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            self.unix_file = None
