"""Hooks against a real receiver on loopback: every event and its payload, signatures,
blocking answers (reject, change, timeout, unreachable), command and in-process hooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.hooks import Received, Receiver, assert_hook_failed, verify
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    assert_one_line_error,
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
from server.events import EVENTS
from server.protocol import parse_metadata

SECRET = "s3cret"
ALL_EVENTS = ",".join(EVENTS)


def metadata(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items()
    )


def reject_json(status: int, body: str, **headers: str) -> web.Response:
    return web.json_response({"reject": {"status": status, "body": body, "headers": headers}})


async def test_every_event_fires_with_its_payload_and_signed_headers(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(
        hooks_url=receiver.url,
        hooks_secret=SECRET,
        hooks_events=ALL_EVENTS,
        hooks_progress_interval=0,
    )
    response = await client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": "10",
            "Upload-Metadata": metadata(filename="a.txt"),
            "Authorization": "Bearer token-1",
            "X-Not-Forwarded": "secret",
        },
    )
    assert response.status == 201
    creation_request_id = response.headers["X-Request-ID"]
    path = path_of(response)
    uid = upload_id(path)
    for offset, chunk in ((0, b"0123"), (4, b"456789")):
        patched = await client.patch(
            path, data=chunk, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}
        )
        assert patched.status == 204
    assert (await client.head(path, headers=TUS)).status == 200
    assert await (await client.get(path)).read() == b"0123456789"
    assert (await client.delete(path, headers=TUS)).status == 204

    await receiver.wait_for_names(
        "pre-create",
        "post-create",
        "post-receive",
        "post-receive",
        "pre-finish",
        "post-finish",
        "pre-terminate",
        "post-terminate",
        *["pre-access"] * 5,
    )
    received = receiver.received
    assert len(received) == 13
    # Blocking events arrive while their request waits, so in request order.
    assert [
        (r.name, r.json["request"]["method"]) for r in received if r.name.startswith("pre-")
    ] == [
        ("pre-create", "POST"),
        ("pre-access", "PATCH"),
        ("pre-access", "PATCH"),
        ("pre-finish", "PATCH"),
        ("pre-access", "HEAD"),
        ("pre-access", "GET"),
        ("pre-access", "DELETE"),
        ("pre-terminate", "DELETE"),
    ]
    # Post events arrive in the order of the changes they report.
    assert [
        (r.name, r.json["upload"]["offset"]) for r in received if r.name.startswith("post-")
    ] == [
        ("post-create", 0),
        ("post-receive", 4),
        ("post-receive", 10),
        ("post-finish", 10),
        ("post-terminate", 10),
    ]
    for r in received:
        document = r.json
        assert r.headers["Content-Type"] == "application/json"
        assert document["type"] == r.name and document["id"] == r.id
        assert verify(SECRET, r) and not verify("wrong secret", r)
        assert abs(int(r.headers["Hook-Timestamp"]) - time.time()) < 60
        assert document["upload"] == {
            "id": uid,
            "size": 10,
            "offset": document["upload"]["offset"],
            "metadata": {"filename": "a.txt"},
            "is_partial": False,
            "is_final": False,
            "partial_uploads": None,
            "storage": {
                "type": "filesystem",
                "path": str(Path(settings.storage.data_dir).absolute() / uid),
            },
        }
        request = document["request"]
        # The id of the request in the logs and in its response's X-Request-ID.
        if r.name in ("pre-create", "post-create"):
            assert request["id"] == creation_request_id
        assert len(request["id"]) == 32
        assert request["remote_addr"] == "127.0.0.1"
        assert request["uri"] == (
            "/files/" if r.name == "pre-create" or r.name == "post-create" else path
        )
        assert request["headers"].get("Authorization", "Bearer token-1") == "Bearer token-1"
        assert "X-Not-Forwarded" not in request["headers"]
    assert received[0].json["request"]["headers"]["Authorization"] == "Bearer token-1"
    assert len({r.id for r in received}) == 13
    assert received[0].json["upload"]["offset"] == 0


async def test_final_upload_events_name_their_parts(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="post-create,post-finish")
    parts = []
    for chunk in (b"ab", b"cd"):
        response = await client.post(
            "/files/",
            data=chunk,
            headers={
                **PATCH_HEADERS,
                "Upload-Length": "2",
                "Upload-Concat": "partial",
            },
        )
        assert response.status == 201
        parts.append(upload_id(path_of(response)))
    response = await client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(f"/files/{p}" for p in parts),
        },
    )
    assert response.status == 201
    final_id = upload_id(path_of(response))

    await receiver.wait_for_names(*["post-create"] * 3, *["post-finish"] * 3)
    final_events = [r.json for r in receiver.received if r.json["upload"]["id"] == final_id]
    assert [e["type"] for e in final_events] == ["post-create", "post-finish"]
    for event in final_events:
        assert event["upload"]["is_final"] and event["upload"]["partial_uploads"] == parts
    assert final_events[1]["upload"]["size"] == final_events[1]["upload"]["offset"] == 4
    partial = next(r.json for r in receiver.received if r.json["upload"]["id"] == parts[0])
    assert partial["upload"]["is_partial"] and partial["upload"]["partial_uploads"] is None


async def test_pre_create_rejection_is_answered_exactly_and_creates_nothing(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(hooks_url=receiver.url)
    receiver.respond = lambda r: reject_json(401, "who are you?", **{"WWW-Authenticate": "Bearer"})
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert response.status == 401
    assert await response.text() == "who are you?"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"

    # A plain non-2xx answer rejects too, with its own status, body and type.
    receiver.respond = lambda r: web.Response(status=418, text="teapot", content_type="text/x-tea")
    response = await client.post(
        "/files/", data=b"hello", headers={**PATCH_HEADERS, "Upload-Length": "5"}
    )
    assert response.status == 418
    assert await response.text() == "teapot"
    assert response.headers["Content-Type"].startswith("text/x-tea")

    assert data_files(settings) == []
    assert await client.app[CONTEXT].store.hook_events() == []
    assert [r.name for r in receiver.received] == ["pre-create", "pre-create"]


async def test_pre_create_changes_id_and_metadata(
    make_client: ClientFactory, receiver: Receiver, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-create,post-create")

    def respond(r: Received) -> web.Response:
        if r.name != "pre-create":
            return web.Response()
        return web.json_response(
            {
                "change": {
                    "id": "invoice-42",
                    "metadata": {"filename": "renamed.txt", "owner": "alice"},
                }
            }
        )

    receiver.respond = respond
    response = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "3", "Upload-Metadata": metadata(filename="orig.txt")},
    )
    assert response.status == 201
    assert response.headers["Location"].endswith("/files/invoice-42")
    assert receiver.received[0].json["upload"]["metadata"] == {"filename": "orig.txt"}
    head = await client.head("/files/invoice-42", headers=TUS)
    assert parse_metadata(head.headers["Upload-Metadata"]) == {
        "filename": b"renamed.txt",
        "owner": b"alice",
    }
    (created,) = await receiver.wait(lambda: receiver.named("post-create"), "post-create")
    assert created.json["upload"]["id"] == "invoice-42"
    assert created.json["upload"]["metadata"] == {"filename": "renamed.txt", "owner": "alice"}

    # The same id again is taken; an id that is no upload id is the hook's error.
    again = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    await assert_one_line_error(again, 409)
    receiver.respond = lambda r: web.json_response({"change": {"id": "../etc"}})
    invalid = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    await assert_hook_failed(invalid, caplog, "invalid answer", receiver.url)
    # Metadata from a hook is held to max_metadata_size as the client's is.
    receiver.respond = lambda r: web.json_response(
        {"change": {"metadata": {"note": "x" * settings.uploads.max_metadata_size}}}
    )
    too_long = await client.post("/files/", headers={**TUS, "Upload-Length": "3"})
    await assert_hook_failed(too_long, caplog, "change.metadata is longer than the maximum")
    assert data_files(settings) == ["invoice-42"]


async def test_pre_access_rejects_patch_and_head_but_not_the_owner(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-access")
    path = await create_upload(client, 4)

    def respond(r: Received) -> web.Response:
        allowed = r.json["request"]["headers"].get("Authorization") == "Bearer owner"
        return web.Response() if allowed else reject_json(403, "not yours")

    receiver.respond = respond
    patched = await client.patch(
        path, data=b"data", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert patched.status == 403 and await patched.text() == "not yours"
    head = await client.head(path, headers=TUS)
    assert head.status == 403 and "Upload-Offset" not in head.headers
    stored = await client.app[CONTEXT].store.get(upload_id(path))
    assert stored is not None and stored.offset == 0

    owner = {"Authorization": "Bearer owner"}
    patched = await client.patch(
        path, data=b"data", headers={**PATCH_HEADERS, **owner, "Upload-Offset": "0"}
    )
    assert patched.status == 204
    head = await client.head(path, headers={**TUS, **owner})
    assert head.status == 200 and head.headers["Upload-Offset"] == "4"
    assert [r.json["request"]["method"] for r in receiver.received] == [
        "PATCH",
        "HEAD",
        "PATCH",
        "HEAD",
    ]


async def test_pre_finish_rejection_keeps_the_bytes_unfinished(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-finish,post-finish")
    path = await create_upload(client, 6)
    receiver.respond = lambda r: reject_json(422, "virus found")
    patched = await client.patch(
        path, data=b"sample", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    assert patched.status == 422 and await patched.text() == "virus found"
    assert patched.headers["Upload-Offset"] == "6"
    upload = await client.app[CONTEXT].store.get(upload_id(path))
    assert upload is not None and upload.offset == 6 and not upload.is_complete
    assert (await client.get(path)).status == 409

    # Once the hook agrees, a PATCH of no bytes at the offset finishes the upload.
    receiver.respond = None
    patched = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "6"})
    assert patched.status == 204
    assert await (await client.get(path)).read() == b"sample"
    await receiver.wait(lambda: receiver.named("post-finish"), "post-finish")
    assert [r.name for r in receiver.received] == ["pre-finish", "pre-finish", "post-finish"]


async def test_pre_finish_rejection_of_a_creation_with_upload_tells_where_it_stands(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    """The body filled the new upload, then pre-finish refused: the answer is the hook's,
    with the upload's Location and the offset its kept bytes reached."""
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-finish")
    receiver.respond = lambda r: reject_json(422, "virus found")
    response = await client.post(
        "/files/", data=b"sample", headers={**PATCH_HEADERS, "Upload-Length": "6"}
    )
    assert response.status == 422 and await response.text() == "virus found"
    assert response.headers["Upload-Offset"] == "6"
    path = path_of(response)
    upload = await client.app[CONTEXT].store.get(upload_id(path))
    assert upload is not None and upload.offset == 6 and not upload.is_complete
    head = await client.head(path, headers=TUS)
    assert head.status == 422 and head.headers["Upload-Offset"] == "6"


