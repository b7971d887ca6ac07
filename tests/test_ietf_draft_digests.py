"""The IETF draft's "Integrity Digests": a ``Repr-Digest`` (RFC 9530) describes the whole
upload, so it is checked once the upload is complete, however many requests (and which
protocol) brought its bytes; ``Want-Repr-Digest`` is answered with the digest of the
stored bytes. On every backend: S3 reads the upload back once it finished it."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from aiohttp.test_utils import TestClient
from support.draft import draft_headers, exchange, path_of
from support.hooks import Receiver
from support.http import TUS, ClientFactory
from support.storage import StorageView
from test_ietf_draft import create, download, patch_headers, port_of

pytestmark = pytest.mark.all_backends

MIB = 1024 * 1024


def sf(algorithm: str, data: bytes) -> str:
    """The ``Repr-Digest`` member of ``data`` in ``algorithm`` (``sha-256``, ``sha-512``)."""
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


@pytest.mark.parametrize("version", [8, 6, 5])
async def test_a_repr_digest_given_at_creation_is_checked_once_the_upload_completes(
    client: TestClient, version: int
) -> None:
    """Over several requests, and over more than one of the storage's read chunks."""
    port = port_of(client)
    data = os.urandom(2 * MIB + 12345)
    path = await create(client, version, data[:MIB], Repr_Digest=sf("sha-256", data))
    middle = await exchange(port, "PATCH", path, patch_headers(version, MIB, False),
                            data[MIB:-10])
    assert middle.final.status == 204
    assert "repr-digest" not in middle.final.headers
    last = await exchange(port, "PATCH", path, patch_headers(version, len(data) - 10, True),
                          data[-10:])
    assert last.final.status == 204, last.final.body
    assert last.final.headers["upload-complete"] == "?1"
    assert last.final.headers["repr-digest"] == sf("sha-256", data)
    state = await exchange(port, "HEAD", path, draft_headers(version))
    assert state.final.headers["repr-digest"] == sf("sha-256", data)
    assert await download(client, path) == data


async def test_a_creation_with_all_its_content_answers_the_digest_it_checked(
    client: TestClient,
) -> None:
    data = b"all at once"
    given = f"{sf('sha-512', data)}, unknown-alg=:AAAA:"
    answer = await exchange(port_of(client), "POST", "/files/", draft_headers(
        8, Upload_Complete="?1", Repr_Digest=given), data)
    assert answer.final.status == 201
    assert answer.final.headers["upload-complete"] == "?1"
    assert answer.final.headers["repr-digest"] == sf("sha-512", data)


async def test_an_upload_whose_bytes_do_not_match_its_repr_digest_fails_and_goes(
    make_client: ClientFactory, receiver: Receiver, storage_view: StorageView
) -> None:
    """The draft: "the server SHOULD consider the upload failed, not process the
    representation further, and signal the failure to the client"."""
    client = await make_client(hooks_url=receiver.url,
                               hooks_events="post-finish,post-terminate")
    port = port_of(client)
    path = await create(client, 8, b"first half, ", Repr_Digest=sf("sha-256", b"other bytes"))
    last = await exchange(port, "PATCH", path, patch_headers(8, 12, True), b"second half")
    assert last.final.status == 400
    assert b"sha-256 digest does not match its Repr-Digest" in last.final.body
    assert last.final.body.count(b"\n") == 1
    assert "repr-digest" not in last.final.headers
    assert (await exchange(port, "HEAD", path, draft_headers(8))).final.status == 410
    assert not storage_view.holds(path)
    await receiver.wait_for_names("post-terminate")
    assert [r.name for r in receiver.received] == ["post-terminate"]


async def test_want_repr_digest_is_answered_in_the_algorithm_it_prefers(
    client: TestClient,
) -> None:
    port = port_of(client)
    path = await create(client, 8, b"wanted ", Want_Repr_Digest="sha-256=3, sha-512=9, md5=10")
    last = await exchange(port, "PATCH", path, patch_headers(8, 7, True), b"digest")
    assert last.final.status == 204
    assert last.final.headers["repr-digest"] == sf("sha-512", b"wanted digest")
    unwanted = await create(client, 8, Want_Repr_Digest="sha-256=0")
    done = await exchange(port, "PATCH", unwanted, patch_headers(8, 0, True), b"x")
    assert done.final.status == 204
    assert "repr-digest" not in done.final.headers


async def test_the_append_that_completes_the_upload_may_give_the_digest(
    client: TestClient, storage_view: StorageView
) -> None:
    """A client that streams its data knows the digest once it sent the last byte."""
    port = port_of(client)
    good = await create(client, 8, b"streamed ")
    done = await exchange(port, "PATCH", good, patch_headers(
        8, 9, True, Repr_Digest=sf("sha-256", b"streamed data")), b"data")
    assert done.final.status == 204
    assert done.final.headers["repr-digest"] == sf("sha-256", b"streamed data")
    bad = await create(client, 8, b"streamed ")
    refused = await exchange(port, "PATCH", bad, patch_headers(
        8, 9, True, Repr_Digest=sf("sha-256", b"other data")), b"data")
    assert refused.final.status == 400
    assert not storage_view.holds(bad)


