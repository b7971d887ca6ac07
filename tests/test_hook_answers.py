"""Every answer a blocking hook can give is understood or refused with 503 (the log says
"invalid answer" and why):
statuses that are no refusal, JSON without one meaning, answers too long to hold, headers
that would break the response; over HTTP (real receivers on loopback), commands and
in-process hooks. The tus client never gets a status other than a 4xx or 5xx from a hook,
and nothing is created for an invalid answer."""

from __future__ import annotations

import asyncio
import base64
import math
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.hooks import RawReceiver, Received, Receiver, assert_hook_failed
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    assert_one_line_error,
    create_upload,
    upload_id,
)
from support.storage import data_files
from support.waiting import poll

from server.app import create_app
from server.config import Settings
from server.context import CONTEXT
from server.hooks import MAX_ANSWER_SIZE

CREATE = {**TUS, "Upload-Length": "3"}


def http_answer(status_line: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status_line}", *headers, "Connection: close"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


InvalidCheck = Callable[[aiohttp.ClientResponse, Any, str], Awaitable[None]]


@pytest.fixture
def assert_invalid(caplog: pytest.LogCaptureFixture, settings: Settings) -> InvalidCheck:
    """``await assert_invalid(response, client, why)``: the answer was invalid (503, the log
    says why) and nothing was created."""

    async def check(response: aiohttp.ClientResponse, client: Any, why: str = "") -> None:
        await assert_hook_failed(response, caplog, "invalid answer", why)
        assert data_files(settings) == []
        assert await client.app[CONTEXT].store.hook_events() == []

    return check


@pytest.mark.parametrize(
    "answer",
    [
        http_answer("101 Switching Protocols", "Upgrade: websocket"),
        http_answer("302 Found", "Location: http://127.0.0.1:1/elsewhere"),
        http_answer("304 Not Modified"),
        http_answer("399 Whatever", body=b"odd"),
        http_answer("600 Beyond", body=b"odd"),
        http_answer("999 Beyond", body=b"odd"),
    ],
    ids=["101", "302", "304", "399", "600", "999"],
)
@pytest.mark.parametrize("fail_open", [False, True], ids=["closed", "fail_open"])
async def test_a_webhook_status_that_is_no_refusal_is_an_invalid_answer(
    assert_invalid: InvalidCheck, make_client: ClientFactory, raw_receiver: RawReceiver,
    answer: bytes, fail_open: bool,
) -> None:
    raw_receiver.answer = answer
    client = await make_client(hooks_url=raw_receiver.url, hooks_fail_open=fail_open)
    response = await client.post("/files/", headers=CREATE)
    status = answer.split(b" ")[1].decode()
    await assert_invalid(
        response, client, f"HTTP status {status} is neither 2xx nor 400 to 599"
    )
    assert raw_receiver.requests == 1


