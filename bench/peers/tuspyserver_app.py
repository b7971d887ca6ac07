"""tuspyserver for bench/run.py: its FastAPI router under uvicorn, no access log.

    bench/.venv/tuspyserver/bin/python tuspyserver_app.py PORT DATA_DIR
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router


def main() -> None:
    port, data_dir = int(sys.argv[1]), sys.argv[2]
    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=data_dir))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
