"""Units, paths and small helpers shared by the harness modules."""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
VENVS = BENCH / ".venv"

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kib": KIB, "mib": MIB, "gib": GIB}


def parse_size(text: str) -> int:
    """``"64MiB"`` -> 67108864; bytes when there is no unit."""
    match = _SIZE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"not a size: {text!r} (use e.g. 4MiB, 1GiB, 65536)")
    return int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]


def positive(text: str) -> int:
    """An argparse type: a whole number above 0."""
    number = int(text)
    if number < 1:
        raise ValueError(f"not above 0: {number}")
    return number


def format_size(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile: the smallest value with ``percent`` % of values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
