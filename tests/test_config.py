"""Settings: precedence, validation, sizes, base paths and the example config file."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import math
import tomllib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.config import (
    SETTINGS,
    ConfigError,
    Setting,
    Settings,
    aws_secrets_from_files,
    load_settings,
    unknown_variables,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
NAMES = [setting.name for setting in SETTINGS]
BY_NAME = {setting.name: setting for setting in SETTINGS}


def write_toml(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_no_sources_give_the_defaults():
    assert load_settings() == Settings()
    assert load_settings({}, {}, None) == Settings()


def test_every_field_of_every_section_is_a_setting_with_a_name_of_its_own():
    fields = [
        (section.name, field.name)
        for section in dataclasses.fields(Settings)
        for field in dataclasses.fields(getattr(Settings(), section.name))
    ]
    assert [(setting.section, setting.key) for setting in SETTINGS] == fields
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_default_survives_its_own_parser(name):
    setting = BY_NAME[name]
    default = setting.default
    if isinstance(default, bool):
        text = str(default).lower()
    elif isinstance(default, tuple):
        text = ",".join(str(item) for item in default)
    else:
        text = str(default)
    settings = load_settings(environ={"AIOTUSD_" + name.upper(): text})
    assert setting.get(settings) == default


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = write_toml(tmp_path / "c.toml", 'port = 1111\nhost = "10.0.0.1"\nmax_size = 100\n')
    environ = {"AIOTUSD_PORT": "2222", "AIOTUSD_HOST": "10.0.0.2"}
    flags = {"port": "3333"}

    settings = load_settings(flags, environ, config)
    assert settings.server.port == 3333  # flag over environment and file
    assert settings.server.host == "10.0.0.2"  # environment over file
    assert settings.uploads.max_size == 100  # file over default
    assert settings.storage.data_dir == Settings().storage.data_dir  # default

    assert load_settings({}, environ, config).server.port == 2222
    assert load_settings({}, {}, config).server.port == 1111
    assert load_settings({}, {}, None).server.port == 1080


def test_a_flag_left_unset_does_not_hide_lower_sources(tmp_path):
    config = write_toml(tmp_path / "c.toml", "port = 1111\n")
    flags = {name: None for name in NAMES}
    assert load_settings(flags, {"AIOTUSD_HOST": "::1"}, config).server.port == 1111
    assert load_settings(flags, {"AIOTUSD_HOST": "::1"}, config).server.host == "::1"


def test_environment_variables_without_the_prefix_are_ignored():
    environ = {"PORT": "1", "HOST": "x", "PATH": "/bin", "AIOTUSD_CONFIG": "ignored.toml"}
    assert load_settings(environ=environ) == Settings()


def test_unknown_key_in_file_names_the_key_and_the_file(tmp_path):
    config = write_toml(tmp_path / "c.toml", "port = 1111\nmax_upload = 5\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file=config)
    assert "max_upload" in str(raised.value)
    assert config in str(raised.value)


def test_a_section_table_holds_its_settings_without_the_prefix(tmp_path):
    config = write_toml(
        tmp_path / "c.toml",
        '[s3]\nbucket = "b"\n[hooks]\nevents = ["post-finish"]\n'
        '[storage]\nbackend = "s3"\n[metrics]\nenabled = true\n',
    )
    settings = load_settings(config_file=config)
    assert settings.s3.bucket == "b"
    assert settings.hooks.events == ("post-finish",)
    assert settings.storage.backend == "s3"
    assert settings.metrics.enabled is True


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[s4]\nbucket = "b"\n', "[s4]"),
        ('[s3]\nbukket = "b"\n', "'s3.bukket'"),
        ('[s3]\ns3_bucket = "b"\n', "'s3.s3_bucket'"),
        ('[hooks]\nurl = "ftp://x"\n', "'hooks.url'"),
        ('hooks_url = "http://a"\n[hooks]\nurl = "http://b"\n', "'hooks.url' both set"),
    ],
)
def test_a_bad_section_or_key_in_a_table_is_named(tmp_path, text, named):
    config = write_toml(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file=config)
    assert named in str(raised.value) and config in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "events"),
    [
        ("post-finish, pre-create", ("pre-create", "post-finish")),
        (["post-finish", "pre-create", "pre-create"], ("pre-create", "post-finish")),
        ("", ()),
        ([], ()),
    ],
)
def test_lists_come_as_arrays_or_as_comma_separated_text(tmp_path, raw, events):
    config = write_toml(tmp_path / "c.toml", f"[hooks]\nevents = {json.dumps(raw)}\n")
    assert load_settings(config_file=config).hooks.events == events
    if isinstance(raw, str):
        assert load_settings(environ={"AIOTUSD_HOOKS_EVENTS": raw}).hooks.events == events


def test_lists_are_typed():
    settings = load_settings(environ={
        "AIOTUSD_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16",
        "AIOTUSD_CORS_ORIGINS": "https://A.example.com/",
        "AIOTUSD_HOOKS_FORWARD_HEADERS": "Authorization,X-Tenant",
    })
    assert settings.proxy.trusted_proxies == (
        ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("192.168.0.0/16")
    )
    assert settings.cors.origins == ("https://a.example.com",)
    assert settings.hooks.forward_headers == ("Authorization", "X-Tenant")
    with pytest.raises(ConfigError, match="'hooks_events'"):
        load_settings(flags={"hooks_events": [1]})


def test_settings_changed_in_code_are_checked_as_flags_are():
    assert Settings().with_values(max_size="1KiB").uploads.max_size == 1024
    with pytest.raises(ConfigError, match="'max_size'"):
        Settings().with_values(max_size="-1")


def test_unknown_environment_variable_is_warned_about_by_name_not_refused():
    environ = {"AIOTUSD_PROT": "8080", "AIOTUSD_TYPO": "1", "AIOTUSD_HOST": "::1"}
    assert load_settings(environ=environ).server.host == "::1"
    assert unknown_variables(environ) == [
        "ignoring environment variable AIOTUSD_PROT: no such setting; did you mean AIOTUSD_PORT?",
        "ignoring environment variable AIOTUSD_TYPO: no such setting",
    ]


# What Kubernetes injects for Services named aiotusd and aiotusd-metrics.
KUBERNETES = {
    "AIOTUSD_SERVICE_HOST": "10.96.0.5",
    "AIOTUSD_SERVICE_PORT": "1080",
    "AIOTUSD_SERVICE_PORT_HTTP": "1080",
    "AIOTUSD_PORT": "tcp://10.96.0.5:1080",
    "AIOTUSD_PORT_1080_TCP": "tcp://10.96.0.5:1080",
    "AIOTUSD_PORT_1080_TCP_PROTO": "tcp",
    "AIOTUSD_PORT_1080_TCP_PORT": "1080",
    "AIOTUSD_PORT_1080_TCP_ADDR": "10.96.0.5",
    "AIOTUSD_METRICS_SERVICE_HOST": "10.96.0.6",
    "AIOTUSD_METRICS_PORT": "tcp://10.96.0.6:9100",
    "AIOTUSD_METRICS_PORT_9100_TCP_ADDR": "10.96.0.6",
}


def test_kubernetes_service_links_are_ignored_without_a_warning():
    assert load_settings(environ=KUBERNETES) == Settings()
    assert unknown_variables(KUBERNETES) == []


def test_a_port_variable_that_is_a_number_is_ours_and_a_bad_one_is_refused():
    environ = {**KUBERNETES, "AIOTUSD_PORT": "8080", "AIOTUSD_METRICS_PORT": "9100"}
    settings = load_settings(environ=environ)
    assert (settings.server.port, settings.metrics.port) == (8080, 9100)
    with pytest.raises(ConfigError, match="'port'.*AIOTUSD_PORT"):
        load_settings(environ={"AIOTUSD_PORT": "http://10.96.0.5:1080"})


def test_unknown_flag_key_is_refused():
    with pytest.raises(ConfigError, match="'prot'"):
        load_settings(flags={"prot": "8080"})


def test_a_file_variable_gives_its_settings_the_files_text_without_the_line_break(tmp_path):
    (tmp_path / "secret").write_text("s3cr3t\n")
    (tmp_path / "url").write_text("postgresql://u:pw@db/uploads\r\n")
    environ = {"AIOTUSD_HOOKS_SECRET_FILE": str(tmp_path / "secret"),
               "AIOTUSD_DATABASE_FILE": str(tmp_path / "url")}
    settings = load_settings(environ=environ)
    assert settings.hooks.secret == "s3cr3t"
    assert settings.storage.database == "postgresql://u:pw@db/uploads"
    assert unknown_variables({**environ, "AIOTUSD_TYPO_FILE": "x"}) == [
        "ignoring environment variable AIOTUSD_TYPO_FILE: no such setting"]


def test_a_file_variable_beside_its_variable_is_refused_naming_both(tmp_path):
    (tmp_path / "secret").write_text("a")
    environ = {"AIOTUSD_HOOKS_SECRET_FILE": str(tmp_path / "secret"), "AIOTUSD_HOOKS_SECRET": "b"}
    with pytest.raises(ConfigError, match="^AIOTUSD_HOOKS_SECRET and AIOTUSD_HOOKS_SECRET_FILE "
                                          "are both set: set one of them$"):
        load_settings(environ=environ)
    environ = {"AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret"),
               "AWS_SECRET_ACCESS_KEY": "b"}
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY and AWS_SECRET_ACCESS_KEY_FILE"):
        aws_secrets_from_files(environ)


def test_an_unreadable_file_variable_is_refused_naming_the_file(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"AIOTUSD_DATABASE_FILE": str(missing)})
    assert str(raised.value) == (
        f"cannot read {missing} named by AIOTUSD_DATABASE_FILE: No such file or directory")
    with pytest.raises(ConfigError, match="cannot read .* named by AWS_ACCESS_KEY_ID_FILE"):
        aws_secrets_from_files({"AWS_ACCESS_KEY_ID_FILE": str(tmp_path)})  # a directory


def test_a_bad_value_from_a_file_is_not_repeated_in_the_message(tmp_path):
    (tmp_path / "port").write_text("secret-ish\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"AIOTUSD_PORT_FILE": str(tmp_path / "port")})
    assert str(raised.value) == (f"bad value for 'port' in file {tmp_path / 'port'} named by "
                                 "AIOTUSD_PORT_FILE: expected an integer")


def test_aws_credentials_come_from_their_files(tmp_path):
    (tmp_path / "id").write_text("AKID\n")
    (tmp_path / "key").write_text("KEY")
    assert aws_secrets_from_files({
        "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "id"),
        "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "key"), "AWS_REGION": "x",
    }) == {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "KEY"}


BAD_VALUES = [
    ("port", "abc"),
    ("port", "-1"),
    ("port", "65536"),
    ("port", "80.5"),
    ("max_size", "-1"),
    ("max_size", "1.5GiB"),
    ("max_size", "5XB"),
    ("max_size", ""),
    ("log_format", "xml"),
    ("log_level", "verbose"),
    ("storage", "ftp"),
    ("s3_part_size", "4MiB"),
    ("s3_part_size", "5242879"),
    ("s3_part_size", "6GiB"),
    ("s3_max_parts", "0"),
    ("s3_concurrency", "0"),
    ("s3_equal_parts", "maybe"),
    ("expiration", "-5"),
    ("expiry_interval", "0"),
    ("expiry_interval", "nan"),
    ("lock_timeout", "inf"),
    ("lock_timeout", "soon"),
    ("idle_timeout", "-1"),
    ("commit_bytes", "0"),
    ("commit_seconds", "0"),
    ("gone_retention", "1w"),
    ("base_path", "/up{id}/"),
    ("base_path", "/a/../b/"),
    ("base_path", "/with space/"),
    ("base_path", "/files?x=1"),
    ("host", ""),
    ("host", "a b"),
    ("data_dir", ""),
    ("s3_endpoint", "minio:9000"),
    ("s3_endpoint", "localhost:9000"),
    ("s3_endpoint", "http://"),
    ("s3_endpoint", "http://minio:99999"),
    ("s3_endpoint", "http://[::1"),
    ("hooks_url", "http://hooks:port/"),
    ("expiration", "99999999999999999999"),
    ("gone_retention", "1" + "0" * 30),
    ("hooks_max_age", "1" + "0" * 30),
    ("lock_timeout", "1e300"),
    ("hooks_retry_delay", "1e300"),
    ("create_burst", "1" + "0" * 30),
    ("create_rate", "1e-320"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_flag_value_names_the_key(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings(flags={name: value})
    message = str(raised.value)
    assert repr(name) in message and "--" + name.replace("_", "-") in message


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_environment_value_names_the_key(name, value):
    env_name = "AIOTUSD_" + name.upper()
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={env_name: value})
    message = str(raised.value)
    assert repr(name) in message and env_name in message


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_file_value_names_the_key(tmp_path, name, value):
    config = write_toml(tmp_path / "c.toml", f"{name} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file=config)
    message = str(raised.value)
    assert repr(name) in message and config in message


@pytest.mark.parametrize(
    "line",
    ["port = true", "port = 1.5", 'port = [1]', "host = 5", "s3_path_style = 1.0",
     "max_size = -1", "max_size = 2.5", "lock_timeout = false", "lock_timeout = 1" + "0" * 400,
     'data_dir = "a\\u0000b"', 'tls_key = "a\\u0000b"', "expiration = 1979-05-27"],
)
def test_wrong_toml_types_are_refused(tmp_path, line):
    config = write_toml(tmp_path / "c.toml", line + "\n")
    with pytest.raises(ConfigError, match=repr(line.split()[0])):
        load_settings(config_file=config)


def test_missing_config_file_is_a_config_error(tmp_path):
    missing = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_file=missing)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    config = tmp_path / "c.toml"
    config.write_bytes(b'host = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML: not UTF-8"):
        load_settings(config_file=str(config))


def test_invalid_toml_is_a_config_error(tmp_path):
    config = write_toml(tmp_path / "c.toml", "port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=config)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512MiB", 512 * 1024**2),
        ("512mib", 512 * 1024**2),
        ("5GB", 5 * 1000**3),
        ("5GiB", 5 * 1024**3),
        ("5G", 5 * 1024**3),
        ("10 KiB", 10 * 1024),
        ("1kB", 1000),
        ("1K", 1024),
        ("2TB", 2 * 1000**4),
        ("100B", 100),
    ],
)
def test_sizes(text, size):
    assert load_settings(environ={"AIOTUSD_MAX_SIZE": text}).uploads.max_size == size
    assert load_settings(flags={"max_size": text}).uploads.max_size == size


def test_sizes_in_toml_as_integer_or_text(tmp_path):
    config = write_toml(tmp_path / "c.toml", 'max_size = 1048576\ns3_part_size = "16MiB"\n')
    settings = load_settings(config_file=config)
    assert settings.uploads.max_size == 1048576
    assert settings.s3.part_size == 16 * 1024**2


def test_s3_part_size_limits_are_inclusive():
    assert load_settings(flags={"s3_part_size": "5MiB"}).s3.part_size == 5 * 1024**2
    assert load_settings(flags={"s3_part_size": "5GiB"}).s3.part_size == 5 * 1024**3


def test_port_limits_are_inclusive():
    assert load_settings(flags={"port": "0"}).server.port == 0
    assert load_settings(flags={"port": "65535"}).server.port == 65535


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("/files/", "/files/"),
        ("files", "/files/"),
        ("/files", "/files/"),
        ("files/", "/files/"),
        ("uploads/v1", "/uploads/v1/"),
        ("//a//b//", "/a/b/"),
        (" /x/ ", "/x/"),
        ("/", "/"),
        ("", "/"),
        ("/a-b_c.d~e/", "/a-b_c.d~e/"),
    ],
)
def test_base_path_is_normalised(tmp_path, raw, normalised):
    assert load_settings(flags={"base_path": raw}).server.base_path == normalised
    assert load_settings(environ={"AIOTUSD_BASE_PATH": raw}).server.base_path == normalised
    config = write_toml(tmp_path / "c.toml", f'base_path = "{raw}"\n')
    assert load_settings(config_file=config).server.base_path == normalised


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
     ("false", False), ("False", False), ("0", False), ("no", False), ("off", False)],
)
def test_booleans(text, value):
    assert load_settings(environ={"AIOTUSD_S3_PATH_STYLE": text}).s3.path_style is value


def test_toml_booleans(tmp_path):
    config = write_toml(tmp_path / "c.toml", "s3_equal_parts = true\n")
    assert load_settings(config_file=config).s3.equal_parts is True


def test_numbers_from_text_and_toml(tmp_path):
    config = write_toml(tmp_path / "c.toml", "lock_timeout = 1\nidle_timeout = 2.5\n")
    settings = load_settings({"commit_seconds": "0.5"}, {"AIOTUSD_EXPIRATION": " 30 "}, config)
    assert settings.limits.lock_timeout == 1.0
    assert settings.limits.idle_timeout == 2.5
    assert settings.storage.commit_seconds == 0.5
    assert settings.uploads.expiration == 30


DURATIONS = [
    ("15s", 15), ("1m", 60), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("2.5", 2.5),
    (" 30 ", 30), ("1m0.5s", 60.5), ("500ms", 0.5),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_durations_take_units_in_flags_environment_and_file(tmp_path, text, seconds):
    config = write_toml(tmp_path / "c.toml", f'[hooks]\ntimeout = "{text}"\n')
    for loaded in (load_settings(flags={"hooks_timeout": text}),
                     load_settings(environ={"AIOTUSD_HOOKS_TIMEOUT": text}),
                     load_settings(config_file=config)):
        assert loaded.hooks.timeout == seconds
        assert isinstance(loaded.hooks.timeout, float)


@pytest.mark.parametrize("name", ["expiration", "gone_retention", "hooks_max_age"])
def test_whole_second_durations_take_units_and_stay_integers(tmp_path, name):
    config = write_toml(tmp_path / "c.toml", f'{name} = "1h30m"\n')
    for loaded in (load_settings(flags={name: "7d"}), load_settings(config_file=config),
                     load_settings(environ={"AIOTUSD_" + name.upper(): "2h"})):
        value = BY_NAME[name].get(loaded)
        assert value in (604800, 5400, 7200) and type(value) is int
    assert BY_NAME[name].get(load_settings(flags={name: 120})) == 120  # a TOML number
    with pytest.raises(ConfigError, match=f"'{name}'.*whole seconds"):
        load_settings(flags={name: "1500ms"})


@pytest.mark.parametrize("text", ["1w", "soon", "1h 30m", "m", "-1s", "1.s", "inf"])
def test_bad_durations_are_refused_naming_the_setting(text):
    with pytest.raises(ConfigError, match="'idle_timeout'"):
        load_settings(flags={"idle_timeout": text})


def test_database_path_defaults_into_data_dir():
    assert load_settings(flags={"data_dir": "/srv/tus"}).storage.database_path == Path(
        "/srv/tus/aiotusd.sqlite3"
    )
    settings = load_settings(flags={"data_dir": "/srv/tus", "database": "/var/db/t.sqlite3"})
    assert settings.storage.database_path == Path("/var/db/t.sqlite3")


def test_example_config_holds_every_key_and_loads_as_the_defaults():
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    keys = {(section, key) for section, table in document.items() for key in table}
    assert keys == {(setting.section, setting.key) for setting in SETTINGS}
    assert load_settings(config_file=str(EXAMPLE)) == Settings()


def test_example_config_comments_every_key():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith(("#", "[")):
            assert index > 0 and lines[index - 1].startswith("# "), line


# --- every setting against hostile values ------------------------------------------------

# Text that a flag or an environment variable can carry: wrong types, empty, negative,
# absurdly large, not finite, malformed URLs, paths and networks.
HOSTILE_TEXTS = [
    "", " ", "-1", "-0", "0", "1", "0.001", "1e400", "-1e400", "nan", "inf", "-inf", "1e-320",
    "0x10", "1_000", "9" * 30, "9" * 5000, "5XB", "1.5GiB", "99999999999TiB", "true", "maybe",
    "minio:9000", "localhost:9000", "http://", "http://h:99999/", "http://h:port/",
    "http://[::1", "ftp://h/", "http://a b/", "https://host:9000", "a\x00b", "a\nb",
    "10.0.0.0/33", "10.0.0.0/8", "*", "*, http://a", "/a/../b", "\udcff", "١٢", "x" * 1000,
]
# What a TOML file can hold besides text.
HOSTILE_VALUES = [
    *HOSTILE_TEXTS, 0, 1, -1, 2**63, 2**64, 10**400, -(10**400), 0.5, -0.0, 1e308,
    math.nan, math.inf, True, False, [1], {"a": 1}, datetime.datetime(1979, 5, 27),
]
PATHS = ("data_dir", "database", "tls_cert", "tls_key")
URLS = ("hooks_url", "s3_endpoint")


def assert_sound(setting: Setting, value: Any) -> None:
    """A value the loader took is of the setting's type, within its bounds and choices."""
    assert type(value) is type(setting.default), (setting.name, value)
    if isinstance(value, float):
        assert math.isfinite(value), (setting.name, value)
    if setting.choices:
        assert value in setting.choices
    if setting.minimum is not None:
        assert value >= setting.minimum
    if setting.maximum is not None:
        assert value <= setting.maximum
    if setting.name in PATHS:
        assert "\x00" not in value
    if setting.name in ("host", "data_dir"):
        assert value.strip(), setting.name  # empty: every interface, the working directory
    if setting.name in URLS and value:
        parts = urlsplit(value)
        assert parts.scheme in ("http", "https") and parts.hostname, value
        assert parts.port is None or 0 <= parts.port <= 65535


