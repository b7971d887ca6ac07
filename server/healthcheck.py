"""``aiotusd healthcheck``: whether the server that some settings describe answers
``GET /healthz`` with ``200``, as a container's health check asks.

The settings are loaded as the server loads them (flags, ``AIOTUSD_*``, the config file),
so the port probed is the one configured, however it was given. A health check runs beside
the server, not with its command line: ``--pid`` takes the command line, the environment
and the working directory of the server's process from ``/proc`` (in a container the
server is process 1), so that flags given to ``docker run`` count too.
"""

from __future__ import annotations

import http.client
import os
import ssl
from pathlib import Path

from .config import Settings
from .errors import ConfigError

TIMEOUT = 4.0
"""Seconds the probe waits: under Docker's default health-check timeout of 5 s."""

_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
"""Listening on every address: the probe asks the loopback address of the family."""


def _server_arguments(pid: int, command_line: list[str]) -> list[str]:
    """The arguments of ``aiotusd`` in a process's command line: after ``aiotusd`` (run
    as a script, its interpreter comes first; under an init such as ``docker run --init``,
    the init's arguments come first and name it too), or after ``-m server``."""
    for index, part in enumerate(command_line):
        if Path(part).name == "aiotusd":
            return command_line[index + 1 :]
        if part == "-m" and command_line[index + 1 : index + 2] == ["server"]:
            return command_line[index + 2 :]
    raise ConfigError(f"process {pid} does not run aiotusd: {' '.join(command_line)}")


def process_of(pid: int) -> tuple[list[str], dict[str, str], str]:
    """The ``aiotusd`` arguments, the environment and the working directory of process
    ``pid``; :class:`ConfigError` naming it when they cannot be read."""
    proc = Path("/proc") / str(pid)
    try:
        command_line = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
        entries = (proc / "environ").read_bytes().split(b"\0")[:-1]
        cwd = os.readlink(proc / "cwd")
    except OSError as exc:
        raise ConfigError(f"cannot read the command line of process {pid}: "
                          f"{exc.strerror or exc}") from None
    environ = dict(entry.decode(errors="surrogateescape").partition("=")[::2]
                   for entry in entries)
    arguments = [part.decode(errors="surrogateescape") for part in command_line]
    return _server_arguments(pid, arguments), environ, cwd


def probe(settings: Settings) -> str | None:
    """None when the server answers ``/healthz`` with 200; else why not, in one line."""
    host = _ANY.get(settings.server.host, settings.server.host)
    port = settings.server.port
    if port == 0:
        return "port 0 is picked by the server when it starts: give the port it listens on"
    tls = bool(settings.server.tls_cert)
    scheme = "https" if tls else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    if tls:  # the certificate names the public host, not the address probed
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=TIMEOUT, context=ssl._create_unverified_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return f"{url}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        connection.close()
    return None if status == 200 else f"{url} answered {status}"
