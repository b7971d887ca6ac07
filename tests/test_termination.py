"""termination extension: DELETE."""

from __future__ import annotations

import pytest
from support.http import PATCH_HEADERS, TUS, assert_one_line_error, create_upload
from support.waiting import poll

pytestmark = pytest.mark.all_backends


async def test_options_advertises_termination(client):
    response = await client.options("/files/")
    assert "termination" in response.headers["Tus-Extension"].split(",")


@pytest.mark.all_databases
async def test_delete_unfinished_upload(client, storage_view):
    path = await create_upload(client, 10)
    await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert storage_view.holds(path)
    response = await client.delete(path, headers=TUS)
    assert response.status == 204
    assert await response.read() == b""
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert not storage_view.holds(path)

    response = await client.head(path, headers=TUS)
    assert response.status == 410
    assert "Upload-Offset" not in response.headers
    response = await client.patch(path, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "5"})
    await assert_one_line_error(response, 410)
    assert not storage_view.holds(path)
    response = await client.get(path)
    await assert_one_line_error(response, 410)
    response = await client.delete(path, headers=TUS)
    await assert_one_line_error(response, 410)


async def test_delete_finished_upload(client, storage_view):
    path = await create_upload(client, 3)
    await client.patch(path, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert (await client.get(path)).status == 200
    response = await client.delete(path, headers=TUS)
    assert response.status == 204
    assert not storage_view.holds(path)
    response = await client.get(path)
    await assert_one_line_error(response, 410)
    response = await client.head(path, headers=TUS)
    assert response.status == 410


async def test_delete_unknown_upload_is_404(client):
    response = await client.delete("/files/" + "c" * 32, headers=TUS)
    await assert_one_line_error(response, 404)


async def test_delete_does_not_touch_other_uploads(client, storage_view):
    keep = await create_upload(client, 4)
    await client.patch(keep, data=b"keep", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    gone = await create_upload(client, 4)
    assert (await client.delete(gone, headers=TUS)).status == 204
    assert storage_view.holds(keep)
    assert await (await client.get(keep)).read() == b"keep"


@pytest.mark.all_databases
async def test_delete_partial_then_final_cannot_use_it(client):
    partial = await create_upload(client, 2, **{"Upload-Concat": "partial"})
    await client.patch(partial, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert (await client.delete(partial, headers=TUS)).status == 204
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{partial}"})
    await assert_one_line_error(response, 400)


async def test_disable_termination_refuses_delete_and_expired_uploads_still_go(
    make_client, storage_view
):
    client = await make_client(disable_termination=True, expiration=1, expiry_interval=0.05)
    options = await client.options("/files/")
    assert "termination" not in options.headers["Tus-Extension"].split(",")
    assert "creation" in options.headers["Tus-Extension"].split(",")
    path = await create_upload(client, 10)
    await client.patch(path, data=b"hello", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    for response in (
        await client.delete(path, headers=TUS),
        await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"}),
    ):
        await assert_one_line_error(response, 405)
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert allowed == {"HEAD", "PATCH", "GET", "OPTIONS"}
    preflight = await client.options(
        path, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"}
    )
    methods = {m.strip() for m in preflight.headers["Access-Control-Allow-Methods"].split(",")}
    assert methods == {"POST", "HEAD", "PATCH", "GET", "OPTIONS", "PUT"}  # PUT: the draft's
    await poll(lambda: not storage_view.holds(path), "the sweeper to remove the expired upload")
    assert (await client.head(path, headers=TUS)).status == 410