async def test_a_digest_given_on_an_unfinished_append_is_kept_for_the_completion(
    client: TestClient,
) -> None:
    port = port_of(client)
    path = await create(client, 8)
    first = await exchange(port, "PATCH", path, patch_headers(
        8, 0, False, Repr_Digest=sf("sha-256", b"not what comes")), b"abc")
    assert first.final.status == 204
    last = await exchange(port, "PATCH", path, patch_headers(8, 3, True), b"def")
    assert last.final.status == 400
    assert (await exchange(port, "HEAD", path, draft_headers(8))).final.status == 410


async def test_a_repr_digest_that_contradicts_the_one_given_before_is_refused(
    client: TestClient,
) -> None:
    port = port_of(client)
    path = await create(client, 8, b"abc", Repr_Digest=sf("sha-256", b"abcdef"))
    other = await exchange(port, "PATCH", path, patch_headers(
        8, 3, True, Repr_Digest=sf("sha-256", b"abcxyz")), b"xyz")
    assert other.final.status == 400
    assert b"Repr-Digest's sha-256 differs from the one given before" in other.final.body
    state = await exchange(port, "HEAD", path, draft_headers(8))
    assert state.final.headers["upload-offset"] == "3"
    # Another algorithm adds to the first: both are checked, and both told.
    both = f"{sf('sha-256', b'abcdef')}, {sf('sha-512', b'abcdef')}"
    done = await exchange(port, "PATCH", path, patch_headers(
        8, 3, True, Repr_Digest=sf("sha-512", b"abcdef")), b"def")
    assert done.final.status == 204
    assert done.final.headers["repr-digest"] == both


async def test_a_tus_request_that_completes_a_draft_upload_checks_its_digest(
    client: TestClient, storage_view: StorageView
) -> None:
    port = port_of(client)
    tus_patch = {**TUS, "Content-Type": "application/offset+octet-stream"}
    good = await create(client, 8, b"draft ", Upload_Length="9",
                        Repr_Digest=sf("sha-256", b"draft tus"))
    done = await client.patch(good, data=b"tus", headers={**tus_patch, "Upload-Offset": "6"})
    assert done.status == 204
    state = await exchange(port, "HEAD", good, draft_headers(8))
    assert state.final.headers["repr-digest"] == sf("sha-256", b"draft tus")
    bad = await create(client, 8, b"draft ", Upload_Length="9",
                       Repr_Digest=sf("sha-256", b"draft xyz"))
    refused = await client.patch(bad, data=b"tus", headers={**tus_patch, "Upload-Offset": "6"})
    assert refused.status == 400
    assert not storage_view.holds(bad)


@pytest.mark.filesystem_only("the parsing of headers; no upload is stored")
@pytest.mark.parametrize(("name", "value", "reason"), [
    ("Repr-Digest", "sha-256=abc", b"Repr-Digest values must be byte sequences (:base64:)"),
    ("Repr-Digest", "sha-256=:!!:", b"Repr-Digest holds invalid base64"),
    ("Repr-Digest", "sha-256=:AAAA:", b"Repr-Digest has a sha-256 digest of the wrong length"),
    ("Content-Digest", "sha-512=:AAAA:",
     b"Content-Digest has a sha-512 digest of the wrong length"),
    ("Want-Repr-Digest", "sha-256=11",
     b"Want-Repr-Digest preferences must be integers from 0 to 10"),
])
async def test_a_bad_digest_field_is_refused_with_a_reason(
    client: TestClient, name: str, value: str, reason: bytes
) -> None:
    answer = await exchange(port_of(client), "POST", "/files/", draft_headers(
        8, Upload_Complete="?1", **{name.replace("-", "_"): value}), b"abc")
    assert answer.final.status == 400
    assert answer.final.body == reason + b"\n"
    assert answer.interim == []  # refused before the upload exists


@pytest.mark.filesystem_only("a creation whose digest names no algorithm of the server's")
async def test_a_digest_in_algorithms_the_server_lacks_is_ignored(client: TestClient) -> None:
    answer = await exchange(port_of(client), "POST", "/files/", draft_headers(
        8, Upload_Complete="?1", Repr_Digest="md5=:AAAA:", Want_Repr_Digest="md5=5"), b"abc")
    assert answer.final.status == 201
    assert "repr-digest" not in answer.final.headers
    assert await download(client, path_of(answer.final.headers["location"])) == b"abc"
