"""The command line as people type it, made plain for argparse.

argparse alone cannot take what operators are used to: a boolean flag bare
(``--behind-proxy``), negated (``--no-demo``) or with a value (``--demo true``), flags with
one dash as Go programs take them (``-data-dir /srv``), tusd's flags (``-upload-dir /srv``,
see :mod:`server.tusd_flags`), and global options on either side of a subcommand
(``aiotusd hooks list --config x.toml``). :func:`plain` rewrites the arguments so that each
boolean is ``--x`` or ``--no-x``, each tusd flag is the aiotusd flags it stands for, and
each flag has two dashes; :func:`split_command` finds the subcommand wherever the options
put it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import SETTINGS, ConfigError
from .tusd_flags import DOC, TUSD_FLAGS, TusdFlag

SWITCHES: frozenset[str] = frozenset(
    setting.name for setting in SETTINGS if isinstance(setting.default, bool)
)
_OURS: frozenset[str] = frozenset(setting.name for setting in SETTINGS) | {"config", "version"}
_NO_VALUE = frozenset({"-h", "--help", "--version", "--dead", "--all-dead"})
COMMANDS = ("hooks", "healthcheck")


def _name(flag: str) -> str:
    """``--data-dir`` as the setting's name, ``data_dir``."""
    return flag.lstrip("-").replace("-", "_")


def _flag(name: str, on: bool = True) -> str:
    """The flag of setting ``name``, or with ``on`` false its negation (``--no-demo``)."""
    return ("--" if on else "--no-") + name.replace("_", "-")


_BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True,
                  "0": False, "false": False, "no": False, "off": False}


def _truth(flag: str, label: str, value: str | None, rest: list[str]) -> bool:
    """The value of the boolean ``flag``: given after ``=``, as the next argument when that
    is a boolean word (``--demo true``), else true (bare)."""
    if value is None:
        if not rest or rest[0].lower() not in _BOOLEAN_WORDS:
            return True
        value = rest.pop(0)
    if value.lower() not in _BOOLEAN_WORDS:
        raise ConfigError(f"bad value {value!r} for {label!r} in flag {flag}: "
                          "expected true or false")
    return _BOOLEAN_WORDS[value.lower()]


def _tusd(flag: str, spec: TusdFlag, value: str | None, rest: list[str]) -> list[str]:
    """The aiotusd flags that tusd's ``flag`` stands for."""
    if not spec.requires():
        raise ConfigError(f"tusd's flag {flag} has no aiotusd equivalent: {spec.hint} (see {DOC})")
    also = [f"{_flag(name)}={fixed}" for name, fixed in spec.also.items()]
    if spec.switch:
        on = _truth(flag, flag.lstrip("-"), value, rest)
        return [_flag(name, on) for name in spec.settings] + (also if on else [])
    if value is None:
        if not rest:
            raise ConfigError(f"tusd's flag {flag} needs a value (see {DOC})")
        value = rest.pop(0)
    return [f"{_flag(name)}={value}" for name in spec.settings] + also


def _tusd_spec(flag: str) -> TusdFlag | None:
    """tusd's meaning of ``flag``: always with one dash (as Go's flags are written), with
    two only where aiotusd has no flag of that name."""
    name = flag.lstrip("-")
    if (not flag.startswith("--") and len(name) > 1) or _name(flag) not in _OURS:
        return TUSD_FLAGS.get(name)
    return None


def _switch(flag: str, value: str | None, rest: list[str]) -> str | None:
    """A boolean flag of ours as ``--x`` or ``--no-x``; None if ``flag`` is none."""
    name = _name(flag)
    if name in SWITCHES:
        return _flag(name, _truth(flag, name, value, rest))
    if name.startswith("no_") and name[3:] in SWITCHES:
        if value is not None:
            raise ConfigError(f"flag {flag} takes no value (see aiotusd --help)")
        return _flag(name[3:], False)
    return None


def plain(argv: Sequence[str]) -> list[str]:
    """``argv`` with booleans as ``--x``/``--no-x``, tusd's flags as aiotusd's, every flag
    with two dashes; raises :class:`ConfigError` for a bad boolean, or a tusd flag that
    has no equivalent here."""
    rest, out = list(argv), list[str]()
    while rest:
        token = rest.pop(0)
        if token == "--":
            return [*out, token, *rest]
        if not token.startswith("-"):
            out.append(token)
            continue
        flag, has_value, text = token.partition("=")
        value = text if has_value else None
        spec = _tusd_spec(flag)
        if spec is not None:
            out += _tusd(flag, spec, value, rest)
            continue
        if not flag.startswith("--") and len(flag) > 2 and _name(flag) in _OURS:
            flag = "-" + flag  # -data-dir: one dash, as Go programs write flags
        switch = _switch(flag, value, rest)
        if switch is not None:
            out.append(switch)
            continue
        out.append(flag if value is None else f"{flag}={value}")
        if value is None and flag not in _NO_VALUE and rest:
            out.append(rest.pop(0))  # its value, whatever it looks like (--max-size -1)
    return out


def split_command(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """The subcommand among the :func:`plain` arguments, and the arguments without it: the
    first argument that is no option nor an option's value."""
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "--":
        token = argv[index]
        name = _name(token).removeprefix("no_")
        takes_value = not ("=" in token or token in _NO_VALUE or name in SWITCHES)
        index += 2 if takes_value else 1
    if index < len(argv) and argv[index] in COMMANDS:
        return argv[index], [*argv[:index], *argv[index + 1 :]]
    return None, list(argv)
