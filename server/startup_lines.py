"""What the start-up lines say a server serves: where, from what storage and database,
to which hooks, with which limits changed, and the demo and metrics pages.

A few lines, each starting with its subject (``storage:``, ``database:``) so that ``grep``
finds it, and each with the same facts as fields of its own for ``--log-format json``.
Nothing secret: URLs lose their user, password and query.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from .config import SETTINGS, Settings, formatted
from .database import postgres_url, without_secrets

Line = tuple[str, dict[str, Any]]
"""A message, and its facts as log record fields."""

_LIMIT_SECTIONS = ("uploads", "limits")


def public_url(url: str) -> str:
    """``url`` without its user, password, query and fragment, which may hold secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def storage_line(settings: Settings) -> Line:
    if settings.storage.backend == "filesystem":
        where = os.path.abspath(settings.storage.data_dir)
        return f"storage: filesystem at {where}", {"storage": "filesystem", "path": where}
    s3 = settings.s3
    endpoint = public_url(s3.endpoint) if s3.endpoint else "AWS"
    region = f" ({s3.region})" if s3.region else ""
    message = f"storage: s3 bucket {s3.bucket}, prefix {s3.prefix or '(none)'}, at {endpoint}"
    return (message + region,
            {"storage": "s3", "bucket": s3.bucket, "prefix": s3.prefix, "endpoint": endpoint})


def database_line(settings: Settings) -> Line:
    url = postgres_url(settings)
    if url is None:
        path = os.path.abspath(settings.storage.database_path)
        return f"database: sqlite at {path}", {"database": "sqlite", "path": path}
    where = without_secrets(url)
    return f"database: postgresql at {where}", {"database": "postgresql", "url": where}


def hooks_line(settings: Settings) -> Line | None:
    """The hooks' target and format; None without hooks. ``format`` and ``dir`` are read
    where present, so that the line tells them once those settings exist."""
    hooks = settings.hooks
    targets = [("url", public_url(hooks.url) if hooks.url else ""),
               ("command", hooks.command), ("dir", getattr(hooks, "dir", "")),
               ("python", hooks.python)]
    kind, target = next(((kind, where) for kind, where in targets if where), ("", ""))
    if not kind:
        return None
    hook_format = getattr(hooks, "format", "aiotusd")
    events = ",".join(hooks.events) or "(none)"
    return (f"hooks: {kind} {target}, format {hook_format}, events {events}",
            {"hooks": kind, "target": target, "format": hook_format, "events": hooks.events})


def limits_line(settings: Settings) -> Line | None:
    """The limits that differ from their defaults; None when none do."""
    changed = {
        setting.name: formatted(setting, setting.get(settings))
        for setting in SETTINGS
        if setting.section in _LIMIT_SECTIONS and setting.get(settings) != setting.default
    }
    if not changed:
        return None
    text = ", ".join(f"{name} {value}" for name, value in changed.items())
    return f"limits changed: {text}", {"limits": changed}


def startup_lines(settings: Settings, root: str, metrics_url: str | None) -> list[Line]:
    """The lines after the one that says where the server listens (``root``, such as
    ``http://127.0.0.1:1080``), with ``metrics_url`` when metrics are served."""
    lines = [storage_line(settings), database_line(settings), hooks_line(settings),
             limits_line(settings)]
    if settings.server.demo:
        lines.append((f"demo page at {root}/", {"demo": root + "/"}))
    if metrics_url is not None:
        lines.append((f"metrics at {metrics_url}", {"metrics": metrics_url}))
    return [line for line in lines if line is not None]