def assert_refused_in_one_line_or_sound(setting: Setting, load: Callable[[], Settings]) -> None:
    """Loading either fails with a ConfigError whose one line names the setting, or gives a
    sound value: nothing else escapes (that would be a traceback at start-up)."""
    try:
        settings = load()
    except ConfigError as exc:
        message = str(exc)
        assert repr(setting.name) in message and message.isprintable(), message
        return
    assert_sound(setting, setting.get(settings))


@pytest.mark.parametrize("setting", SETTINGS, ids=NAMES)
def test_every_setting_refuses_or_takes_soundly_every_hostile_value(setting):
    env_name = "AIOTUSD_" + setting.name.upper()
    for text in HOSTILE_TEXTS:
        assert_refused_in_one_line_or_sound(setting, partial(load_settings, environ={env_name: text}))
    # Flags and TOML values go through the same check, the latter with TOML's types.
    for value in HOSTILE_VALUES:
        assert_refused_in_one_line_or_sound(setting, partial(load_settings, {setting.name: value}))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(SETTINGS),
    st.one_of(
        st.text(), st.integers(), st.integers().map(lambda n: n * 10**300), st.floats(),
        st.lists(st.booleans(), max_size=2),
    ),
)
def test_every_setting_refuses_or_takes_soundly_any_value(setting, value):
    assert_refused_in_one_line_or_sound(setting, partial(load_settings, {setting.name: value}))
