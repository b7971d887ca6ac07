from support.http import PATCH_HEADERS, TUS, create_upload


async def test_upload_in_two_patches_then_download(client):
    path = await create_upload(client, 11, **{"Upload-Metadata": "filename aGVsbG8udHh0"})
    r = await client.patch(path, data=b"hello ", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert r.status == 204 and r.headers["Upload-Offset"] == "6"
    r = await client.patch(path, data=b"world", headers={**PATCH_HEADERS, "Upload-Offset": "6"})
    assert r.status == 204 and r.headers["Upload-Offset"] == "11"
    r = await client.head(path, headers=TUS)
    assert r.headers["Upload-Offset"] == "11" and r.headers["Upload-Length"] == "11"
    r = await client.get(path)
    assert await r.read() == b"hello world"
    assert r.headers["Content-Disposition"] == 'attachment; filename="hello.txt"'
