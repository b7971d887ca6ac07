"""The ``aiotusd`` command line as operators type it: booleans bare, negated or with a value,
global options on either side of a subcommand, and tusd's flags. Real processes."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path

import aiohttp
import pytest
from support.hooks import Receiver, verify
from support.processes import Served, free_port, run_cli
from support.s3 import AWS_ENV, S3Endpoint, s3_args

from server.cli import main
from server.cli_args import plain
from server.config import SETTINGS, Settings
from server.database import open_store
from server.tusd_flags import TUSD_FLAGS

pytestmark = pytest.mark.e2e
BY_NAME = {setting.name: setting for setting in SETTINGS}


def _get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
         ) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


# --- booleans ----------------------------------------------------------------------------


@pytest.mark.parametrize("demo", [["--demo"], ["--demo", "true"], ["--demo=yes"], ["-demo"]])
def test_a_boolean_flag_is_true_bare_or_with_a_value_before_another_flag(tmp_path, demo):
    port = free_port()
    args = ["--metrics", *demo, "--port", str(port), "--data-dir", str(tmp_path / "d")]
    with Served(tmp_path, port, *args):
        assert _get(port, "/metrics").status == 200
        assert _get(port, "/").status == 200  # the demo page


def test_no_turns_a_boolean_off_whatever_came_before(tmp_path):
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "d"), "--no-metrics", "--no-demo"]
    with Served(tmp_path, port, *args, AIOTUSD_METRICS="true", AIOTUSD_DEMO="1"):
        assert _get(port, "/metrics").status == 404
        assert _get(port, "/").status == 404


@pytest.mark.parametrize(("args", "needle"), [
    (["--demo=maybe"], "bad value 'maybe' for 'demo' in flag --demo"),
    (["--no-demo=true"], "flag --no-demo takes no value"),
    (["--demo", "maybe"], "unrecognized arguments: maybe"),
])
def test_a_bad_boolean_is_one_line_and_status_2(tmp_path, args, needle):
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("aiotusd: error: ") and needle in result.stderr


# --- subcommands: global options before or after ------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """An SQLite database of aiotusd's, made by the state store itself."""
    settings = Settings().with_values(data_dir=str(tmp_path / "store"))

    async def create() -> None:
        await (await open_store(settings)).close()

    asyncio.run(create())
    return settings.storage.database_path


@pytest.mark.parametrize("order", [
    ["{opt}", "hooks", "list"], ["hooks", "{opt}", "list"], ["hooks", "list", "{opt}"],
    ["--metrics", "{opt}", "hooks", "list"],  # a bare boolean before the subcommand
])
@pytest.mark.parametrize("option", ["--config", "--data-dir", "--database"])
def test_a_subcommand_takes_global_options_before_or_after_it(tmp_path, database, order, option):
    value = {"--config": str(tmp_path / "c.toml"), "--data-dir": str(database.parent),
             "--database": str(database)}[option]
    (tmp_path / "c.toml").write_text(f'data_dir = "{database.parent.as_posix()}"\n')
    args = [part for item in order for part in ([option, value] if item == "{opt}" else [item])]
    result = run_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no hook events waiting\n"


def test_a_subcommand_without_the_database_says_where_it_looked(tmp_path):
    result = run_cli(tmp_path, "hooks", "retry", "--all-dead", "--data-dir", str(tmp_path / "x"))
    assert result.returncode == 1
    assert result.stderr == f"aiotusd: error: no database at {tmp_path / 'x' / 'aiotusd.sqlite3'}\n"


# --- tusd's flags ----------------------------------------------------------------------------


@pytest.mark.parametrize("dashes", ["-", "--"])
def test_tusds_flags_serve_as_tusd_would(tmp_path, dashes):
    port = free_port()
    tusd = [("port", str(port)), ("host", "127.0.0.1"), ("upload-dir", str(tmp_path / "up")),
            ("base-path", "/uploads/"), ("max-size", "10"), ("behind-proxy", None),
            ("expose-metrics", None), ("network-timeout", "1m"), ("shutdown-timeout", "2s"),
            ("hooks-enabled-events", "post-finish"), ("acquire-lock-timeout", "500ms"),
            ("disable-download", None), ("disable-termination", None)]
    args = [part for name, value in tusd for part in (dashes + name, value) if part]
    with Served(tmp_path, port, *args):
        options = _get(port, "/uploads/", "OPTIONS")
        assert options.status == 204 and options.headers["Tus-Max-Size"] == "10"
        created = _get(port, "/uploads/", "POST", {
            "Tus-Resumable": "1.0.0", "Upload-Length": "5",
            "X-Forwarded-Host": "tus.example.com", "X-Forwarded-Proto": "https"})
        assert created.status == 201
        location = created.headers["Location"]
        assert location.startswith("https://tus.example.com/uploads/")  # -behind-proxy
        assert (tmp_path / "up" / location.rsplit("/", 1)[1]).is_file()  # -upload-dir
        assert _get(port, "/metrics").status == 200  # -expose-metrics
        assert _get(port, "/files/", "OPTIONS").status == 404
        upload = "/uploads/" + location.rsplit("/", 1)[1]
        assert _get(port, upload, "GET", {"Tus-Resumable": "1.0.0"}).status == 405
        assert _get(port, upload, "DELETE", {"Tus-Resumable": "1.0.0"}).status == 405


