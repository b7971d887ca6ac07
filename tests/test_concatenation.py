"""concatenation and concatenation-unfinished extensions."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from support.http import (
    PATCH_HEADERS,
    TUS,
    assert_one_line_error,
    create_upload,
    path_of,
    upload_id,
)
from support.storage import data_file
from support.waiting import poll, wait_until_past

from server.app import create_app
from server.context import CONTEXT
from server.expiration import sweep
from server.state import TERMINATED, StateStore, Upload

pytestmark = pytest.mark.all_backends


async def partial(client, data: bytes | None = None, length: int | None = None, **headers: str) -> str:
    """A partial upload of ``length`` bytes (default: len(data)), filled with ``data`` if given."""
    length = len(data) if length is None else length
    path = await create_upload(client, length, **{"Upload-Concat": "partial", **headers})
    if data:
        response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status == 204
    return path


async def create_final(client, *parts: str, **headers: str):
    return await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts), **headers}
    )


async def test_options_advertises_concatenation(client):
    extensions = (await client.options("/files/")).headers["Tus-Extension"].split(",")
    assert "concatenation" in extensions
    assert "concatenation-unfinished" in extensions


async def test_head_of_partial(client):
    path = await partial(client, length=5)
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Concat"] == "partial"
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "5"


@pytest.mark.all_databases
async def test_final_from_finished_partials(client):
    first = await partial(client, b"hello ")
    second = await partial(client, b"world")
    response = await create_final(client, first, second)
    assert response.status == 201
    final = path_of(response)
    assert "Upload-Offset" not in response.headers or response.headers["Upload-Offset"] == "11"
    assert "Upload-Expires" not in response.headers

    response = await client.head(final, headers=TUS)
    assert response.status == 200
    assert response.headers["Upload-Offset"] == "11"
    assert response.headers["Upload-Length"] == "11"
    assert response.headers["Upload-Concat"] == f"final;{first} {second}"
    response = await client.get(final)
    assert response.status == 200
    assert await response.read() == b"hello world"
    # the partials stay usable on their own
    assert await (await client.get(first)).read() == b"hello "


async def test_final_with_absolute_urls(client):
    first = await partial(client, b"abc")
    second = await partial(client, b"def")
    response = await create_final(client, str(client.make_url(first)), str(client.make_url(second)))
    assert response.status == 201
    assert await (await client.get(path_of(response))).read() == b"abcdef"


async def test_order_of_parts_is_kept(client):
    parts = [await partial(client, bytes([65 + i]) * (i + 1)) for i in range(5)]
    response = await create_final(client, *reversed(parts))
    assert response.status == 201
    assert await (await client.get(path_of(response))).read() == b"EEEEEDDDDCCCBBA"


async def test_a_partial_named_twice_in_a_final_is_400_but_may_be_in_two_finals(client):
    """A partial named again and again in one final would have one POST copy its bytes
    as often (up to max_concat_parts times): refused. Two finals may share a partial."""
    a = await partial(client, b"ab")
    b = await partial(client, b"CD")
    response = await create_final(client, a, b, a)
    await assert_one_line_error(response, 400)
    response = await create_final(client, a, b)
    assert response.status == 201
    final = path_of(response)
    response = await client.head(final, headers=TUS)
    assert response.headers["Upload-Length"] == "4"
    assert response.headers["Upload-Offset"] == "4"
    assert await (await client.get(final)).read() == b"abCD"
    response = await create_final(client, b, a)
    assert response.status == 201
    assert await (await client.get(path_of(response))).read() == b"CDab"


async def test_empty_partials(client):
    empty = await partial(client, b"")
    other_empty = await partial(client, b"")
    full = await partial(client, b"xyz")
    response = await create_final(client, empty, full, other_empty)
    assert response.status == 201
    final = path_of(response)
    assert await (await client.get(final)).read() == b"xyz"
    response = await create_final(client, empty)
    assert response.status == 201
    response = await client.head(path_of(response), headers=TUS)
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "0"


@pytest.mark.filesystem_only("it removes the file of an empty upload, as a power cut may")
async def test_an_empty_partial_whose_file_a_power_cut_took_still_concatenates(client):
    # An empty upload's file is never synced (it holds nothing to lose): it may be gone.
    empty = await partial(client, b"")
    full = await partial(client, b"xyz")
    data_file(client.app[CONTEXT].settings, empty).unlink()
    response = await create_final(client, empty, full)
    assert response.status == 201
    assert await (await client.get(path_of(response))).read() == b"xyz"


async def test_patch_on_final_is_403(client):
    a = await partial(client, b"ab")
    final = path_of(await create_final(client, a))
    response = await client.patch(final, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "2"})
    await assert_one_line_error(response, 403)
    response = await client.patch(final, data=b"", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await assert_one_line_error(response, 403)
    assert await (await client.get(final)).read() == b"ab"


async def test_patch_on_unfinished_final_is_403(client):
    a = await partial(client, length=2)
    final = path_of(await create_final(client, a))
    response = await client.patch(final, data=b"x", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    await assert_one_line_error(response, 403)


@pytest.mark.parametrize(
    "extra", [{"Upload-Length": "2"}, {"Upload-Defer-Length": "1"}, {"Upload-Length": "0"}]
)
async def test_final_with_length_header_is_400(client, extra):
    a = await partial(client, b"ab")
    response = await create_final(client, a, **extra)
    await assert_one_line_error(response, 400)


async def test_final_with_unknown_partial_is_400(client):
    a = await partial(client, b"ab")
    response = await create_final(client, a, "/files/" + "d" * 32)
    await assert_one_line_error(response, 400)


async def test_final_with_non_partial_upload_is_400(client):
    a = await partial(client, b"ab")
    plain = await create_upload(client, 2)
    await client.patch(plain, data=b"cd", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await create_final(client, a, plain)
    await assert_one_line_error(response, 400)
    # a final upload cannot be a part either
    final = path_of(await create_final(client, a))
    response = await create_final(client, final)
    await assert_one_line_error(response, 400)


@pytest.mark.parametrize(
    "template",
    [
        "/other/{id}",
        "/files/../files/{id}",
        "/files/./{id}",
        "/files/x/../{id}",
        "/{id}",
        "{id}",
        "http://127.0.0.1/elsewhere/{id}",
        "/files/{id}/",
        "/files/%2e%2e/{id}",
        "/files//{id}",
        "/files/{id}/..",
        "..%2f{id}",
    ],
)
async def test_final_with_url_outside_base_path_is_400(client, template):
    a = await partial(client, b"ab")
    response = await create_final(client, template.format(id=upload_id(a)))
    assert response.status == 400, template
    await assert_one_line_error(response, 400)


@pytest.mark.parametrize("value", ["final", "final;", "final; ", "partial;", "Final;/files/x", "full", "", "partial final"])
async def test_malformed_upload_concat_is_400(client, value):
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "2", "Upload-Concat": value})
    await assert_one_line_error(response, 400)


async def test_final_with_body_is_rejected(client):
    a = await partial(client, b"ab")
    response = await client.post(
        "/files/", data=b"xy", headers={**PATCH_HEADERS, "Upload-Concat": f"final;{a}"}
    )
    assert response.status == 400
    await assert_one_line_error(response, 400)


async def test_final_longer_than_max_size_is_413(make_client):
    client = await make_client(max_size=5)
    a = await partial(client, b"abc")
    b = await partial(client, b"def")
    response = await create_final(client, a, b)
    await assert_one_line_error(response, 413)


async def test_partial_metadata_is_not_inherited(client):
    a = await partial(client, b"ab", **{"Upload-Metadata": "filename YS50eHQ="})
    response = await create_final(client, a)
    final = path_of(response)
    response = await client.head(final, headers=TUS)
    assert "Upload-Metadata" not in response.headers
    response = await client.get(final)
    assert response.headers["Content-Disposition"] == "attachment"

    response = await create_final(client, a, **{"Upload-Metadata": "filename Yi50eHQ="})
    final = path_of(response)
    response = await client.head(final, headers=TUS)
    assert response.headers["Upload-Metadata"] == "filename Yi50eHQ="
    response = await client.head(a, headers=TUS)
    assert response.headers["Upload-Metadata"] == "filename YS50eHQ="


# --- concatenation-unfinished -------------------------------------------------------------


@pytest.mark.all_databases
async def test_final_before_partials_finish(client):
    a = await partial(client, length=5)
    b = await partial(client, length=6)
    response = await create_final(client, a, b)
    assert response.status == 201
    final = path_of(response)
    assert "Upload-Offset" not in response.headers

    response = await client.head(final, headers=TUS)
    assert response.status == 200
    assert "Upload-Offset" not in response.headers
    assert response.headers["Upload-Length"] == "11"
    assert response.headers["Upload-Concat"] == f"final;{a} {b}"
    assert (await client.get(final)).status == 409

    response = await client.patch(b, data=b" world", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    response = await client.head(final, headers=TUS)
    assert "Upload-Offset" not in response.headers
    response = await client.patch(a, data=b"hel", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    response = await client.head(final, headers=TUS)
    assert "Upload-Offset" not in response.headers

    response = await client.patch(a, data=b"lo", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    response = await client.head(final, headers=TUS)
    assert response.headers["Upload-Offset"] == "11"
    assert response.headers["Upload-Length"] == "11"
    assert "Upload-Expires" not in response.headers
    response = await client.get(final)
    assert response.status == 200
    assert await response.read() == b"hello world"


async def test_unfinished_final_with_deferred_partial_has_no_length(client):
    a = await partial(client, b"abc")
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Defer-Length": "1", "Upload-Concat": "partial"}
    )
    deferred = path_of(response)
    final = path_of(await create_final(client, a, deferred))
    response = await client.head(final, headers=TUS)
    assert "Upload-Length" not in response.headers
    assert "Upload-Offset" not in response.headers

    response = await client.patch(
        deferred, data=b"de", headers={**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "3"}
    )
    response = await client.head(final, headers=TUS)
    assert response.headers["Upload-Length"] == "6"
    assert "Upload-Offset" not in response.headers
    response = await client.patch(deferred, data=b"f", headers={**PATCH_HEADERS, "Upload-Offset": "2"})
    assert response.status == 204
    response = await client.head(final, headers=TUS)
    assert response.headers["Upload-Offset"] == "6"
    assert await (await client.get(final)).read() == b"abcdef"


async def test_two_finals_waiting_on_one_partial(client):
    a = await partial(client, length=2)
    b = await partial(client, b"XY")
    first = path_of(await create_final(client, a, b))
    second = path_of(await create_final(client, b, a))
    await client.patch(a, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert await (await client.get(first)).read() == b"abXY"
    assert await (await client.get(second)).read() == b"XYab"


@pytest.mark.all_databases
async def test_partial_terminated_before_final_finished_takes_the_final(client, storage_view):
    """A final upload that can never be completed goes with its terminated partial."""
    a = await partial(client, length=2)
    b = await partial(client, b"cd")
    final = path_of(await create_final(client, a, b))
    assert (await client.delete(a, headers=TUS)).status == 204
    response = await client.head(final, headers=TUS)
    assert response.status == 410
    assert "Upload-Offset" not in response.headers
    await assert_one_line_error(await client.get(final), 410)
    assert not storage_view.holds(final)
    # the other partial is untouched
    assert await (await client.get(b)).read() == b"cd"


async def test_terminating_partial_keeps_finished_final(client):
    a = await partial(client, b"ab")
    final = path_of(await create_final(client, a))
    assert (await client.delete(a, headers=TUS)).status == 204
    response = await client.get(final)
    assert response.status == 200
    assert await response.read() == b"ab"


@pytest.mark.slow
async def test_unfinished_final_has_no_expiry_of_its_own(make_client):
    client = await make_client(expiration=1)
    a = await partial(client, length=6)
    response = await create_final(client, a)
    assert response.status == 201
    assert "Upload-Expires" not in response.headers
    final = path_of(response)
    ctx = client.app[CONTEXT]
    created = time.time()
    # Keep the partial alive past the time a final with its own expiry would have gone.
    response = await client.patch(a, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    await wait_until_past(created + 0.6)
    response = await client.patch(a, data=b"d", headers={**PATCH_HEADERS, "Upload-Offset": "3"})
    assert response.status == 204
    await wait_until_past(created + 1.1)
    assert await sweep(ctx) == 0
    response = await client.head(final, headers=TUS)
    assert response.status == 200
    assert "Upload-Offset" not in response.headers
    response = await client.patch(a, data=b"ef", headers={**PATCH_HEADERS, "Upload-Offset": "4"})
    assert response.status == 204
    assert await (await client.get(final)).read() == b"abcdef"


@pytest.mark.slow
async def test_expired_partial_takes_waiting_final(make_client, settings):
    client = await make_client(expiration=1)
    ctx = client.app[CONTEXT]
    a = await partial(client, length=4)
    b = await partial(client, b"done")
    final = path_of(await create_final(client, a, b))
    await wait_until_past((await ctx.store.get(upload_id(a))).expires_at)
    assert await sweep(ctx) >= 1
    assert (await client.head(a, headers=TUS)).status == 410
    response = await client.head(final, headers=TUS)
    assert response.status == 410
    assert "Upload-Offset" not in response.headers
    assert (await client.head(b, headers=TUS)).status == 200


async def test_a_final_created_while_its_partial_is_terminated_is_refused(aiohttp_client, settings):
    """The partial is checked, then terminated while a pre-create hook holds the POST:
    the final must not be created, or it would wait for ever for a part that is gone."""
    in_hook, go_on = asyncio.Event(), asyncio.Event()

    async def hooks(event: dict[str, Any]) -> None:
        if event["type"] == "pre-create" and event["upload"]["partial_uploads"]:
            in_hook.set()
            await go_on.wait()

    client = await aiohttp_client(
        create_app(settings.with_values(hooks_events="pre-create"), hooks=hooks)
    )
    part = await partial(client, b"abc")
    posting = asyncio.create_task(create_final(client, part))
    await asyncio.wait_for(in_hook.wait(), 10)
    deleted = await client.delete(part, headers=TUS)
    assert deleted.status == 204
    go_on.set()
    response = await posting
    assert response.status == 400
    assert "was terminated" in await response.text()
    assert "Location" not in response.headers


async def test_a_partial_and_its_waiting_finals_are_marked_gone_in_one_transaction(tmp_path):
    store = await StateStore.open(tmp_path / "state.sqlite3")
    try:
        for upload_id_, concat in (("p", "partial"), ("f1", "final"), ("f2", "final")):
            await store.create(Upload(id=upload_id_, length=1, concat=concat))
        await store.mark_gone("p", TERMINATED, also=["f1", "f2"])
        found = await store.get_many(("p", "f1", "f2"))
        assert {u.id: u.status for u in found.values()} == dict.fromkeys(("p", "f1", "f2"), TERMINATED)
    finally:
        await store.close()


async def deferred_partial(client, data: bytes = b"") -> str:
    """A partial upload created with Upload-Defer-Length, holding ``data`` so far."""
    path = await create_upload(client, None, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    if data:
        response = await client.patch(path, data=data, headers={**PATCH_HEADERS, "Upload-Offset": "0"})
        assert response.status == 204
    return path


async def test_a_final_over_max_size_once_a_deferred_length_is_known_is_refused(
    make_client, storage_view
):
    """A final of a partial whose length was deferred is accepted while its length is
    unknown; once the part's length is known and the total is over max_size, the final
    is refused (410 with the reason) and nothing is assembled."""
    client = await make_client(max_size=100)
    deferred = await deferred_partial(client)
    known = await partial(client, b"k" * 60)
    response = await create_final(client, deferred, known)
    assert response.status == 201
    final = path_of(response)
    response = await client.patch(deferred, data=b"d" * 80, headers={
        **PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "80",
    })
    assert response.status == 204
    response = await client.head(final, headers=TUS)
    assert response.status == 410
    response = await client.get(final)
    await assert_one_line_error(response, 410)
    assert "maximum size" in await response.text()
    assert storage_view.size(final) <= 0
    # The partials themselves are fine, and a final within the limit is made of them.
    response = await create_final(client, deferred)
    assert response.status == 201
    assert await (await client.get(path_of(response))).read() == b"d" * 80


async def test_a_final_whose_parts_already_hold_more_than_max_size_is_413(make_client):
    client = await make_client(max_size=100)
    deferred = await deferred_partial(client, b"d" * 50)
    known = await partial(client, b"k" * 60)
    response = await create_final(client, deferred, known)
    await assert_one_line_error(response, 413)


async def test_a_long_assembly_holds_up_no_unrelated_upload(client, storage_view):
    """While one final's assembly is under way (held here at its copy), an unrelated final
    is created and assembled, another partial finishes, and a HEAD of the final being
    assembled answers at once; the held final is assembled once let go."""
    backend = client.app[CONTEXT].backend
    concatenate = backend.concatenate
    held: list[str] = []
    go_on = asyncio.Event()
    big = [await partial(client, b"A" * 1000), await partial(client, b"B" * 1000)]

    async def held_concatenate(final, partials):
        if not held:
            held.append(final.id)
            await go_on.wait()
        return await concatenate(final, partials)

    backend.concatenate = held_concatenate
    small = [await partial(client, b"x"), await partial(client, b"y")]
    waiting = await partial(client, length=3)
    creating = asyncio.create_task(create_final(client, *big))
    try:
        async with asyncio.timeout(5):
            await poll(lambda: held, "the held assembly")
            # A partial being copied is removed only once the copy is done.
            deleting = asyncio.create_task(client.delete(big[0], headers=TUS))
            response = await create_final(client, *small)
            assert response.status == 201
            head = await client.head(path_of(response), headers=TUS)
            assert head.headers["Upload-Offset"] == "2"
            response = await client.patch(
                waiting, data=b"abc", headers={**PATCH_HEADERS, "Upload-Offset": "0"}
            )
            assert response.status == 204
            head = await client.head(f"/files/{held[0]}", headers=TUS)
            assert head.status == 200 and "Upload-Offset" not in head.headers
            # Another final may read a partial that is being copied.
            response = await create_final(client, big[1])
            assert response.status == 201
            head = await client.head(path_of(response), headers=TUS)
            assert head.headers["Upload-Offset"] == "1000"
            # The final being assembled is removed once its assembly is done.
            deleting_final = asyncio.create_task(client.delete(f"/files/{held[0]}", headers=TUS))
            await client.head(waiting, headers=TUS)
        assert not creating.done() and not deleting.done() and not deleting_final.done()
    finally:
        go_on.set()
    response = await creating
    assert response.status == 201
    assert (await deleting).status == 204
    assert (await deleting_final).status == 204
    assert (await client.head(big[0], headers=TUS)).status == 410
    assert (await client.head(path_of(response), headers=TUS)).status == 410
    assert not storage_view.holds(path_of(response))


async def test_a_final_removed_with_its_partial_and_by_itself_is_terminated_once(
    aiohttp_client, settings
):
    """DELETE of a partial takes its waiting final with it; a DELETE of that final at the
    same moment must not terminate it a second time (a second post-terminate event)."""
    arrived: list[str] = []
    both_in = asyncio.Event()
    terminated: list[str] = []

    async def hooks(event: dict[str, Any]) -> None:
        if event["type"] == "pre-terminate":
            arrived.append(event["upload"]["id"])
            if len(arrived) % 2 == 0:
                both_in.set()
            await both_in.wait()
        elif event["type"] == "post-terminate":
            terminated.append(event["upload"]["id"])

    client = await aiohttp_client(create_app(
        settings.with_values(hooks_events="pre-terminate,post-terminate"), hooks=hooks
    ))
    store = client.app[CONTEXT].store
    for _ in range(5):
        both_in.clear()
        part = await partial(client, length=3)
        final = path_of(await create_final(client, part))
        answers = await asyncio.gather(
            client.delete(part, headers=TUS), client.delete(final, headers=TUS)
        )
        assert sorted(answer.status for answer in answers) in ([204, 204], [204, 410])
        await poll(lambda: _outbox_empty(store), "the post-terminate deliveries")
        assert terminated.count(upload_id(part)) == 1
        assert terminated.count(upload_id(final)) == 1


async def _outbox_empty(store: StateStore) -> bool:
    return await store.count_events() == (0, 0)


@pytest.mark.slow
async def test_a_final_of_an_expired_partial_not_yet_swept_is_400(make_client):
    client = await make_client(expiration=1)
    part = await partial(client, length=10)
    response = await client.patch(part, data=b"12345", headers={**PATCH_HEADERS, "Upload-Offset": "0"})
    assert response.status == 204
    stored = await client.app[CONTEXT].store.get(upload_id(part))
    await wait_until_past(stored.expires_at)
    response = await create_final(client, part)
    await assert_one_line_error(response, 400)
    assert "expired" in await response.text()


@pytest.mark.filesystem_only("it cuts a partial's file short, as a disk that lost bytes")
async def test_a_partial_whose_file_lost_bytes_makes_no_final(client, settings):
    """Storage lost bytes of a finished partial: the final is created (it exists, and
    its client gets its Location) but never assembled from the short file, so it never
    serves wrong bytes."""
    first = await partial(client, b"hello")
    second = await partial(client, b"world")
    os.truncate(data_file(settings, first), 2)
    response = await create_final(client, first, second)
    assert response.status == 201
    assert "Upload-Offset" not in response.headers
    final = path_of(response)
    await assert_one_line_error(await client.get(final), 409)
    await assert_one_line_error(await client.get(final, headers={"Range": "bytes=2-6"}), 409)
    response = await client.head(final, headers=TUS)
    assert response.status == 500
    assert "Upload-Offset" not in response.headers
