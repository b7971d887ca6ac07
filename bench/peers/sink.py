"""The framework ceiling: the least aiohttp app that speaks enough tus for bench/run.py.

    python sink.py PORT DATA_DIR

POST creates an empty file (taking a body along, like creation-with-upload), PATCH streams
its body into the file chunk by chunk as aiohttp hands it over, HEAD answers the offset.
Offsets live in memory; nothing is validated, locked, recorded or synced: what aiotusd
does on top of this is what the comparison shows.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from aiohttp import web

TUS = {"Tus-Resumable": "1.0.0"}
OFFSETS = web.AppKey("offsets", dict[str, int])
DATA_DIR = web.AppKey("data_dir", Path)


async def stream_into(request: web.Request, upload_id: str) -> int:
    offsets = request.app[OFFSETS]
    fd = os.open(request.app[DATA_DIR] / upload_id, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        async for chunk in request.content.iter_any():
            offsets[upload_id] += os.pwrite(fd, chunk, offsets[upload_id])
    finally:
        os.close(fd)
    return offsets[upload_id]


async def options(request: web.Request) -> web.Response:
    extensions = {"Tus-Extension": "creation,creation-with-upload"}
    return web.Response(status=204, headers={**TUS, **extensions})


async def create(request: web.Request) -> web.Response:
    upload_id = uuid.uuid4().hex
    request.app[OFFSETS][upload_id] = 0
    offset = await stream_into(request, upload_id)
    location = str(request.url.with_path(f"/files/{upload_id}"))
    headers = {**TUS, "Location": location, "Upload-Offset": str(offset)}
    return web.Response(status=201, headers=headers)


async def patch(request: web.Request) -> web.Response:
    offset = await stream_into(request, request.match_info["id"])
    return web.Response(status=204, headers={**TUS, "Upload-Offset": str(offset)})


async def head(request: web.Request) -> web.Response:
    offset = request.app[OFFSETS][request.match_info["id"]]
    return web.Response(headers={**TUS, "Upload-Offset": str(offset), "Cache-Control": "no-store"})


def main() -> None:
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    app = web.Application()
    app[OFFSETS] = {}
    app[DATA_DIR] = data_dir
    app.router.add_route("OPTIONS", "/files/", options)
    app.router.add_post("/files/", create)
    app.router.add_patch("/files/{id}", patch)
    app.router.add_head("/files/{id}", head)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
