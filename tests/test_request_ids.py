"""Request ids: honoured or made, sent back, and in the access log and JSON log lines."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from support.http import PATCH_HEADERS, TUS, create_upload
from support.storage import data_file
from support.waiting import poll

HEX_ID = re.compile(r"[0-9a-f]{32}")


async def test_an_incoming_request_id_is_sent_back(client):
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "2", "X-Request-ID": "trace-7f3a:1/2"}
    )
    assert response.headers["X-Request-ID"] == "trace-7f3a:1/2"


async def test_without_one_each_request_gets_its_own(client):
    path = await create_upload(client, 2)
    ids = []
    for _ in range(2):
        response = await client.head(path, headers=TUS)
        assert HEX_ID.fullmatch(response.headers["X-Request-ID"])
        ids.append(response.headers["X-Request-ID"])
    assert ids[0] != ids[1]


async def test_request_ids_are_sanitised_and_bounded(client):
    cases = {"a b<c>\"d'": "abcd", "x" * 500: "x" * 128}
    for sent, kept in cases.items():
        response = await client.options("/files/", headers={"X-Request-ID": sent})
        assert response.headers["X-Request-ID"] == kept
    # Nothing usable left: a fresh id instead.
    response = await client.options("/files/", headers={"X-Request-ID": "<>\"'"})
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


async def test_errors_and_downloads_carry_the_id_too(client):
    refused = await client.post("/files/", headers={"X-Request-ID": "r-412"})
    assert (refused.status, refused.headers["X-Request-ID"]) == (412, "r-412")
    path = await create_upload(client, 2)
    await client.patch(path, data=b"ok", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    download = await client.get(path, headers={"X-Request-ID": "r-get"})
    assert (download.status, download.headers["X-Request-ID"]) == (200, "r-get")


@pytest.mark.e2e
async def test_the_id_is_in_the_text_access_log(server_process):
    server = server_process()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{server.url}",
            headers={**TUS, "Upload-Length": "1", "X-Request-ID": "from-the-proxy-1"},
        ) as response:
            assert response.status == 201
    await poll(
        lambda: re.search(
            r"POST /files/ 201 upload=- received=0 duration=\S+ "
            r"request=from-the-proxy-1$",
            server.log(),
            re.MULTILINE,
        ),
        "the access-log line with the request id",
    )


@pytest.mark.e2e
async def test_json_logs_carry_the_id_on_every_line_of_the_request(server_process):
    server = server_process("--log-format", "json")
    async with aiohttp.ClientSession() as session:
        created = await session.post(server.url, headers={**TUS, "Upload-Length": "20"})
        url = created.headers["Location"]
        await session.patch(url, data=b"x" * 10, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        data_file(server, url).unlink()  # the PATCH below fails and logs why
        broken = await session.patch(
            url,
            data=b"y",
            headers={**PATCH_HEADERS, "Upload-Offset": "10", "X-Request-ID": "broken-patch"},
        )
        assert broken.status == 500

    def lines() -> list[dict]:
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return [entry for entry in entries if entry.get("request_id") == "broken-patch"]

    entries = await poll(lambda: len(lines()) >= 2 and lines(), "two log lines of the request")
    failure, access = entries
    assert failure["level"] == "error" and "failed" in failure["message"]
    assert access["logger"] == "aiohttp.access" and access["status"] == 500
    assert access["message"].endswith("request=broken-patch error=storage-failed")
    assert access["error"] == "storage-failed"
