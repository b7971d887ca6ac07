"""What is measured: tus servers (aiotusd and its peers) and the ceilings next to them.

A server is a command line that listens on a given port and keeps its uploads in a given
directory (or, for the S3 workload, in a given bucket). A ceiling is not a tus server but
the fastest the same bytes can go: through a bare aiohttp handler, to disk with ``dd``,
or to S3 with a plain multipart upload. ``available`` says why a target cannot run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import BENCH, REPO, VENVS
from .procs import Command, clean_env

NODE = BENCH / "peers" / "node"
PEERS = BENCH / "peers"
FILE_WORKLOADS = frozenset({"W1", "W2", "W3", "W4", "W5"})
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


@dataclass(frozen=True)
class S3Place:
    endpoint: str
    bucket: str


@dataclass(frozen=True)
class Launch:
    port: int
    data_dir: Path
    s3: S3Place | None = None


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    workloads: frozenset[str]
    ceiling: bool = False
    base_path: str = "/files/"
    command: Callable[[Launch], Command] | None = None
    available: Callable[[], str | None] = lambda: None


def _aiotusd(fsync: str) -> Callable[[Launch], Command]:
    def command(launch: Launch) -> Command:
        argv = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(launch.port),
                "--data-dir", str(launch.data_dir), "--log-level", "warning", "--fsync", fsync,
                "--create-rate", "0"]
        if launch.s3 is not None:
            argv += ["--storage", "s3", "--s3-endpoint", launch.s3.endpoint,
                     "--s3-bucket", launch.s3.bucket, "--s3-region", "us-east-1",
                     "--s3-path-style", "true"]
        env = clean_env(**S3_CREDENTIALS, AWS_EC2_METADATA_DISABLED="true",
                         AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        return Command(argv, env, REPO)

    return command


def _node(launch: Launch) -> Command:
    env = clean_env(PORT=str(launch.port), DATA_DIR=str(launch.data_dir),
                     TMPDIR=str(launch.data_dir))
    if launch.s3 is not None:
        env |= {"S3_ENDPOINT": launch.s3.endpoint, "S3_BUCKET": launch.s3.bucket}
    return Command(["node", str(NODE / "server.js")], env, NODE)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    package = NODE / "node_modules" / "@tus" / "server" / "package.json"
    if not package.exists():
        return "not installed (run bench/setup: npm ci in bench/peers/node)"
    wanted = json.loads(package.read_text()).get("engines", {}).get("node", "")
    have = subprocess.run(["node", "--version"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()
    if wanted.startswith(">=") and _version_tuple(have) < _version_tuple(wanted):
        return f"@tus/server needs node {wanted}, this machine has {have}"
    return None


def _venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def _venv_missing(name: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        if _venv_python(name).exists():
            return None
        log = VENVS / f"{name}.log"
        if log.exists():
            lines = log.read_text(errors="replace").strip().splitlines()
            return f"bench/setup could not install it: {lines[-1] if lines else 'no output'}"
        return f"not installed (run bench/setup: it makes bench/.venv/{name})"

    return missing


def _python_peer(venv: str, script: str) -> Callable[[Launch], Command]:
    def command(launch: Launch) -> Command:
        argv = [str(_venv_python(venv)), str(PEERS / script), str(launch.port),
                str(launch.data_dir)]
        return Command(argv, clean_env(), PEERS)

    return command


def _sink(launch: Launch) -> Command:
    argv = [sys.executable, str(PEERS / "sink.py"), str(launch.port), str(launch.data_dir)]
    return Command(argv, clean_env(), PEERS)


def _missing_tool(tool: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(tool) else f"{tool} is not on PATH"


def all_targets() -> list[Target]:
    """Every target, in table order; aiotusd once per durability mode (``--fsync``)."""
    every = FILE_WORKLOADS | {"W6"}
    return [
        Target("aiotusd", "aiotusd (fsync always)", every, command=_aiotusd("always")),
        Target("aiotusd-nofsync", "aiotusd (fsync none)", every, command=_aiotusd("none")),
        Target("tus-node", "@tus/server", every, base_path="/files",
               command=_node, available=_node_missing),
        Target("tuspyserver", "tuspyserver", FILE_WORKLOADS,
               command=_python_peer("tuspyserver", "tuspyserver_app.py"),
               available=_venv_missing("tuspyserver")),
        Target("aiohttp-tus", "aiohttp-tus", FILE_WORKLOADS, base_path="/files",
               command=_python_peer("aiohttp-tus", "aiohttp_tus_app.py"),
               available=_venv_missing("aiohttp-tus")),
        Target("sink", "aiohttp sink (ceiling)", FILE_WORKLOADS, ceiling=True, command=_sink),
        Target("dd", "dd conv=fdatasync (ceiling)", frozenset({"W1", "W2"}), ceiling=True,
               available=_missing_tool("dd")),
        Target("aiobotocore", "aiobotocore multipart (ceiling)", frozenset({"W6"}),
               ceiling=True),
    ]


REFERENCE = "tus-node"
"""Ratios in the table are against this target, in the same round."""
