"""bench/run.py still runs: aiotusd and the aiohttp sink only, tiny sizes, one round.

Needs none of the peers that bench/setup installs (and no matplotlib: the chart is skipped).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.mark.timeout(60)
def test_bench_runs_aiotusd_and_prints_its_rows(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--servers", "aiotusd,sink", "--only", "W1,W3",
         "--rounds", "1", "--size", "4MiB", "--small-count", "20", "--small-concurrency", "4",
         "--timeout", "40", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=50, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| aiotusd[^|]*\| [\d,]+", done.stdout, re.MULTILINE)
    assert len(rows) == 2, done.stdout  # W1 and W3, each with a figure
    assert "| aiohttp sink (ceiling) |" in done.stdout
    # W3's row has every figure: the server CPU per upload of each kind too.
    w3 = re.search(r"^\| aiotusd \(fsync always\) \|(.*)$", done.stdout.split("### W3")[1],
                   re.MULTILINE)
    assert w3 is not None and "server CPU, µs/upload" in done.stdout, done.stdout
    assert re.fullmatch(r"( [\d,.]+ \|){6}", w3.group(1)), w3.group(1)
    assert (tmp_path / "out" / "results.json").exists()
    assert not list((tmp_path / "work").iterdir()), "the run left files behind"