def test_tusds_s3_bucket_selects_s3_and_its_value_flags_take_an_equals_sign():
    assert plain(["-s3-bucket=b", "-s3-object-prefix", "p/", "-expose-metrics=false",
                  "-disable-cors", "-upload-dir", "-x"]) == [
        "--s3-bucket=b", "--storage=s3", "--s3-prefix=p/", "--no-metrics", "--cors-origins=",
        "--data-dir=-x"]


def test_tusds_hook_flags_bring_tusds_hook_format_and_the_switches_their_settings():
    assert plain(["-hooks-http", "http://127.0.0.1:9/h", "-hooks-dir=hooks", "-unix-sock",
                  "/run/tus.sock", "-cors-expose-headers", "X-A", "-cors-allow-headers=X-B"]) == [
        "--hooks-url=http://127.0.0.1:9/h", "--hooks-format=tusd", "--hooks-dir=hooks",
        "--hooks-format=tusd", "--unix-socket=/run/tus.sock", "--cors-expose-headers=X-A",
        "--cors-allow-headers=X-B"]


UNMAPPED = sorted(name for name, spec in TUSD_FLAGS.items() if not spec.requires())


@pytest.mark.parametrize("name", UNMAPPED)
def test_a_tusd_flag_without_an_equivalent_stops_in_one_line_with_a_hint(capsys, name):
    spec = TUSD_FLAGS[name]
    assert main([f"-{name}", *([] if spec.switch else ["x"]), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"aiotusd: error: tusd's flag -{name} has no aiotusd equivalent: "
                            f"{spec.hint} (see docs/coming-from-tusd.md)\n")


@pytest.mark.parametrize(("args", "line"), [
    (["-cors-allow-origin", "https://.*"],
     ("tusd's flag -cors-allow-origin has no aiotusd equivalent: it takes a regular "
      "expression; aiotusd's --cors-origins takes a list of origins such as "
      "https://app.example.com, or *")),
    (["--hooks-http-retry", "5"], "tusd's flag --hooks-http-retry has no aiotusd equivalent"),
    (["-timeout", "6000"], "aiotusd's --idle-timeout takes a duration"),
    (["-upload-dir"], "tusd's flag -upload-dir needs a value"),
    (["-behind-proxy=maybe"], "bad value 'maybe' for 'behind-proxy' in flag -behind-proxy"),
])
def test_tusd_flags_that_cannot_be_taken_stop_the_real_command_in_one_line(tmp_path, args, line):
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("aiotusd: error: " + line) or line in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_every_tusd_alias_names_settings_that_exist() -> None:
    for name, spec in TUSD_FLAGS.items():
        missing = [setting for setting in spec.requires() if setting not in BY_NAME]
        assert not missing, (name, missing)


def test_the_coming_from_tusd_page_lists_every_tusd_flag():
    page = (Path(__file__).resolve().parent.parent / "docs" / "coming-from-tusd.md").read_text()
    for name in TUSD_FLAGS:
        parts = name.split("-")
        groups = [f"`-{'-'.join(parts[:n])}-*`" for n in range(1, len(parts))]
        assert f"`-{name}`" in page or any(group in page for group in groups), name
    assert "\n## Hooks\n" in page


# --- secrets in files ------------------------------------------------------------------------


async def test_the_hooks_secret_comes_from_the_file_aiotusd_hooks_secret_file_names(
    tmp_path, receiver: Receiver
):
    (tmp_path / "secret").write_text("from-a-file\n")
    port = free_port()
    with Served(tmp_path, port, "--port", str(port), "--data-dir", str(tmp_path / "d"),
                "--hooks-url", receiver.url, "--hooks-events", "post-create",
                AIOTUSD_HOOKS_SECRET_FILE=str(tmp_path / "secret")):
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/files/", headers={"Tus-Resumable": "1.0.0",
                                                       "Upload-Length": "1"}) as created:
            assert created.status == 201
        (event,) = await receiver.wait_for_names("post-create")
    assert verify("from-a-file", event)


@pytest.mark.s3
def test_s3_credentials_come_from_the_files_aws_file_variables_name(
    tmp_path, s3_endpoint: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "id").write_text("testing\n")
    (tmp_path / "key").write_text("testing\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # the session's, which the server would inherit
    env = {k: v for k, v in AWS_ENV.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "d"),
            *s3_args(s3_endpoint, bucket)]
    without = run_cli(tmp_path, *args, **env)  # botocore finds no credentials
    assert without.returncode == 1 and "Traceback" not in without.stderr
    with Served(tmp_path, port, *args, **env, AWS_ACCESS_KEY_ID_FILE=str(tmp_path / "id"),
                AWS_SECRET_ACCESS_KEY_FILE=str(tmp_path / "key")):
        created = _get(port, "/files/", "POST", {"Tus-Resumable": "1.0.0", "Upload-Length": "1"})
        assert created.status == 201


def test_an_unreadable_secret_file_stops_the_command_in_one_line(tmp_path):
    result = run_cli(tmp_path, AIOTUSD_HOOKS_SECRET_FILE=str(tmp_path / "absent"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"aiotusd: error: cannot read {tmp_path / 'absent'} named by "
                             "AIOTUSD_HOOKS_SECRET_FILE: No such file or directory\n")
