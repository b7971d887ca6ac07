"""checksum extension: Upload-Checksum on PATCH."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from support.http import (
    PATCH_HEADERS,
    assert_one_line_error,
    create_upload,
    head_offset,
)

pytestmark = pytest.mark.all_backends

DATA = b"The quick brown fox jumps over the lazy dog"


def digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def checksum_header(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(digest(algorithm, data)).decode()}"


async def test_options_lists_algorithms(client):
    response = await client.options("/files/")
    assert "checksum" in response.headers["Tus-Extension"].split(",")
    algorithms = response.headers["Tus-Checksum-Algorithm"].split(",")
    assert algorithms[0] == "sha1" or "sha1" in algorithms
    assert all(name == name.lower() for name in algorithms)


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_matching_checksum_is_accepted(client, algorithm):
    path = await create_upload(client, len(DATA) + 3)
    response = await client.patch(
        path,
        data=DATA,
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header(algorithm, DATA)},
    )
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(DATA))
    response = await client.patch(
        path,
        data=b"end",
        headers={
            **PATCH_HEADERS,
            "Upload-Offset": str(len(DATA)),
            "Upload-Checksum": checksum_header(algorithm, b"end"),
        },
    )
    assert response.status == 204
    assert await (await client.get(path)).read() == DATA + b"end"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
async def test_mismatching_checksum_is_460_and_nothing_kept(client, storage_view, algorithm):
    path = await create_upload(client, len(DATA))
    wrong = b"The quick brown fox jumps over the lazy cat"
    response = await client.patch(
        path,
        data=wrong,
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header(algorithm, DATA)},
    )
    await assert_one_line_error(response, 460)
    assert await head_offset(client, path) == "0"
    assert storage_view.size(path) == 0
    response = await client.patch(
        path,
        data=DATA,
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header(algorithm, DATA)},
    )
    assert response.status == 204
    assert await (await client.get(path)).read() == DATA


async def test_mismatch_after_earlier_chunk_keeps_earlier_chunk(client):
    path = await create_upload(client, 8)
    response = await client.patch(
        path, data=b"abcd", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header("sha1", b"abcd")}
    )
    assert response.status == 204
    response = await client.patch(
        path, data=b"XXXX", headers={**PATCH_HEADERS, "Upload-Offset": "4", "Upload-Checksum": checksum_header("sha1", b"efgh")}
    )
    await assert_one_line_error(response, 460)
    assert await head_offset(client, path) == "4"
    response = await client.patch(path, data=b"efgh", headers={**PATCH_HEADERS, "Upload-Offset": "4"})
    assert response.status == 204
    assert await (await client.get(path)).read() == b"abcdefgh"


async def test_chunked_body_with_checksum(client):
    async def body():
        yield DATA[:10]
        yield DATA[10:]

    path = await create_upload(client, len(DATA))
    response = await client.patch(
        path,
        data=body(),
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header("sha256", DATA)},
    )
    assert response.status == 204
    assert await (await client.get(path)).read() == DATA


async def test_chunked_body_with_checksum_mismatch(make_client):
    client = await make_client(commit_bytes=1)

    async def body():
        yield DATA[:10]
        yield b"!" + DATA[11:]

    path = await create_upload(client, len(DATA))
    response = await client.patch(
        path,
        data=body(),
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": checksum_header("md5", DATA)},
    )
    await assert_one_line_error(response, 460)
    assert await head_offset(client, path) == "0"


@pytest.mark.parametrize("algorithm", ["sha3", "SHA1", "sha-1", "crc", "blake2b", "md4"])
async def test_unsupported_algorithm_is_400(client, algorithm):
    path = await create_upload(client, len(DATA))
    response = await client.patch(
        path,
        data=DATA,
        headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": f"{algorithm} {base64.b64encode(b'x' * 20).decode()}"},
    )
    await assert_one_line_error(response, 400)
    assert await head_offset(client, path) == "0"


@pytest.mark.parametrize(
    "header",
    [
        "sha1",  # no digest
        "sha1" + base64.b64encode(hashlib.sha1(DATA).digest()).decode(),  # no space
        "sha1 ",  # empty digest
        "sha1 !!!notbase64!!!",
        "sha1 " + base64.b64encode(hashlib.sha1(DATA).digest()).decode().rstrip("="),  # missing padding
        "sha1 " + base64.b64encode(hashlib.md5(DATA).digest()).decode(),  # wrong length
        "crc32 " + base64.b64encode(b"12345").decode(),  # wrong length
        "sha1  " + base64.b64encode(hashlib.sha1(DATA).digest()).decode(),  # two spaces
        "sha1 " + base64.b64encode(hashlib.sha1(DATA).digest()).decode() + " extra",
        "",
        " ",
    ],
)
async def test_malformed_checksum_header_is_400(client, header):
    path = await create_upload(client, len(DATA))
    response = await client.patch(
        path, data=DATA, headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Checksum": header}
    )
    await assert_one_line_error(response, 400)
    assert await head_offset(client, path) == "0"