@pytest.mark.parametrize(
    ("event", "answer_to"),
    [("pre-access", "HEAD"), ("pre-access", "GET"), ("pre-finish", "PATCH"),
     ("pre-terminate", "DELETE")],
)
async def test_every_blocking_event_refuses_a_redirect_as_invalid(
    make_client: ClientFactory, raw_receiver: RawReceiver, event: str, answer_to: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_client(hooks_url=raw_receiver.url, hooks_events=event)
    path = await create_upload(client, 3)
    raw_receiver.answer = http_answer("302 Found", "Location: http://127.0.0.1:1/x")
    response = await client.request(
        answer_to, path, data=b"abc" if answer_to == "PATCH" else None,
        headers={**PATCH_HEADERS, "Upload-Offset": "0"} if answer_to == "PATCH" else TUS,
    )
    why = f"{event} hook gave an invalid answer"
    if answer_to == "HEAD":
        assert response.status == 503
        assert any(why in r.getMessage() for r in caplog.records)
    else:
        await assert_hook_failed(response, caplog, why, raw_receiver.url)
    upload = await client.app[CONTEXT].store.get(upload_id(path))
    assert upload is not None and not upload.is_complete


async def test_a_refusal_is_passed_on_with_a_content_type_only_if_it_is_a_header_value(
    assert_invalid: InvalidCheck, make_client: ClientFactory, raw_receiver: RawReceiver
) -> None:
    client = await make_client(hooks_url=raw_receiver.url)
    raw_receiver.answer = http_answer(
        "451 Unavailable", "Content-Type: text/x-reason", body=b"not here"
    )
    response = await client.post("/files/", headers=CREATE)
    assert response.status == 451 and await response.read() == b"not here"
    assert response.headers["Content-Type"] == "text/x-reason"
    for content_type in (b"text/plain; x=\xff\xfe", b"text/plain; x=\xc3\xa9"):
        raw_receiver.answer = (
            b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 2\r\n"
            b"Content-Type: " + content_type + b"\r\n\r\nno"
        )
        response = await client.post("/files/", headers=CREATE)
        await assert_invalid(response, client, "Content-Type")


def nested(depth: int) -> bytes:
    return b'{"reject": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (nested(200_000), "nested too deeply"),
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b"[]", "not a JSON object"),
        (b'"go on"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"12", "not a JSON object"),
        (b"{", "not JSON"),
        (b"{} {}", "not JSON"),
        (b'{"reject": NaN}', "NaN is not JSON"),
        (b'{"reject": {"status": Infinity}}', "Infinity is not JSON"),
        (b'{"reject": {"status": -Infinity}}', "-Infinity is not JSON"),
        (b'{"reject": {"status": 403}, "reject": null}', "'reject' appears twice"),
        (b'{"change": {"id": "a", "id": "b"}}', "'id' appears twice"),
        (b'{"reject": {"body": "\xff\xfe"}}', "not UTF-8"),
        ('{"reject": {"body": "x"}}'.encode("utf-16"), "not UTF-8"),
        (b'\xef\xbb\xbf{"reject": {}}', "not JSON"),
        (b'{"reject": {"body": "\\ud800"}}', "reject.body must be a string"),
        (b'{"change": {"metadata": {"name": "\\udfff"}}}', "change.metadata must map"),
        (b'{"reject": {"status": ' + b"4" * 5000 + b"}}", "not JSON"),
        (b'{"reject": {"status": 1e999}}', "reject.status must be an integer from 400 to 599"),
        (b'{"reject": {"status": 403.0}}', "reject.status must be an integer"),
        (b'{"reject": {"status": true}}', "reject.status must be an integer"),
        (b'{"reject": {"status": "403"}}', "reject.status must be an integer"),
        (b'{"reject": {"status": 200}}', "reject.status must be an integer from 400 to 599"),
        (b'{"reject": {"status": 101}}', "reject.status must be an integer from 400 to 599"),
        (b'{"reject": {"status": 302}}', "reject.status must be an integer from 400 to 599"),
        (b'{"reject": {"status": 600}}', "reject.status must be an integer from 400 to 599"),
        (b'{"reject": {"body": 5}}', "reject.body must be a string"),
        (b'{"reject": []}', "reject must be an object"),
        (b'{"reject": {"headers": []}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": 5}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": "a\\r\\nX-B: b"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": "a\\u0000b"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": "caf\\u00e9"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": "\\ud800"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"Bad Name": "x"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"": "x"}}}', "reject.headers must map"),
        (b'{"reject": {"headers": {"X-A": "1", "x-a": "2"}}}', "names a header twice"),
        (b'{"change": []}', "change must be an object"),
        (b'{"change": {"id": 7}}', "change.id is not a valid upload id"),
        (b'{"change": {"metadata": {"a b": "x"}}}', "Upload-Metadata keys"),
        (b'{"change": {"metadata": {"name": 1}}}', "change.metadata must map"),
        (b'{"pad": "' + b"x" * MAX_ANSWER_SIZE + b'"}', f"longer than {MAX_ANSWER_SIZE} bytes"),
        (b'{"RejectUpload": true}', "unknown key 'RejectUpload'"),
        (b'{"reject": null, "rejected": true}', "unknown key 'rejected'"),
        (b'{"reject": {"status": 403, "reason": "no"}}', "unknown key 'reason' in reject"),
        (b'{"change": {"ID": "invoice-42"}}', "unknown key 'ID' in change"),
    ],
)
async def test_a_json_answer_without_one_meaning_is_invalid(
    assert_invalid: InvalidCheck, make_client: ClientFactory, receiver: Receiver, body: bytes,
    why: str,
) -> None:
    receiver.respond = lambda r: web.Response(body=body, content_type="application/json")
    client = await make_client(hooks_url=receiver.url, hooks_fail_open=True)
    response = await client.post("/files/", headers=CREATE)
    await assert_invalid(response, client, why)


