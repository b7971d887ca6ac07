"""``hooks_format = "tusd"``: a receiver written to tusd v2's documented hook JSON (the
hook request, and the HTTPResponse, RejectUpload, ChangeFileInfo, RejectTermination and
StopUpload of its response), real over HTTP on loopback, keeps working with aiotusd."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from support.hooks import Received, Receiver, assert_hook_failed, verify
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    create_upload,
    path_of,
    upload_id,
)
from support.storage import data_files
from support.waiting import poll

from server.app import create_app
from server.config import Settings
from server.context import CONTEXT
from server.protocol import parse_metadata

TUSD = {"hooks_format": "tusd"}
CREATE = {**TUS, "Upload-Length": "3"}
REJECTED = b"ERR_UPLOAD_REJECTED: upload creation has been rejected by server\n"


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def upload_of(received: Received) -> dict[str, Any]:
    return received.json["Event"]["Upload"]  # type: ignore[no-any-return]


def answer(document: dict[str, Any]) -> Any:
    return lambda r: web.json_response(document)


async def test_the_hook_request_is_tusds(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(
        **TUSD, hooks_url=receiver.url, hooks_secret="s3cret",
        hooks_events="pre-create,post-create,post-receive,pre-finish,post-finish",
    )
    headers = CIMultiDict([
        *TUS.items(), ("Upload-Length", "5"), ("Upload-Metadata", metadata(filename="a.txt")),
        ("x-lower-case", "v"), ("x-multi", "one"), ("x-multi", "two"),
        ("Authorization", "Bearer t"),
    ])
    response = await client.post("/files/", headers=headers)
    assert response.status == 201
    path = path_of(response)
    uid = upload_id(path)
    patched = await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert patched.status == 204
    await receiver.wait_for_names(
        "pre-create", "post-create", "post-receive", "pre-finish", "post-finish"
    )
    for received in receiver.received:
        document = received.json
        assert set(document) == {"Type", "Event"} and document["Type"] == received.name
        assert set(document["Event"]) == {"Upload", "HTTPRequest"}
        assert verify("s3cret", received) and received.headers["Hook-Id"]
    pre_create, post_create = receiver.named("pre-create")[0], receiver.named("post-create")[0]
    assert upload_of(pre_create) == {
        "ID": "", "Size": 5, "SizeIsDeferred": False, "Offset": 0,
        "MetaData": {"filename": "a.txt"}, "IsPartial": False, "IsFinal": False,
        "PartialUploads": None, "Storage": None,
    }
    assert upload_of(post_create)["ID"] == uid
    assert upload_of(post_create)["Storage"] == {
        "Type": "filestore", "Path": str(Path(settings.storage.data_dir).absolute() / uid),
    }
    assert upload_of(receiver.named("post-finish")[0])["Offset"] == 5
    http = pre_create.json["Event"]["HTTPRequest"]
    assert http["Method"] == "POST" and http["URI"] == "/files/"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", http["RemoteAddr"]), http["RemoteAddr"]
    header = http["Header"]
    # Every header, under Go's canonical name, its values in a list, in order.
    assert header["X-Lower-Case"] == ["v"]
    assert header["X-Multi"] == ["one", "two"]
    assert header["Authorization"] == ["Bearer t"]
    assert header["Tus-Resumable"] == ["1.0.0"] and header["Upload-Length"] == ["5"]
    assert header["Host"] == [f"127.0.0.1:{client.port}"]
    assert all(name == name.title() for name in header), sorted(header)
    patch_request = receiver.named("pre-finish")[0].json["Event"]["HTTPRequest"]
    assert patch_request["Method"] == "PATCH" and patch_request["URI"] == path
    assert patch_request["Header"]["Upload-Offset"] == ["0"]


async def test_deferred_lengths_and_concatenation_as_tusd_tells_them(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_events="pre-create,post-create")
    await create_upload(client, **{"Upload-Defer-Length": "1"})
    parts = []
    for _ in range(2):
        part = await create_upload(client, 2, **{"Upload-Concat": "partial"})
        parts.append(upload_id(part))
    final = await create_upload(
        client, **{"Upload-Concat": "final;" + " ".join(f"/files/{p}" for p in parts)}
    )
    await receiver.wait_for_names(*["pre-create"] * 4, *["post-create"] * 4)
    deferred, *partials, final_event = [upload_of(r) for r in receiver.named("post-create")]
    assert deferred["Size"] == 0 and deferred["SizeIsDeferred"] is True
    for partial in partials:
        assert partial["IsPartial"] and not partial["IsFinal"]
        assert partial["PartialUploads"] is None and partial["SizeIsDeferred"] is False
    assert final_event["ID"] == upload_id(final)
    assert final_event["IsFinal"] and not final_event["IsPartial"]
    assert final_event["PartialUploads"] == parts and final_event["Size"] == 4


@pytest.mark.s3
@pytest.mark.parametrize("storage", ["s3"], indirect=True)
async def test_s3_storage_is_told_as_tusds_s3store(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_events="post-create")
    uid = upload_id(await create_upload(client, 3))
    (created,) = await receiver.wait(lambda: receiver.named("post-create"), "post-create")
    assert upload_of(created)["Storage"] == {
        "Type": "s3store", "Bucket": settings.s3.bucket, "Key": settings.s3.prefix + uid,
    }


async def test_reject_upload_answers_tusds_error_or_the_hooks_http_response(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(**TUSD, hooks_url=receiver.url)
    receiver.respond = answer({"RejectUpload": True})
    response = await client.post("/files/", headers=CREATE)
    assert response.status == 400 and await response.read() == REJECTED
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"

    receiver.respond = answer({
        "HTTPResponse": {"StatusCode": 403, "Body": '{"message":"authentication failed"}',
                         "Header": {"Content-Type": "application/json", "X-Why": "token"}},
        "RejectUpload": True,
    })
    response = await client.post("/files/", data=b"abc", headers={**PATCH_HEADERS,
                                                                   "Upload-Length": "3"})
    assert response.status == 403
    assert await response.read() == b'{"message":"authentication failed"}'
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Why"] == "token"
    # Go reads keys whatever their case; a body alone keeps tusd's status.
    receiver.respond = answer({"rejectUpload": True, "httpResponse": {"body": "no"}})
    response = await client.post("/files/", headers=CREATE)
    assert response.status == 400 and await response.read() == b"no"
    assert data_files(settings) == []
    assert await client.app[CONTEXT].store.hook_events() == []


async def test_an_in_process_hook_gets_and_answers_tusds_json(
    aiohttp_client: Any, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []

    async def hook(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(event)
        return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 451, "Body": "not here"}}

    client = await aiohttp_client(create_app(settings.with_values(**TUSD), hooks=hook))
    response = await client.post("/files/", headers=CREATE)
    assert response.status == 451 and await response.read() == b"not here"
    assert [event["Type"] for event in seen] == ["pre-create"]
    assert seen[0]["Event"]["Upload"]["Size"] == 3


async def test_change_file_info_sets_the_id_and_metadata(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_events="pre-create,post-create")
    receiver.respond = lambda r: web.json_response(
        {"ChangeFileInfo": {"ID": "invoice-42", "MetaData": {"filename": "renamed.txt",
                                                             "owner": "alice"}}}
        if r.name == "pre-create" else {}
    )
    response = await client.post(
        "/files/", headers={**CREATE, "Upload-Metadata": metadata(filename="orig.txt")}
    )
    assert response.status == 201
    assert response.headers["Location"].endswith("/files/invoice-42")
    head = await client.head("/files/invoice-42", headers=TUS)
    assert parse_metadata(head.headers["Upload-Metadata"]) == {
        "filename": b"renamed.txt", "owner": b"alice",
    }
    (created,) = await receiver.wait(lambda: receiver.named("post-create"), "post-create")
    assert upload_of(created)["ID"] == "invoice-42"
    assert upload_of(created)["MetaData"] == {"filename": "renamed.txt", "owner": "alice"}


async def test_reject_termination_keeps_the_upload(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client(**TUSD, hooks_url=receiver.url,
                               hooks_events="pre-terminate,post-terminate")
    path = await create_upload(client, 4)
    receiver.respond = answer({"RejectTermination": True})
    deleted = await client.delete(path, headers=TUS)
    assert deleted.status == 400
    assert await deleted.read() == (
        b"ERR_UPLOAD_TERMINATION_REJECTED: upload termination has been rejected by server\n"
    )
    receiver.respond = answer({"RejectTermination": True,
                               "HTTPResponse": {"StatusCode": 423, "Body": "in use"}})
    deleted = await client.delete(path, headers=TUS)
    assert deleted.status == 423 and await deleted.read() == b"in use"
    assert (await client.head(path, headers=TUS)).status == 200
    assert await client.app[CONTEXT].store.hook_events() == []

    receiver.respond = answer({"RejectTermination": False})
    assert (await client.delete(path, headers=TUS)).status == 204
    (gone,) = await receiver.wait(lambda: receiver.named("post-terminate"), "post-terminate")
    assert upload_of(gone)["ID"] == upload_id(path)


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"RejectUpload": True, "HTTPResponse": {"StatusCode": 200}}, "does not refuse"),
        ({"RejectUpload": True, "HTTPResponse": {"StatusCode": 204}}, "does not refuse"),
        ({"RejectUpload": True, "HTTPResponse": {"StatusCode": 302}}, "StatusCode must be"),
        ({"HTTPResponse": {"StatusCode": 101}}, "StatusCode must be"),
        ({"HTTPResponse": {"StatusCode": 600}}, "StatusCode must be"),
        ({"HTTPResponse": {"StatusCode": "403"}}, "StatusCode must be"),
        ({"RejectUpload": "yes"}, "RejectUpload must be true or false"),
        ({"RejectUpload": True, "Reason": "x"}, "unknown key 'Reason'"),
        ({"reject": {"status": 403}}, "unknown key 'reject'"),
        ({"HTTPResponse": {"Status": 403}}, "unknown key 'Status' in HTTPResponse"),
        ({"RejectUpload": False, "rejectupload": True}, "RejectUpload is given twice"),
        ({"ChangeFileInfo": {"Storage": {"Path": "/etc/x"}}}, "Storage is not supported"),
        ({"ChangeFileInfo": {"ID": "../etc"}}, "ChangeFileInfo.ID is not a valid upload id"),
        ({"ChangeFileInfo": {"MetaData": {"a": 1}}}, "ChangeFileInfo.MetaData must map"),
        ({"HTTPResponse": {"StatusCode": 403, "Header": {"X-A": "a\nb"}}}, "Header must map"),
    ],
)
async def test_a_tusd_answer_that_is_not_fully_understood_refuses_with_503(
    make_client: ClientFactory, receiver: Receiver, settings: Settings,
    caplog: pytest.LogCaptureFixture, document: dict[str, Any], why: str,
) -> None:
    receiver.respond = answer(document)
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_fail_open=True)
    response = await client.post("/files/", headers=CREATE)
    await assert_hook_failed(response, caplog, "invalid answer", why, receiver.url)
    assert data_files(settings) == []


@pytest.mark.parametrize("status", [403, 500])
async def test_a_non_2xx_status_is_the_hooks_failure_as_with_tusd(
    make_client: ClientFactory, receiver: Receiver, settings: Settings,
    caplog: pytest.LogCaptureFixture, status: int,
) -> None:
    """tusd reads a non-2xx status as its hook failing (its body is no answer): never a
    refusal passed on, nor a pass with hooks_fail_open."""
    receiver.respond = lambda r: web.json_response({"RejectUpload": False}, status=status)
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_fail_open=True)
    response = await client.post("/files/", headers=CREATE)
    await assert_hook_failed(response, caplog, f"HTTP status {status}")
    assert data_files(settings) == []


async def test_an_error_status_refuses_pre_finish_and_other_answers_let_it_through(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    """tusd has no flag to refuse pre-finish: an HTTPResponse with a 4xx does it here (the
    upload keeps its bytes, unfinished); one with a 2xx, or headers alone, goes on."""
    client = await make_client(**TUSD, hooks_url=receiver.url, hooks_events="pre-finish")
    path = await create_upload(client, 3)
    receiver.respond = answer({"HTTPResponse": {"StatusCode": 422, "Body": "virus found"}})
    patched = await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert patched.status == 422 and await patched.read() == b"virus found"
    assert patched.headers["Upload-Offset"] == "3"
    receiver.respond = answer({"HTTPResponse": {"StatusCode": 200, "Header": {"Link": "<x>"}},
                               "StopUpload": True})
    patched = await client.patch(path, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert patched.status == 204
    assert await (await client.get(path)).read() == b"abc"


async def _stopped_patch(client: Any, path: str) -> tuple[int, bytes, dict[str, str]]:
    """PATCH a long body in chunks paced like a slow uplink's, for the hook to stop it at
    its first post-receive. A client that goes on sending gets the answer all the same."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(500):  # 5 s of body at most
            yield b"x" * 1024
            await asyncio.sleep(0.01)

    response = await client.patch(
        path, data=body(), headers={**PATCH_HEADERS, "Upload-Offset": "0"}
    )
    return response.status, await response.read(), dict(response.headers)


