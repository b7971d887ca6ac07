"""Facts about the machine and the software versions, recorded with every result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from .common import GIB, REPO, VENVS
from .targets import NODE

PEER_PACKAGES = {
    "tuspyserver": ("tuspyserver", "fastapi", "uvicorn"),
    "aiohttp-tus": ("aiohttp-tus", "aiohttp"),
}


def _first_line(argv: list[str], cwd: Path = REPO) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                              check=False)
    except OSError:
        return "not found"
    # Some tools print their version on stderr; a failure is no version at all.
    lines = (done.stdout or done.stderr).strip().splitlines() if done.returncode == 0 else []
    return lines[0] if lines else "unknown"


def _proc_field(path: str, name: str) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return "?"


def _mount_of(path: Path) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) of the filesystem that holds ``path``."""
    best = ("?", "/", "?")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, point, fstype = line.split()[:3]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (device, point, fstype)
    return best


def _disk(path: Path) -> str:
    device, point, fstype = _mount_of(path)
    name = Path(device).name
    block = Path("/sys/class/block") / name
    if (block / "partition").exists():
        block = block.resolve().parent
    details = [f"{name} {(block / path).read_text().strip()}"
               for name, path in (("model", "device/model"), ("rotational", "queue/rotational"))
               if (block / path).exists()]
    return f"{device} ({', '.join(details) or 'no block device'}), {fstype} mounted at {point}"


def _pip_versions(venv: str, packages: tuple[str, ...]) -> str:
    python = VENVS / venv / "bin" / "python"
    if not python.exists():
        return "not installed"
    code = ("import importlib.metadata as m, sys; "
            "print(', '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))")
    return _first_line([str(python), "-c", code, *packages])


def _npm_versions() -> str:
    found = []
    for package in ("server", "file-store", "s3-store"):
        manifest = NODE / "node_modules" / "@tus" / package / "package.json"
        if manifest.exists():
            found.append(f"@tus/{package} {json.loads(manifest.read_text())['version']}")
    return ", ".join(found) or "not installed"


def _harness_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = []
    for package in ("aiohttp", "uvloop", "aiobotocore", "moto", "matplotlib"):
        try:
            names.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            names.append(f"{package} not installed")
    return ", ".join(names)


def facts(work: Path) -> dict[str, str]:
    """What to publish next to the figures: hardware, kernel, filesystem, every version."""
    memory_kib = int(_proc_field("/proc/meminfo", "MemTotal").split()[0])
    return {
        "cpu": f"{os.cpu_count()} × {_proc_field('/proc/cpuinfo', 'model name')}",
        "memory": f"{memory_kib * 1024 / GIB:.1f} GiB",
        "disk (data directories and dd)": _disk(work),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "aiotusd": _first_line([sys.executable, "-m", "server", "--version"]) + ", commit "
                   + _first_line(["git", "describe", "--always", "--dirty"]),
        "node": _first_line(["node", "--version"]),
        "@tus packages": _npm_versions(),
        **{venv: _pip_versions(venv, packages) for venv, packages in PEER_PACKAGES.items()},
        "load generator": f"{_harness_versions()}; "
                          + " ".join(_first_line(["curl", "--version"]).split()[:2]),
        "dd": _first_line(["dd", "--version"]),
    }
