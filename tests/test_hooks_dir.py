"""``hooks_dir``: tusd's file hooks, real shell scripts named after their events, run with
tusd's hook request on stdin and TUS_ID, TUS_OFFSET, TUS_SIZE in their environment."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from support.hooks import assert_hook_failed
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    create_upload,
    path_of,
    upload_id,
)
from support.processes import free_port
from support.storage import data_files
from support.waiting import poll

from server.app import create_app
from server.config import Settings
from server.context import CONTEXT
from server.errors import ConfigError

PRE_CREATE = """#!/bin/sh
input=$(cat)
printf '%s\\n' "$input" > "pre-create.$HOOK_ID.json"
printf '%s|%s|%s|%s\\n' "$TUS_ID" "$TUS_OFFSET" "$TUS_SIZE" "$PWD" >> pre-create.env
case "$input" in
  *'"filename": "bad.exe"'*)
    echo '{"RejectUpload": true, "HTTPResponse": {"StatusCode": 415, "Body": "no exe"}}' ;;
  *'"filename": "crash"'*)
    echo 'crashed on purpose' >&2
    exit 1 ;;
esac
"""
# Fails its first delivery, takes the second: post events are retried.
POST_FINISH = """#!/bin/sh
cat > post-finish.json
echo "$TUS_ID|$TUS_OFFSET|$TUS_SIZE" >> post-finish.env
[ "$(wc -l < post-finish.env)" -ge 2 ] || exit 3
"""


def script(directory: Path, name: str, text: str, mode: int = 0o755) -> None:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)


def named(filename: str) -> dict[str, str]:
    return {**TUS, "Upload-Length": "4",
            "Upload-Metadata": f"filename {base64.b64encode(filename.encode()).decode()}"}


@pytest.mark.e2e
async def test_file_hooks_answer_in_tusds_format_and_missing_ones_are_skipped(
    make_client: ClientFactory, tmp_path: Path, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    script(hooks, "pre-create", PRE_CREATE)
    script(hooks, "post-finish", POST_FINISH)
    client = await make_client(
        hooks_dir=str(hooks), hooks_events="pre-create,post-create,post-finish",
        hooks_retry_delay=0.05,
    )
    refused = await client.post("/files/", headers=named("bad.exe"))
    assert refused.status == 415 and await refused.read() == b"no exe"
    crashed = await client.post("/files/", headers=named("crash"))
    await assert_hook_failed(crashed, caplog, "exited with status 1: crashed on purpose",
                             str(hooks / "pre-create"))
    assert data_files(settings) == []

    created = await client.post("/files/", data=b"data",
                                headers={**named("good.txt"), **PATCH_HEADERS})
    assert created.status == 201
    uid = upload_id(path_of(created))

    async def outbox_empty() -> bool:
        return await client.app[CONTEXT].store.hook_events() == []

    # post-create has no file: delivered at once. post-finish: failed once, then taken.
    await poll(outbox_empty, "post-create skipped and post-finish retried")
    assert (hooks / "post-finish.env").read_text().splitlines() == [f"{uid}|4|4"] * 2
    finish = json.loads((hooks / "post-finish.json").read_text())
    assert finish["Type"] == "post-finish" and finish["Event"]["Upload"]["ID"] == uid
    # pre-create: no ID yet (as with tusd), run in the hooks directory.
    assert (hooks / "pre-create.env").read_text().splitlines() == [f"|0|4|{hooks}"] * 3
    requests = [json.loads(p.read_text()) for p in sorted(hooks.glob("pre-create.*.json"))]
    assert len(requests) == 3
    assert {r["Event"]["Upload"]["MetaData"]["filename"] for r in requests} == {
        "bad.exe", "crash", "good.txt"
    }


@pytest.mark.e2e
async def test_a_hook_file_that_cannot_be_run_fails_the_request(
    make_client: ClientFactory, tmp_path: Path, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    script(tmp_path, "pre-create", "#!/bin/sh\nexit 0\n", mode=0o644)
    client = await make_client(hooks_dir=str(tmp_path), hooks_fail_open=False)
    response = await client.post("/files/", headers=named("a"))
    await assert_hook_failed(response, caplog, "cannot be run: Permission denied")
    assert data_files(settings) == []


@pytest.mark.e2e
async def test_an_event_kept_from_before_in_aiotusds_format_fails_instead_of_running(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The outbox may hold events written in aiotusd's format before hooks_dir was set: a
    tusd script is not run with them; each attempt fails, as a delivery that ``aiotusd
    hooks retry`` can send again once the hooks are right."""
    before = await make_client(
        hooks_url=f"http://127.0.0.1:{free_port()}/hook", hooks_events="post-create",
        hooks_retry_delay=0.01,
    )
    await create_upload(before, 3)
    await before.close()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    script(hooks, "post-create", "#!/bin/sh\ntouch ran\n")
    client = await make_client(hooks_dir=str(hooks), hooks_retry_delay=60)

    async def refused() -> bool:
        events = await client.app[CONTEXT].store.hook_events()
        return any("not in tusd's format" in event.last_error for event in events)

    await poll(refused, "the old event refused")
    assert not (hooks / "ran").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hooks_dir": "/nonexistent/hooks"}, "hooks_dir '/nonexistent/hooks' is not a directory"),
        ({"hooks_dir": "/tmp", "hooks_url": "http://127.0.0.1:1/"}, "hooks_url and hooks_dir"),
        ({"hooks_format": "tusd2"}, "hooks_format"),
    ],
)
def test_hook_dir_settings_that_cannot_work_are_config_errors(
    settings: Settings, changes: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(settings.with_values(**changes))