async def test_stop_upload_stops_a_streaming_patch_and_removes_the_upload(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client(
        **TUSD, hooks_url=receiver.url, hooks_events="post-receive,post-terminate",
        hooks_progress_interval=0, commit_bytes=1,
    )
    stop = {
        "HTTPResponse": {"StatusCode": 400,
                         "Body": '{"message":"associated project is no longer available"}',
                         "Header": {"Content-Type": "application/json"}},
        "StopUpload": True,
    }
    receiver.respond = lambda r: web.json_response(stop if r.name == "post-receive" else {})
    path = await create_upload(client, 10 * 1024 * 1024)
    status, text, headers = await _stopped_patch(client, path)
    assert status == 400, text
    assert text == b'{"message":"associated project is no longer available"}'
    assert headers["Content-Type"] == "application/json" and "Upload-Offset" not in headers
    # Terminated as a DELETE would: gone for its client, its bytes removed, post-terminate.
    assert (await client.head(path, headers=TUS)).status == 410
    patched = await client.patch(path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert patched.status == 410
    assert data_files(settings) == []
    (gone,) = await receiver.wait(lambda: receiver.named("post-terminate"), "post-terminate")
    assert upload_of(gone)["ID"] == upload_id(path)
    assert upload_of(gone)["Offset"] < 10 * 1024 * 1024

    # Without an HTTPResponse: tusd's own answer.
    receiver.respond = lambda r: web.json_response(
        {"StopUpload": True} if r.name == "post-receive" else {}
    )
    path = await create_upload(client, 10 * 1024 * 1024)
    status, text, headers = await _stopped_patch(client, path)
    assert status == 400 and text == b"ERR_UPLOAD_STOPPED: upload has been stopped by server\n"

    async def outbox_empty() -> bool:
        return await client.app[CONTEXT].store.hook_events() == []

    await poll(outbox_empty, "every event delivered")
