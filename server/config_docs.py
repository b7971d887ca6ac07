"""The settings table of ``docs/configuration.md``, rendered from :data:`SETTINGS`.

Names, flags, environment variables, defaults, bounds and meanings all come from
:mod:`server.config`, so the page cannot drift from the code: ``tests/test_docs.py``
fails when the table on the page differs from :func:`render_table`, and
``python -m server.config_docs`` writes the current table between the two marker
comments of the page.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ENV_PREFIX, SETTINGS, Setting, Settings
from .config_values import (
    format_duration,
    parse_duration,
    parse_size,
    parse_whole_seconds,
)

COMMAND = "python -m server.config_docs"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = f"<!-- Generated from server/config.py by `{COMMAND}`: edit the settings there. -->"
END = "<!-- End of the generated settings table. -->"

# What the page says beyond a setting's help text (which --help shows too): links to
# the pages that explain a setting, and consequences too long for --help.
NOTES: dict[str, str] = {
    "host": "; `0.0.0.0` for every IPv4 interface",
    "port": " (0 picks a free port and logs it)",
    "base_path": ": `POST` to it, uploads at `{base_path}{id}`",
    "database": " (see [PostgreSQL](scale-out.md))",
    "storage": " (see [S3](storage.md#s3-and-s3-compatible-stores))",
    "max_size": ". Announced as `Tus-Max-Size`. A final upload is held to it too: refused with "
    "`413` when its partials already hold more, and answering `410` (never assembled) once a "
    "deferred partial length makes it larger",
    "max_concat_parts": "; more, or one partial named twice, are refused with `400`",
    "lock_timeout": " (then `423`)",
    "body_min_rate": " (see [Limits](operations.md#limits))",
    "fsync": ". See [Durability](durability-and-security.md#durability)",
    "create_rate": "; see [Limits](operations.md#limits)",
    "max_connections": "; keep it under `ulimit -n` (see [Limits](operations.md#limits))",
    "hooks_url": " (see [Hooks](hooks.md))",
    "behind_proxy": " (see [Other proxies](deployment.md#other-proxies-what-aiotusd-reads))",
    "cors_origins": " (see [Browsers and CORS](deployment.md#browsers-and-cors))",
    "demo": " (see [Demo page](deployment.md#demo-page))",
    "tls_cert": " (with `tls_key`; see [TLS](deployment.md#tls))",
    "workers": " (see [Workers](scale-out.md#workers-several-processes-on-one-port))",
}
_UNITS = ("KiB", "MiB", "GiB", "TiB")
_MARKDOWN = str.maketrans({"|": "\\|", "*": "\\*"})


def _number(value: float, setting: Setting) -> str:
    """A bound or default as the page writes it: sizes in binary units where they are whole."""
    if value == 2**63 - 1:
        return "2^63 - 1"
    if setting.parse is parse_size and value >= 1024:
        for power in range(len(_UNITS), 0, -1):
            if value % 1024**power == 0:
                return f"{int(value) // 1024**power} {_UNITS[power - 1]}"
    if setting.parse in (parse_duration, parse_whole_seconds):
        return format_duration(value)
    return str(value)


def _default(setting: Setting) -> str:
    """The default in TOML form, as ``config.example.toml`` writes it."""
    value = setting.default
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    readable = _number(value, setting)
    return f"`{value}`" if readable == str(value) else f"`{value}` ({readable})"


def _values(setting: Setting) -> str:
    """The values a setting takes: its choices, or its bounds."""
    if isinstance(setting.default, bool):
        return "`true` or `false`"
    if isinstance(setting.default, tuple):
        return "a list, or text separated by commas"
    if setting.choices:
        names = [f"`{choice}`" for choice in setting.choices]
        return ", ".join(names[:-1]) + " or " + names[-1]
    low, high = setting.minimum, setting.maximum
    if low is not None and high is not None:
        return f"{_number(low, setting)} to {_number(high, setting)}"
    if low is not None:
        return f"at least {_number(low, setting)}"
    return "" if high is None else f"at most {_number(high, setting)}"


def _meaning(setting: Setting) -> str:
    """The help text, capitalised unless it starts with a value (``always: ...``)."""
    text = setting.help.translate(_MARKDOWN)
    if not text.startswith(setting.choices):
        text = text[0].upper() + text[1:]
    return text + NOTES.get(setting.name, "")


def render_table() -> str:
    """Every setting as one row of a markdown table, a table for each section."""
    lines: list[str] = []
    for section in dataclasses.fields(Settings):
        lines += _section_table(section.name, section.default_factory.__doc__ or "")
    return "\n".join(lines[1:]) + "\n"


def _section_table(section: str, doc: str) -> list[str]:
    """The heading and the table of one section's settings."""
    lines = [
        "",
        f"### `[{section}]`",
        "",
        doc.strip().split("\n")[0],
        "",
        "| Setting | Flag | Environment variable | Default | Values | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for setting in (setting for setting in SETTINGS if setting.section == section):
        flag = "--" + setting.name.replace("_", "-")
        env = ENV_PREFIX + setting.name.upper()
        lines.append(
            f"| `{setting.name}` | `{flag}` | `{env}` | {_default(setting)} | "
            f"{_values(setting)} | {_meaning(setting)} |"
        )
    return lines


def with_current_table(page: str) -> str:
    """``page`` with the text between the markers replaced by the current table."""
    before, begin, rest = page.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    return before + BEGIN + "\n" + render_table() + END + after


def main(argv: Sequence[str]) -> int:
    """Rewrite the table of the page given (by default ``docs/configuration.md``)."""
    path = Path(argv[0]) if argv else PAGE
    try:
        path.write_text(with_current_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"{COMMAND}: {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
