"""CI's share of bench/soak.py: a few dozen uploads per backend through restarts and disconnects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_soak_loses_and_corrupts_nothing_on_either_backend() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--backends", "fs,s3",
         "--uploads", "30", "--concurrency", "8", "--max-size", "8MiB", "--max-chunk", "2MiB",
         "--disconnect-rate", "0.1", "--restart-every", "0.3", "0.8", "--time-limit", "120"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("soak ")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(":")[0] for line in lines] == ["soak fs", "soak s3"], result.stdout
    for line in lines:
        fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
        assert fields["uploads"] == "30", line
        assert fields["corrupt"] == fields["lost_acknowledged_bytes"] == fields["failed"] == "0", line
        assert int(fields["restarts"]) >= 1, line