async def test_a_tusd_answer_to_the_aiotusd_format_refuses_instead_of_allowing(
    assert_invalid: InvalidCheck, make_client: ClientFactory, receiver: Receiver
) -> None:
    """A receiver written for tusd answers ``{"RejectUpload": true}`` with a 200: keys the
    format does not have make the answer invalid (503), never an agreement. Post events'
    answers are not read: the same answer still delivers them."""
    client = await make_client(
        hooks_url=receiver.url, hooks_events="pre-create,post-create,pre-terminate"
    )
    tusd_answer = {"RejectUpload": True, "RejectTermination": True,
                   "HTTPResponse": {"StatusCode": 403, "Body": "no"}}
    creating = [False]

    def respond(r: Received) -> web.Response:
        if r.name == "pre-create" and creating[0]:
            return web.Response()
        return web.json_response(tusd_answer)

    receiver.respond = respond
    response = await client.post("/files/", headers=CREATE)
    await assert_invalid(response, client, "unknown key")

    creating[0] = True
    path = await create_upload(client, 3)
    await receiver.wait(lambda: receiver.named("post-create"), "post-create")
    deleted = await client.delete(path, headers=TUS)
    await assert_one_line_error(deleted, 503)
    assert (await client.head(path, headers=TUS)).status == 200

    async def delivered() -> bool:
        return await client.app[CONTEXT].store.hook_events() == []

    await poll(delivered, "the post-create delivered")
    assert len(receiver.named("post-create")) == 1


async def test_an_endless_answer_is_read_no_further_than_its_bound(
    assert_invalid: InvalidCheck, make_client: ClientFactory, raw_receiver: RawReceiver
) -> None:
    """A valid JSON answer that never ends: the server stops reading after the bound."""
    sent = 0
    chunk = b"x" * 65536
    hung_up = asyncio.Event()

    async def endless(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b'Transfer-Encoding: chunked\r\n\r\n11\r\n{"pad": "xxxxxxx\r\n')
        try:
            for _ in range(4096):  # 256 MiB at most
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            hung_up.set()
            raise

    raw_receiver.answer = endless
    client = await make_client(hooks_url=raw_receiver.url)
    response = await client.post("/files/", headers=CREATE)
    await assert_invalid(response, client, f"longer than {MAX_ANSWER_SIZE} bytes")
    await asyncio.wait_for(hung_up.wait(), 10)
    assert sent < 64 * MAX_ANSWER_SIZE


