"""The documentation against the code: the settings table, the test command, the links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server import config_docs
from server.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_configuration_page_has_the_table_that_config_py_renders():
    page = CONFIGURATION.read_text(encoding="utf-8")
    assert page == config_docs.with_current_table(page), (
        "docs/configuration.md is out of date with SETTINGS in server/config.py: "
        f"run `{config_docs.COMMAND}` and commit docs/configuration.md"
    )


def test_configuration_page_lists_every_setting():
    page = CONFIGURATION.read_text(encoding="utf-8")
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        row = f"| `{setting.name}` | `{flag}` | `AIOTUSD_{setting.name.upper()}` |"
        assert row in page, row


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "server.config_docs", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.e2e
def test_the_generator_rewrites_a_stale_table_in_place(tmp_path):
    current = CONFIGURATION.read_text(encoding="utf-8")
    stale = re.sub(r"\| `port` \|.*\n", "", current)
    stale = stale.replace("| `1080` |", "| `8080` |").replace("Address to listen on", "Where")
    assert stale != current
    page = tmp_path / "configuration.md"
    page.write_text(stale, encoding="utf-8")
    result = run_generator(str(page))
    assert (result.returncode, result.stderr) == (0, "")
    assert page.read_text(encoding="utf-8") == config_docs.with_current_table(current)


@pytest.mark.e2e
def test_the_generator_refuses_a_page_without_markers_in_one_line(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text("# Configuration\n", encoding="utf-8")
    result = run_generator(str(page))
    assert result.returncode == 1
    markers = f"{config_docs.BEGIN!r} ... {config_docs.END!r}"
    assert result.stderr.splitlines() == [
        f"{config_docs.COMMAND}: {page}: the page has no {markers} markers"
    ]
    assert page.read_text(encoding="utf-8") == "# Configuration\n"


def test_readme_test_command_is_the_one_ci_runs():
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line for line in ci_lines if line.startswith("python3 -m venv")]
    assert len(commands) == 1
    command = commands[0].split(" && .venv/bin/python -m pytest")[0] + " && .venv/bin/python -m pytest"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n" + command + "\n" in readme


def prose(page: Path) -> list[str]:
    """The lines of a markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    return {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in prose(page) if line.startswith("#")
    }


def test_links_between_pages_lead_to_a_file_and_a_heading():
    """Sections moved between pages must take their links along."""
    broken = []
    for page in PAGES:
        for line in prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if not linked.exists() or (anchor and anchor not in anchors(linked)):
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
