"""A webhook receiver for aiotusd that checks each event's signature and logs the event.

aiotusd signs every hook request with ``hooks_secret`` (docs/hooks.md): ``Hook-Signature``
is ``sha256=`` and the hex HMAC-SHA256 of ``Hook-Timestamp``, a ``.`` and the body. A
request whose signature does not match, or whose timestamp is more than ``MAX_AGE``
seconds off (a captured request sent again), is answered 401 and logged as refused:
then aiotusd retries a post event, and a forged one gets nowhere. A signed event is
answered 200 with no body (for a blocking event: go on) and logged as one line.

    AIOTUSD_HOOKS_SECRET=... python receiver.py [--host 127.0.0.1] [--port 8000]

The secret is read from the same variable as aiotusd's, so that both can share one
environment file. ``GET /healthz`` answers 200, for a container's health check.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping

from aiohttp import web

SECRET_VARIABLE = "AIOTUSD_HOOKS_SECRET"
MAX_AGE = 300
"""Seconds a signed request stays good: more than aiotusd's clock may be off, far less
than someone who captured a request would wait."""
SECRET = web.AppKey("secret", bytes)


def refusal(secret: bytes, headers: Mapping[str, str], body: bytes) -> str | None:
    """Why the request is not aiotusd's own, or None when its signature is good."""
    timestamp = headers.get("Hook-Timestamp", "")
    if not timestamp.isdigit():
        return "no Hook-Timestamp"
    if abs(time.time() - int(timestamp)) > MAX_AGE:
        return f"Hook-Timestamp {timestamp} is more than {MAX_AGE} s off"
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    # As bytes: compare_digest refuses text that is not ASCII, which a header may be.
    given = headers.get("Hook-Signature", "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(b"sha256=" + mac.hexdigest().encode(), given):
        return "bad Hook-Signature"
    return None


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    name = request.headers.get("Hook-Name", "?")
    reason = refusal(request.app[SECRET], request.headers, body)
    if reason is not None:
        print(f"refused {name} from {request.remote}: {reason}", flush=True)
        return web.Response(status=401, text=f"{reason}\n")
    try:
        event = json.loads(body)
        upload = event["upload"]
        print(f"accepted {event['type']} hook_id={event['id']} upload={upload['id']} "
              f"offset={upload['offset']} size={upload['size']}", flush=True)
    except (ValueError, KeyError, TypeError):
        print(f"refused {name} from {request.remote}: not an aiotusd event", flush=True)
        return web.Response(status=400, text="not an aiotusd event\n")
    return web.Response()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    arguments = parser.parse_args()
    secret = os.environ.get(SECRET_VARIABLE, "")
    if not secret:
        print(f"receiver: error: {SECRET_VARIABLE} is not set: it must be aiotusd's "
              "hooks_secret", file=sys.stderr)
        return 2
    app = web.Application()
    app[SECRET] = secret.encode()
    app.router.add_post("/hook", hook)
    app.router.add_get("/healthz", healthz)
    print(f"receiver: listening on {arguments.host}:{arguments.port}", flush=True)
    web.run_app(app, host=arguments.host, port=arguments.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
