"""deploy/aiotusd.service, checked without running it under systemd.

A unit with a misspelt key or a value systemd cannot read still loads: systemd ignores
the line with a warning, and the hardening or the limit it meant is silently gone. So
``systemd-analyze verify`` must print nothing. A flag in ``ExecStart`` or a variable in
``Environment`` that aiotusd does not know stops every start with status 2; a stop
timeout shorter than aiotusd's clean stop kills uploads that would have finished. Those
are checked against the server's own parser, settings and limits, and the command line
is run as a real process with the unit's environment and open file limit.
"""

from __future__ import annotations

import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support.processes import clean_env, free_port, wait_listening

from server.cli import build_parser
from server.config import ENV_PREFIX, Settings, load_settings
from server.supervisor import STOP_MARGIN

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "aiotusd.service"
COMMAND = "/usr/local/bin/aiotusd"
"""Where the unit expects the ``aiotusd`` command (docs/deployment.md links it there)."""
CONFIG = "/etc/aiotusd/config.toml"
SYSTEMD_ANALYZE = "systemd-analyze"
LIMITED = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.executable, [sys.executable, '-m', 'server', *sys.argv[3:]])"
)
"""``python -c LIMITED SOFT HARD ARGS...``: aiotusd with its open file limit set, as
systemd's LimitNOFILE sets it."""
SHORTFALL = "the open file limit (ulimit -n)"
"""How aiotusd's warning about too few file descriptors begins (server/limits.py)."""

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Each section's keys with their values in order (a key may come more than once)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        assert not stripped.endswith("\\"), f"continued lines are not read here: {line!r}"
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        key, separator, value = stripped.partition("=")
        assert current is not None and separator, f"not a unit line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, str]:
    """The [Service] section, each key with its last value (which is what counts)."""
    return {key: values[-1] for key, values in parse_unit(UNIT.read_text())["Service"].items()}


def unit_environment(service: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(service["Environment"]))


def unit_settings(service: dict[str, str]) -> Settings:
    """The settings the unit's command line and environment give, as aiotusd loads them."""
    flags = vars(build_parser().parse_args(shlex.split(service["ExecStart"])[1:]))
    flags.pop("config")
    return load_settings(flags, unit_environment(service))


def seconds(value: str) -> float:
    """A systemd time span of the forms this unit uses: ``30``, ``30s``, ``1min``."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_systemd_analyze_verify_finds_nothing(tmp_path):
    """Run on a copy whose ExecStart names an aiotusd command that exists here, since
    verify checks that the program is there."""
    analyze = shutil.which(SYSTEMD_ANALYZE)
    assert analyze, "systemd-analyze is not installed: .ci/run installs Debian's systemd"
    installed = Path(sys.executable).parent / "aiotusd"
    assert installed.is_file(), "the aiotusd command of `pip install -e .` is missing"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={COMMAND} ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={COMMAND} ", f"ExecStart={installed} "))
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_would_report_a_misspelt_key(tmp_path):
    """What the test above relies on: systemd-analyze complains about an unknown key."""
    analyze = shutil.which(SYSTEMD_ANALYZE)
    assert analyze, "systemd-analyze is not installed: .ci/run installs Debian's systemd"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(COMMAND, "/bin/true")
                    .replace("ProtectSystem=", "ProtectSytem="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", "--generators=no", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert "Unknown key 'ProtectSytem'" in result.stderr


def test_execstart_runs_the_installed_command_with_real_flags(service):
    argv = shlex.split(service["ExecStart"])
    assert argv == [COMMAND, "--config", CONFIG]
    assert "aiotusd = server.__main__:run" in (ROOT / "setup.cfg").read_text()
    assert build_parser().parse_args(argv[1:]).config == CONFIG
    assert service["Type"] == "exec", "aiotusd does not speak sd_notify"


def test_every_environment_variable_is_a_setting_and_data_dir_is_the_state_directory(service):
    env = unit_environment(service)
    assert env and all(name.startswith(ENV_PREFIX) for name in env)
    settings = unit_settings(service)
    assert service["DynamicUser"] == "yes"
    assert settings.storage.data_dir == "/var/lib/" + service["StateDirectory"]
    assert service["WorkingDirectory"] == settings.storage.data_dir
    # Optional (the leading -): the unit starts without it.
    assert service["EnvironmentFile"] == "-/etc/aiotusd/aiotusd.env"


def test_systemd_waits_longer_than_a_clean_stop(service):
    """Requests get shutdown_timeout, then hook deliveries hooks_timeout, and a supervisor
    gives its workers STOP_MARGIN more, before it kills them itself."""
    settings = unit_settings(service)
    clean_stop = settings.server.shutdown_timeout + settings.hooks.timeout + STOP_MARGIN
    assert seconds(service["TimeoutStopSec"]) > clean_stop
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed", "the supervisor, not systemd, stops the workers"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2", "a bad setting does not mend itself"


def test_the_service_is_confined(service):
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in expected} == expected
    families = set(service["RestrictAddressFamilies"].split())
    assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "ReadWritePaths" not in service, "the state directory is the only writable place"


@pytest.mark.e2e
@pytest.mark.slow
def test_the_unit_starts_aiotusd_with_its_environment_and_file_limit(service, tmp_path):
    """config.example.toml installed as the unit's config.toml, the unit's environment
    (its data_dir moved here) and its LimitNOFILE: aiotusd serves and does not warn that
    descriptors may run short. The same with max_connections past the limit warns,
    which shows the warning would be seen."""
    limit = int(service["LimitNOFILE"])
    assert not warns_of_shortfall(service, tmp_path / "default", limit)
    assert warns_of_shortfall(service, tmp_path / "too-many", limit, "--max-connections",
                              str(limit))


def warns_of_shortfall(service: dict[str, str], directory: Path, limit: int,
                       *flags: str) -> bool:
    """Start the unit's command line in ``directory`` with at most ``limit`` descriptors
    (fewer if the hard limit here is lower: a server fine with fewer is fine with more),
    upload to it, stop it; whether it warned that descriptors may run short."""
    directory.mkdir()
    data_dir = unit_environment(service)["AIOTUSD_DATA_DIR"]
    config = directory / "config.toml"
    shutil.copy(ROOT / "config.example.toml", config)
    env = {name: value.replace(data_dir, str(directory / "state"))
           for name, value in unit_environment(service).items()}
    port = free_port()
    argv = shlex.split(service["ExecStart"])[1:]
    argv[argv.index(CONFIG)] = str(config)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    log_path = directory / "aiotusd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LIMITED, str(soft), str(hard), *argv, *flags],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT,
            env=clean_env(**env, AIOTUSD_PORT=str(port)),
        )
    try:
        wait_listening(process, port, "aiotusd", log_path.read_text)
        created = requests.post(
            f"http://127.0.0.1:{port}/files/",
            headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3",
                     "Content-Type": "application/offset+octet-stream"},
            data=b"abc", timeout=10,
        )
        assert created.status_code == 201, created.text
        assert created.headers["Upload-Offset"] == "3"
        assert (directory / "state" / "aiotusd.sqlite3").is_file()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return SHORTFALL in log_path.read_text()