async def test_headers_that_aiotusd_sets_itself_are_left_out_of_a_rejection(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    """Framing, connection and tus headers from a hook would contradict the response."""
    client = await make_client(hooks_url=receiver.url, hooks_events="pre-finish")
    path = await create_upload(client, 3)
    own = {
        "Content-Length": "999", "Transfer-Encoding": "chunked", "Connection": "close",
        "Keep-Alive": "timeout=1", "Upgrade": "h2c", "TE": "trailers", "Trailer": "X-T",
        "Content-Encoding": "gzip", "Proxy-Connection": "close",
        "Tus-Resumable": "0.2.2", "tus-version": "0.2.2", "Upload-Offset": "999",
        "upload-length": "999",
    }
    receiver.respond = lambda r: web.json_response(
        {"reject": {"status": 422, "body": "virus found",
                    "headers": {**own, "Retry-After": "5", "X-Scan": "eicar"}}}
    )
    # The second PATCH (no bytes, at the end) asks pre-finish again on the same connection.
    for offset, chunk in ((0, b"abc"), (3, b"")):
        patched = await client.patch(
            path, data=chunk, headers={**PATCH_HEADERS, "Upload-Offset": str(offset)}
        )
        assert patched.status == 422 and await patched.read() == b"virus found"
        assert patched.headers["Retry-After"] == "5" and patched.headers["X-Scan"] == "eicar"
        assert patched.headers["Tus-Resumable"] == "1.0.0"
        assert patched.headers.getall("Upload-Offset") == ["3"]
        assert patched.headers["Content-Length"] == str(len(b"virus found"))
        for name in ("Transfer-Encoding", "Keep-Alive", "Upgrade", "TE", "Trailer",
                     "Content-Encoding", "Proxy-Connection", "Tus-Version", "Upload-Length"):
            assert name not in patched.headers, name
        assert patched.headers.get("Connection", "keep-alive").lower() == "keep-alive"
    head = await client.head(path, headers=TUS)
    assert head.headers["Upload-Offset"] == "3"


def command_hook(tmp_path: Path) -> str:
    """A command hook whose answer is chosen by the upload's filename metadata."""
    script = tmp_path / "hook.py"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "event = json.load(sys.stdin)\n"
        "name = event['upload']['metadata'].get('filename')\n"
        "if name == 'flood':\n"
        f"    sys.stdout.write(json.dumps({{'pad': 'x' * {2 * MAX_ANSWER_SIZE}}}))\n"
        "elif name == 'deep':\n"
        "    sys.stdout.write('[' * 200000 + ']' * 200000)\n"
        "elif name == 'nan':\n"
        "    sys.stdout.write('{\"reject\": {\"status\": NaN}}')\n"
        "elif name == 'redirect':\n"
        "    sys.stdout.write('{\"reject\": {\"status\": 302}}')\n"
        "elif name == 'noisy':\n"
        f"    sys.stderr.write('x' * {4 * MAX_ANSWER_SIZE} + '\\nthe last word\\n')\n"
        "    sys.exit(3)\n"
    )
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("filename", "status", "why"),
    [
        ("flood", 503, f"invalid answer: longer than {MAX_ANSWER_SIZE} bytes"),
        ("deep", 503, "invalid answer: JSON nested too deeply"),
        ("nan", 503, "invalid answer: NaN is not JSON"),
        ("redirect", 503, "invalid answer: reject.status must be an integer from 400 to 599"),
        ("noisy", 201, ""),  # fails open: it did not answer; its stderr is bounded
    ],
)
@pytest.mark.e2e
async def test_command_hook_answers_are_bounded_and_checked(
    assert_invalid: InvalidCheck, make_client: ClientFactory, tmp_path: Path,
    filename: str, status: int, why: str,
) -> None:
    client = await make_client(
        hooks_command=command_hook(tmp_path), hooks_events="pre-create", hooks_fail_open=True
    )
    value = base64.b64encode(filename.encode()).decode()
    response = await client.post(
        "/files/", headers={**CREATE, "Upload-Metadata": f"filename {value}"}
    )
    assert response.status == status, await response.text()
    if status == 503:
        await assert_invalid(response, client, why)


@pytest.mark.e2e
async def test_a_failing_command_is_named_by_the_last_line_of_a_long_stderr(
    make_client: ClientFactory, tmp_path: Path, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await make_client(hooks_command=command_hook(tmp_path), hooks_events="pre-create")
    value = base64.b64encode(b"noisy").decode()
    response = await client.post(
        "/files/", headers={**CREATE, "Upload-Metadata": f"filename {value}"}
    )
    line = await assert_hook_failed(response, caplog)
    assert line.endswith("exited with status 3: the last word (hook-failed)")
    assert data_files(settings) == []


def deep_dict(depth: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for _ in range(depth):
        document = {"a": document}
    return document


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"reject": {"status": 302}}, "reject.status must be an integer from 400 to 599"),
        ({"reject": {"status": 101}}, "reject.status must be an integer from 400 to 599"),
        ({"reject": {"status": math.nan}}, "no JSON form"),
        ({"reject": {"body": "\ud800"}}, "reject.body must be a string"),
        ({"reject": {"headers": {"Set-Cookie": "a=\nb"}}}, "reject.headers must map"),
        ({"change": {"metadata": {"name": "\udcff"}}}, "change.metadata must map"),
        ({"change": {"metadata": {1: "x", "1": "y"}}}, "'1' appears twice"),
        ({"reject": {1, 2}}, "no JSON form"),
        ({"reject": b"bytes"}, "no JSON form"),
        (deep_dict(100_000), "no JSON form"),
        (["reject"], "not a JSON object"),
        ("go on", "not a JSON object"),
        ({"pad": "x" * MAX_ANSWER_SIZE}, f"longer than {MAX_ANSWER_SIZE} bytes"),
    ],
)
async def test_python_hook_answers_are_checked_and_never_let_through(
    assert_invalid: InvalidCheck, aiohttp_client: Any, settings: Settings, answer: Any,
    why: str,
) -> None:
    """Even with hooks_fail_open: an answer is not a failure to answer."""

    async def hook(event: dict[str, Any]) -> Any:
        return answer if event["type"] == "pre-create" else None

    app = create_app(settings.with_values(hooks_fail_open=True), hooks=hook)
    client = await aiohttp_client(app)
    response = await client.post("/files/", headers=CREATE)
    await assert_invalid(response, client, why)