async def test_a_body_dropped_after_periodic_commits_is_corrected_by_a_post_receive(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    """A chunked body too long for the upload is dropped whole (413), also the part of it
    that periodic commits had recorded and reported: a post-receive then reports the
    offset that stands."""
    client = await make_client(
        hooks_url=receiver.url, hooks_events="post-receive", hooks_progress_interval=0,
        commit_bytes=1,
    )
    path = await create_upload(client, 10)

    async def body():
        yield b"12345"
        # The excess goes once the first chunk's commit has been reported.
        await receiver.wait(lambda: receiver.named("post-receive"), "the first post-receive")
        yield b"67890X"

    response = await client.patch(path, data=body(), headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await assert_one_line_error(response, 413)
    events = await receiver.wait(
        lambda: [r for r in receiver.named("post-receive") if r.json["upload"]["offset"] == 0],
        "a post-receive at offset 0",
    )
    assert len(events) == 1
    offsets = [r.json["upload"]["offset"] for r in receiver.named("post-receive")]
    assert offsets[0] == 5 and offsets[-1] == 0
    assert (await client.head(path, headers=TUS)).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("took", [True, False], ids=["write took", "write failed"])
async def test_a_completing_write_whose_request_is_cancelled_is_followed_through(
    make_client: ClientFactory, receiver: Receiver, took: bool
) -> None:
    """The last offset and the completion are one write (filesystem, no pre-finish hook).
    When the request is cancelled in it, the write has run, but it may have failed: the
    upload ends complete with exactly one post-finish event, and counted once, either way."""
    client = await make_client(hooks_url=receiver.url, hooks_events="post-finish")
    ctx = client.app[CONTEXT]
    path = await create_upload(client, 5)
    real_save = ctx.store.save_progress
    cancelled = []

    async def save_then_cancel(upload, events=(), lease=None, release=False):
        if upload.is_complete and not cancelled:
            cancelled.append(upload.id)
            if took:
                await real_save(upload, events, lease, release)
            raise asyncio.CancelledError
        return await real_save(upload, events, lease, release)

    ctx.store.save_progress = save_then_cancel
    with contextlib.suppress(aiohttp.ClientError):
        await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert cancelled == [upload_id(path)]
    (finish,) = await receiver.wait(lambda: receiver.named("post-finish"), "post-finish")
    assert finish.json["upload"]["offset"] == 5
    upload = await ctx.store.get(upload_id(path))
    assert upload is not None and upload.is_complete and upload.offset == 5
    assert ctx.metrics.registry.get_sample_value("aiotusd_uploads_finished_total") == 1
    # Once the outbox is empty, no second post-finish is on its way.
    async def outbox_empty() -> bool:
        return await ctx.store.hook_events() == []

    await poll(outbox_empty, "an empty outbox")
    assert len(receiver.named("post-finish")) == 1


async def test_pre_terminate_rejection_keeps_the_upload(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-terminate,post-terminate")
    path = await create_upload(client, 4)
    receiver.respond = lambda r: reject_json(409, "still in use", **{"Retry-After": "60"})
    deleted = await client.delete(path, headers=TUS)
    assert deleted.status == 409 and deleted.headers["Retry-After"] == "60"
    assert (await client.head(path, headers=TUS)).status == 200
    assert await client.app[CONTEXT].store.hook_events() == []

    receiver.respond = None
    assert (await client.delete(path, headers=TUS)).status == 204
    await receiver.wait(lambda: receiver.named("post-terminate"), "post-terminate")


async def test_a_silent_hook_fails_closed_with_503_or_open_when_told(
    make_client: ClientFactory, receiver: Receiver, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def hang(r: Received) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response()

    receiver.respond = hang
    try:
        client = await make_client(hooks_url=receiver.url, hooks_timeout=0.2)
        response = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        await assert_hook_failed(
            response, caplog, f"pre-create hook failed: {receiver.url} gave no answer within 0.2 s"
        )
        assert data_files(settings) == []

        open_client = await make_client(
            hooks_url=receiver.url, hooks_timeout=0.2, hooks_fail_open=True
        )
        assert (
            await open_client.post("/files/", headers={**TUS, "Upload-Length": "1"})
        ).status == 201
    finally:
        release.set()


def verify_standard(secret: str, received: Received) -> bool:
    """What a Standard Webhooks receiver does (standardwebhooks.com, "Verifying
    webhooks"): the key is the base64 after ``whsec_``; one of the space-separated
    ``v1,<base64>`` signatures must be the HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    headers = received.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (item.partition(",") for item in headers["webhook-signature"].split())
    )


async def test_standard_webhooks_signing(make_client: ClientFactory, receiver: Receiver) -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    client = await make_client(
        hooks_url=receiver.url, hooks_secret=secret, hooks_signing="standard",
        hooks_events="pre-create,post-create",
    )
    await create_upload(client, 3)
    received = await receiver.wait_for_names("pre-create", "post-create")
    for r in received:
        assert r.headers["webhook-id"] == r.id == r.json["id"]
        assert abs(int(r.headers["webhook-timestamp"]) - time.time()) < 60
        assert verify_standard(secret, r)
        assert not verify_standard("whsec_" + base64.b64encode(b"another key").decode(), r)
        assert "Hook-Signature" not in r.headers and "Hook-Timestamp" not in r.headers


async def test_both_signings_with_a_plain_secret(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(
        hooks_url=receiver.url, hooks_secret=SECRET, hooks_signing="both",
        hooks_events="pre-create",
    )
    await create_upload(client, 3)
    (received,) = await receiver.wait_for_names("pre-create")
    assert verify(SECRET, received)
    # A plain secret is, to Standard Webhooks libraries, whsec_ and its base64.
    assert verify_standard("whsec_" + base64.b64encode(SECRET.encode()).decode(), received)
    assert received.headers["webhook-timestamp"] == received.headers["Hook-Timestamp"]


@pytest.mark.e2e
async def test_hook_events_carry_the_client_address_a_trusted_proxy_tells(
    server_process: Any, receiver: Receiver
) -> None:
    server = server_process(
        "--hooks-url", receiver.url, "--hooks-events", "pre-create",
        "--behind-proxy", "true", "--trusted-proxies", "127.0.0.1/32,10.0.0.0/8",
    )

    async def remote_addr(source: str, forwarded_for: str) -> str:
        """The remote_addr of the pre-create event of a POST from ``source``."""
        count = len(receiver.received)
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            headers = {**TUS, "Upload-Length": "1", "X-Forwarded-For": forwarded_for}
            async with session.post(server.url, headers=headers) as response:
                assert response.status == 201, await response.text()
        # A blocking event: asked before the answer.
        assert len(receiver.received) == count + 1
        return str(receiver.received[-1].json["request"]["remote_addr"])

    # From the trusted proxy: the rightmost hop that is no trusted proxy, not the
    # leftmost, which the client wrote itself.
    assert await remote_addr("127.0.0.1", "198.51.100.7, 203.0.113.9") == "203.0.113.9"
    assert await remote_addr("127.0.0.1", "203.0.113.9, 10.1.2.3") == "203.0.113.9"
    # From a peer that is no trusted proxy: the peer, whatever it says.
    assert await remote_addr("127.0.0.2", "203.0.113.9") == "127.0.0.2"


async def test_an_unreachable_receiver_fails_closed_with_503_or_open_when_told(
    make_client: ClientFactory, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    client = await make_client(hooks_url=nobody)
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    line = await assert_hook_failed(response, caplog, "pre-create hook failed", nobody,
                                    "cannot be reached", "POST /files/")
    assert "\n" not in line
    assert data_files(settings) == []

    open_client = await make_client(hooks_url=nobody, hooks_fail_open=True)
    assert (await open_client.post("/files/", headers={**TUS, "Upload-Length": "1"})).status == 201


@pytest.mark.e2e
async def test_command_hooks_get_the_event_on_stdin_and_answer_on_stdout(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "hook.log"
    script = tmp_path / "hook.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "event = json.load(sys.stdin)\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(json.dumps([sys.argv[1:], os.environ['HOOK_NAME'], os.environ['HOOK_ID'],"
        " event]) + '\\n')\n"
        "if event['upload']['metadata'].get('filename') == 'bad.exe':\n"
        "    print(json.dumps({'reject': {'status': 415, 'body': 'no executables'}}))\n"
        "if event['upload']['metadata'].get('filename') == 'crash':\n"
        "    sys.exit('hook crashed on purpose')\n"
    )
    script.chmod(0o755)
    client = await make_client(hooks_command=str(script), hooks_events="pre-create,post-finish")

    bad = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "1", "Upload-Metadata": metadata(filename="bad.exe")},
    )
    assert bad.status == 415 and await bad.text() == "no executables"
    crash = await client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "1", "Upload-Metadata": metadata(filename="crash")},
    )
    await assert_hook_failed(crash, caplog, f"{script} exited with status 1: hook crashed on purpose")
    good = await client.post("/files/", data=b"x", headers={**PATCH_HEADERS, "Upload-Length": "1"})
    assert good.status == 201

    def lines() -> list[Any]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    calls = await poll(lambda: len(lines()) == 4 and lines(), "the post-finish command")
    assert [(argv, name) for argv, name, _, _ in calls] == [
        (["pre-create"], "pre-create"),
        (["pre-create"], "pre-create"),
        (["pre-create"], "pre-create"),
        (["post-finish"], "post-finish"),
    ]
    for _, name, hook_id, event in calls:
        assert event["type"] == name and event["id"] == hook_id
    assert calls[3][3]["upload"]["id"] == upload_id(path_of(good))


async def test_in_process_python_hooks(aiohttp_client: Any, settings: Settings) -> None:
    seen: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def hooks(event: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(event)
        if event["type"] == "pre-create":
            if event["request"]["headers"].get("Authorization") != "Bearer ok":
                return {"reject": {"status": 401, "body": "log in first"}}
            return {"change": {"metadata": {"checked": "yes"}}}
        if event["type"] == "post-finish":
            finished.set()
        return None

    client = await aiohttp_client(create_app(settings, hooks=hooks))
    refused = await client.post("/files/", headers={**TUS, "Upload-Length": "2"})
    assert refused.status == 401 and await refused.text() == "log in first"
    response = await client.post(
        "/files/",
        data=b"hi",
        headers={**PATCH_HEADERS, "Upload-Length": "2", "Authorization": "Bearer ok"},
    )
    assert response.status == 201
    await asyncio.wait_for(finished.wait(), 10)
    finish = seen[-1]
    assert finish["upload"]["metadata"] == {"checked": "yes"} and finish["upload"]["offset"] == 2
    names = [e["type"] for e in seen]
    assert [n for n in names if n.startswith("pre-")] == ["pre-create", "pre-create", "pre-finish"]
    assert [n for n in names if n.startswith("post-")] == [
        "post-create",
        "post-receive",
        "post-finish",
    ]


async def test_python_hooks_from_the_settings(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_hooks.py").write_text(
        "async def hook(event):\n"
        "    if event['type'] == 'pre-create':\n"
        "        return {'reject': {'status': 451, 'body': 'not here'}}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    client = await make_client(hooks_python="my_hooks:hook")
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert response.status == 451 and await response.text() == "not here"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"hooks_url": "http://127.0.0.1:1/", "hooks_command": "/bin/true"},
            "hooks_url and hooks_command",
        ),
        ({"hooks_python": "no_such_module_here:hook"}, "cannot load hooks_python"),
        ({"hooks_python": "json"}, "module:attribute"),
        ({"hooks_python": "json:__doc__"}, "not callable"),
        ({"hooks_command": "/nonexistent/hook"}, "not an executable file"),
        ({"hooks_url": "http://127.0.0.1:1/", "hooks_signing": "standard"},
         "hooks_signing = standard needs a hooks_secret"),
        ({"hooks_url": "http://127.0.0.1:1/", "hooks_signing": "both",
          "hooks_secret": "whsec_not base64!"}, "whsec_ but what follows is not base64"),
    ],
)
def test_hook_settings_that_cannot_work_are_config_errors(
    settings: Settings, changes: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app(settings.with_values(**changes))
