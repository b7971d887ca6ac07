"""expiration extension: Upload-Expires, 410 after expiry, and the sweeper."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import re
import time
from datetime import datetime, timezone

import aiohttp
import pytest
from support.http import PATCH_HEADERS, TUS, create_upload, path_of, upload_id
from support.storage import data_file
from support.waiting import poll, wait_until_past

from server.context import CONTEXT
from server.expiration import sweep

pytestmark = pytest.mark.all_backends

IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def parse_expires(value: str) -> float:
    assert IMF_FIXDATE.fullmatch(value), value
    parsed = email.utils.parsedate_to_datetime(value)
    assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0
    return parsed.timestamp()


async def test_options_advertises_expiration(client):
    response = await client.options("/files/")
    assert "expiration" in response.headers["Tus-Extension"].split(",")


async def test_upload_expires_on_post_patch_and_head(make_client):
    client = await make_client(expiration=3600)
    before = time.time()
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert response.status == 201
    expires = parse_expires(response.headers["Upload-Expires"])
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 1
    path = path_of(response)

    response = await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    patch_expires = parse_expires(response.headers["Upload-Expires"])
    assert patch_expires > time.time()
    assert patch_expires >= expires - 1

    response = await client.head(path, headers=TUS)
    assert parse_expires(response.headers["Upload-Expires"]) == patch_expires

    response = await client.patch(path, data=b"defghij", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    assert "Upload-Expires" not in response.headers
    response = await client.head(path, headers=TUS)
    assert "Upload-Expires" not in response.headers


async def test_completed_upload_on_creation_has_no_expiry(client):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert response.status == 201
    assert "Upload-Expires" not in response.headers
    response = await client.post("/files/", data=b"abc", headers={**PATCH_HEADERS, "Upload-Length": "3"})
    assert response.status == 201
    assert "Upload-Expires" not in response.headers


@pytest.mark.slow
async def test_expired_upload_answers_410(make_client, storage_view):
    client = await make_client(expiration=1)
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    expires = parse_expires(response.headers["Upload-Expires"])
    path = path_of(response)
    stored = await client.app[CONTEXT].store.get(upload_id(path))
    await wait_until_past(stored.expires_at)
    assert time.time() >= expires - 1

    response = await client.head(path, headers=TUS)
    assert response.status == 410
    assert "Upload-Offset" not in response.headers
    assert not storage_view.holds(path)
    response = await client.patch(path, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 410
    response = await client.get(path)
    assert response.status == 410
    response = await client.delete(path, headers=TUS)
    assert response.status == 410


@pytest.mark.slow
async def test_patch_extends_expiry(make_client):
    client = await make_client(expiration=1)
    path = await create_upload(client, 10)
    store = client.app[CONTEXT].store
    ident = upload_id(path)
    first = (await store.get(ident)).expires_at
    await wait_until_past(first - 0.5)
    response = await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    second = (await store.get(ident)).expires_at
    assert second > first
    # Past the first expiry but (by construction) not the second: still alive.
    await wait_until_past(first)
    if time.time() < second:
        response = await client.head(path, headers=TUS)
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "3"
    await wait_until_past(second)
    response = await client.head(path, headers=TUS)
    assert response.status == 410


@pytest.mark.slow
async def test_sweeper_removes_expired_uploads(make_client, storage_view):
    client = await make_client(expiration=1)
    ctx = client.app[CONTEXT]
    expiring = await create_upload(client, 10)
    await client.patch(expiring, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    finished = await create_upload(client, 3)
    await client.patch(finished, data=b"xyz", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert await sweep(ctx) == 0
    assert storage_view.holds(expiring)

    stored = await ctx.store.get(upload_id(expiring))
    await wait_until_past(stored.expires_at)
    assert await sweep(ctx) == 1
    assert not storage_view.holds(expiring)
    assert (await ctx.store.get(upload_id(expiring))).status == "expired"
    response = await client.head(expiring, headers=TUS)
    assert response.status == 410
    assert await sweep(ctx) == 0

    # completed uploads never expire
    assert storage_view.holds(finished)
    response = await client.get(finished)
    assert response.status == 200
    assert await response.read() == b"xyz"
    response = await client.head(finished, headers=TUS)
    assert response.status == 200
    assert "Upload-Expires" not in response.headers


@pytest.mark.slow
async def test_completed_upload_never_expires(make_client):
    client = await make_client(expiration=1)
    path = await create_upload(client, 3)
    store = client.app[CONTEXT].store
    ident = upload_id(path)
    expires = (await store.get(ident)).expires_at
    await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert (await store.get(ident)).expires_at is None
    await wait_until_past(expires)
    assert await sweep(client.app[CONTEXT]) == 0
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "3"
    assert await (await client.get(path)).read() == b"abc"


async def test_gone_tombstones_are_forgotten(make_client):
    client = await make_client(expiration=1, gone_retention=0)
    path = await create_upload(client, 3)
    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await client.head(path, headers=TUS)).status == 410
    ctx = client.app[CONTEXT]
    gone_at = (await ctx.store.get(upload_id(path))).updated_at
    await wait_until_past(gone_at)
    await sweep(ctx)
    assert (await client.head(path, headers=TUS)).status == 404


def test_http_date_format():
    from server.protocol import http_date

    assert http_date(1403712000) == "Wed, 25 Jun 2014 16:00:00 GMT"
    stamp = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_expires(http_date(stamp)) == stamp


@pytest.mark.filesystem_only("its evidence is the file made at creation; S3 makes nothing then")
@pytest.mark.slow
async def test_sweeper_spares_an_upload_a_request_is_writing(make_client, settings):
    client = await make_client(expiration=1)
    ctx = client.app[CONTEXT]
    path = await create_upload(client, 10)
    ident = upload_id(path)
    stored = await ctx.store.get(ident)
    await wait_until_past(stored.expires_at)
    async with ctx.locks.hold(ident) as holder:
        assert await sweep(ctx) == 0
        assert holder.release_requested is False
    assert data_file(settings, path).exists()
    assert await sweep(ctx) == 1
    assert not data_file(settings, path).exists()


DATA = b"0123456789" * 100_000


async def _checksummed_patch_past_its_expiry(make_client, storage_view, go_on):
    """A client, an upload and a PATCH with ``Upload-Checksum`` whose body stops halfway
    until ``go_on`` is set: its task, once the first half is stored and the upload's
    recorded expiry passed."""
    client = await make_client(expiration=1)
    data = DATA
    path = await create_upload(client, len(data))
    half = len(data) // 2

    async def body():
        yield data[:half]
        await go_on.wait()
        yield data[half:]

    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    patching = asyncio.create_task(client.patch(path, data=body(), headers={
        **PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {digest}",
    }))
    await poll(lambda: storage_view.size(path) == half, "the first half")
    stored = await client.app[CONTEXT].store.get(upload_id(path))
    await wait_until_past(stored.expires_at)
    return client, path, patching


@pytest.mark.slow
async def test_an_upload_receiving_a_body_does_not_expire(make_client, storage_view):
    """A checksummed PATCH records nothing until its body ends, so the upload's recorded
    expiry passes while it is under way: a GET and the sweep meanwhile leave it alone, and
    the PATCH completes it."""
    go_on = asyncio.Event()
    client, path, patching = await _checksummed_patch_past_its_expiry(make_client, storage_view, go_on)
    try:
        assert (await client.get(path)).status == 409
        assert await sweep(client.app[CONTEXT]) == 0
    finally:
        go_on.set()
    response = await patching
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(DATA))
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == DATA


@pytest.mark.slow
async def test_a_head_that_takes_over_a_receiving_upload_finds_it_alive(make_client, storage_view):
    """A HEAD takes over from a PATCH under way (a stale one, maybe): the PATCH stops, its
    unverifiable half is dropped, and the upload lives on from that moment, however old
    its recorded expiry was, so that the client resumes it."""
    go_on = asyncio.Event()
    client, path, patching = await _checksummed_patch_past_its_expiry(make_client, storage_view, go_on)
    try:
        # Upload-Expires is in whole seconds and the expiry is 1 s: the new expiry, cut to
        # its second, is still later than the moment the HEAD was sent.
        asked = time.time()
        response = await client.head(path, headers=TUS)
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "0"
        assert parse_expires(response.headers["Upload-Expires"]) > asked
    finally:
        go_on.set()
    with contextlib.suppress(aiohttp.ClientError):
        response = await patching
        assert response.status != 204
    response = await client.patch(path, data=DATA, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    assert await (await client.get(path)).read() == DATA
