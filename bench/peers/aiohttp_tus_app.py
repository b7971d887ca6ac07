"""aiohttp-tus for bench/run.py: ``setup_tus`` on a bare aiohttp app, no access log.

    bench/.venv/aiohttp-tus/bin/python aiohttp_tus_app.py PORT DATA_DIR

aiohttp-tus reads each PATCH body whole into memory (``request.read()``), which aiohttp
limits to ``client_max_size``; the limit is lifted here so that large PATCHes run at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web
from aiohttp_tus import setup_tus

NO_BODY_LIMIT = 1 << 40


def main() -> None:
    port, data_dir = int(sys.argv[1]), Path(sys.argv[2])
    data_dir.mkdir(parents=True, exist_ok=True)
    app = web.Application(client_max_size=NO_BODY_LIMIT)
    setup_tus(app, upload_path=data_dir, upload_url="/files")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
