"""The ``aiotusd`` command as a real process: usage errors, --help, and settings from every source."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys

import pytest
from support.http import upload_id
from support.processes import Served, clean_env, free_port, run_cli, wait_listening

from server import __version__
from server.config import SETTINGS

pytestmark = pytest.mark.e2e


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiotusd: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--port", "abc"], "'port'"),
        (["--max-size", "-1"], "'max_size'"),
        (["--log-format", "xml"], "'log_format'"),
        (["--log-level", "loud"], "'log_level'"),
        (["--storage", "ftp"], "'storage'"),
        (["--s3-part-size", "1MiB"], "'s3_part_size'"),
        (["--base-path", "/a{b}/"], "'base_path'"),
        (["--port", "70000"], "'port'"),
        (["--s3-endpoint", "minio:9000"], "'s3_endpoint'"),
        (["--hooks-url", "http://hooks:99999/"], "'hooks_url'"),
        (["--host", ""], "'host'"),
        (["--data-dir", ""], "'data_dir'"),
        (["--expiration", "99999999999999999999"], "'expiration'"),
        (["--lock-timeout", "1e300"], "'lock_timeout'"),
        (["--create-rate", "1e-320"], "'create_rate'"),
    ],
)
def test_bad_flag_value_exits_2_with_one_line_naming_the_key(tmp_path, args, key):
    result = run_cli(tmp_path, *args)
    assert_one_line_error(result, key, args[0])
    assert not (tmp_path / "data").exists()


def test_bad_environment_value_exits_2_naming_the_variable(tmp_path):
    result = run_cli(tmp_path, AIOTUSD_MAX_SIZE="-1")
    assert_one_line_error(result, "'max_size'", "AIOTUSD_MAX_SIZE")


def test_endpoint_without_a_scheme_in_the_environment_exits_2_naming_it(tmp_path):
    result = run_cli(tmp_path, AIOTUSD_STORAGE="s3", AIOTUSD_S3_ENDPOINT="minio:9000")
    assert_one_line_error(result, "'s3_endpoint'", "AIOTUSD_S3_ENDPOINT", "minio:9000")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('s3_endpoint = "minio:9000"\n', "'s3_endpoint'"),
        ('data_dir = "data\\u0000dir"\n', "'data_dir'"),
        ("lock_timeout = 1" + "0" * 400 + "\n", "'lock_timeout'"),
    ],
)
def test_bad_file_values_that_failed_later_exit_2_at_once(tmp_path, text, key):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_cli(tmp_path, "--config", str(config))
    assert_one_line_error(result, key, str(config))
    assert not (tmp_path / "data").exists()


def test_config_file_that_is_not_utf8_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_bytes(b'host = "\xff"\n')
    result = run_cli(tmp_path, "--config", str(config))
    assert_one_line_error(result, str(config), "UTF-8")


KUBERNETES = {  # what a pod gets for a Service named aiotusd
    "AIOTUSD_SERVICE_HOST": "10.96.0.5", "AIOTUSD_SERVICE_PORT": "1080",
    "AIOTUSD_SERVICE_PORT_HTTP": "1080", "AIOTUSD_PORT": "tcp://10.96.0.5:1080",
    "AIOTUSD_PORT_1080_TCP": "tcp://10.96.0.5:1080", "AIOTUSD_PORT_1080_TCP_PROTO": "tcp",
    "AIOTUSD_PORT_1080_TCP_PORT": "1080", "AIOTUSD_PORT_1080_TCP_ADDR": "10.96.0.5",
}


def _served_log(tmp_path, *args: str, **env: str) -> str:
    """Start a real server with ``args`` and ``env``, check that it answers OPTIONS, stop
    it; its log."""
    port = free_port()
    with Served(tmp_path, port, "--port", str(port), *args, **env) as served:
        assert _request(port, "OPTIONS", "/files/", {}).status == 204
    return served.log.read_text()


def test_kubernetes_variables_are_ignored_and_an_unknown_one_is_warned_about(tmp_path):
    text = _served_log(tmp_path, **KUBERNETES, AIOTUSD_MAX_SIZ="10", AIOTUSD_TYPO="1")
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert [line.split(" WARNING aiotusd: ")[1] for line in warnings] == [
        ("ignoring environment variable AIOTUSD_MAX_SIZ: no such setting; "
         "did you mean AIOTUSD_MAX_SIZE?"),
        "ignoring environment variable AIOTUSD_TYPO: no such setting",
    ]
    assert "SERVICE" not in text and "tcp://" not in text and "Traceback" not in text


def test_bad_file_value_exits_2_naming_key_and_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('log_format = "xml"\n')
    result = run_cli(tmp_path, "--config", str(config))
    assert_one_line_error(result, "'log_format'", str(config))


def test_unknown_key_in_file_from_aiotusd_config_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("prot = 8080\n")
    result = run_cli(tmp_path, AIOTUSD_CONFIG=str(config))
    assert_one_line_error(result, "'prot'", str(config))


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli(tmp_path, "--config", str(tmp_path / "absent.toml"))
    assert_one_line_error(result, "absent.toml")


def test_missing_config_file_with_a_line_break_in_its_name_exits_2_with_one_line(tmp_path):
    result = run_cli(tmp_path, "--config", str(tmp_path / "two\nlines.toml"))
    assert_one_line_error(result, "lines.toml")


def test_unknown_flag_exits_2_with_one_line(tmp_path):
    result = run_cli(tmp_path, "--prot", "8080")
    assert_one_line_error(result, "--prot")


def test_flag_without_its_value_exits_2_with_one_line(tmp_path):
    result = run_cli(tmp_path, "--port")
    assert_one_line_error(result, "--port")


def test_help_lists_every_flag(tmp_path):
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    for setting in SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        assert flag + " " in result.stdout or flag + ", --no-" in result.stdout, setting.name
    for flag in ("--config", "--version", "--help"):
        assert flag in result.stdout
    assert "AIOTUSD_" in result.stdout
    assert "{text,json}" in result.stdout


def _help_of(stdout: str, flag: str) -> str:
    """The help text of ``flag`` in ``--help``'s output, its lines joined."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    text = [lines[start].strip()[len(flag):]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 10):
            break
        text.append(line.strip())
    return " ".join(" ".join(text).split())


def test_help_shows_defaults_once_in_the_form_a_flag_takes(tmp_path):
    stdout = run_cli(tmp_path, "--help", COLUMNS="100").stdout
    assert _help_of(stdout, "--commit-bytes").endswith("(default: 8MiB)")
    assert _help_of(stdout, "--expiration").endswith("(default: 7d)")
    assert _help_of(stdout, "--shutdown-timeout").endswith("(default: 10s)")
    assert _help_of(stdout, "--host").endswith("(default: 127.0.0.1)")
    assert "8388608" not in stdout and "604800" not in stdout
    database = _help_of(stdout, "--database")
    assert database.count("default") == 1 and "''" not in database
    assert "--demo, --no-demo" in stdout and "--metrics, --no-metrics" in stdout


def test_version(tmp_path):
    result = run_cli(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"aiotusd {__version__}"


def _request(port: int, method: str, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_real_process_takes_settings_from_file_environment_and_flag(tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "store"
    config = tmp_path / "aiotusd.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {file_port}\nbase_path = "uploads/v1"\n'
        f'data_dir = "{data_dir.as_posix()}"\nmax_size = "1KiB"\n'
    )
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(config), "--port", str(flag_port)],
            cwd=tmp_path,
            env=clean_env(
                AIOTUSD_PORT=str(env_port),
                AIOTUSD_MAX_SIZE="2KiB",
                # --config wins over AIOTUSD_CONFIG: this file does not exist.
                AIOTUSD_CONFIG=str(tmp_path / "not-this.toml"),
            ),
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(process, flag_port, "aiotusd", log.read_text)
        assert _refuses(file_port) and _refuses(env_port)

        options = _request(flag_port, "OPTIONS", "/uploads/v1/", {})
        assert options.status == 204
        assert options.headers["Tus-Version"] == "1.0.0"
        assert options.headers["Tus-Max-Size"] == "2048"  # environment over file

        created = _request(
            flag_port, "POST", "/uploads/v1/",
            {"Tus-Resumable": "1.0.0", "Upload-Length": "5"},
        )
        assert created.status == 201
        location = created.headers["Location"]
        assert location.startswith(f"http://127.0.0.1:{flag_port}/uploads/v1/")
        assert (data_dir / upload_id(location)).is_file()
        assert (data_dir / "aiotusd.sqlite3").is_file()

        assert _request(flag_port, "OPTIONS", "/files/", {}).status == 404
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
            raise
    assert code == 0, log.read_text()
    assert not (tmp_path / "data").exists()  # the default data_dir was not used
