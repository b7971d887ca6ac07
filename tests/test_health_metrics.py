"""/healthz, /readyz and /metrics of real aiotusd processes, scraped during and after uploads."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import aiohttp
import pytest
from support.http import PATCH_HEADERS, TUS
from support.metrics import assert_plausible_process, samples, value
from support.processes import free_port
from support.storage import data_file, file_size, payload
from support.waiting import poll

pytestmark = pytest.mark.e2e

CHUNK = 256 * 1024


async def scrape(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return samples(await response.text())


def requests_of(metrics: dict, method: str, status: int) -> float:
    return value(
        metrics, "aiotusd_request_duration_seconds_count", method=method, status=str(status)
    )


async def test_metrics_and_health_during_and_after_an_upload(server_process):
    server = server_process("--metrics", "true")
    base = f"http://127.0.0.1:{server.port}"
    data = payload(3 * CHUNK, seed=3)
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield data[CHUNK : CHUNK + CHUNK // 2]
        await asyncio.wait_for(go_on.wait(), 30)
        yield data[CHUNK + CHUNK // 2 : 2 * CHUNK]

    async with aiohttp.ClientSession() as session:
        created = await session.post(
            base + "/files/", headers={**TUS, "Upload-Length": str(len(data))}
        )
        assert created.status == 201
        url = created.headers["Location"]
        first = await session.patch(
            url, data=data[:CHUNK], headers={**PATCH_HEADERS, "Upload-Offset": "0"}
        )
        assert first.status == 204

        second = asyncio.create_task(
            session.patch(
                url, data=slow_body(), headers={**PATCH_HEADERS, "Upload-Offset": str(CHUNK)}
            )
        )
        try:
            await poll(
                lambda: file_size(data_file(server, url)) >= CHUNK + CHUNK // 2,
                "half of the second chunk on disk",
            )
            during = await scrape(session, base + "/metrics")
            async with session.get(base + "/healthz") as health:
                assert (health.status, await health.text()) == (200, "ok\n")
            async with session.get(base + "/readyz") as ready:
                assert (ready.status, await ready.text()) == (200, "ready\n")
        finally:
            go_on.set()
        assert (await second).status == 204

        assert value(during, "aiotusd_uploads_created_total") == 1
        assert value(during, "aiotusd_uploads_in_progress") == 1
        assert value(during, "aiotusd_uploads_finished_total") == 0
        # Bytes are counted once per request, when it ends: the running PATCH is not in yet.
        assert value(during, "aiotusd_received_bytes_total") == CHUNK
        assert requests_of(during, "POST", 201) == 1
        assert requests_of(during, "PATCH", 204) == 1

        last = await session.patch(
            url, data=data[2 * CHUNK :], headers={**PATCH_HEADERS, "Upload-Offset": str(2 * CHUNK)}
        )
        assert last.status == 204 and last.headers["Upload-Offset"] == str(len(data))
        other = await session.post(base + "/files/", headers={**TUS, "Upload-Length": "9"})
        assert (await session.delete(other.headers["Location"], headers=TUS)).status == 204

        after = await scrape(session, base + "/metrics")
        assert value(after, "aiotusd_uploads_created_total") == 2
        assert value(after, "aiotusd_uploads_finished_total") == 1
        assert value(after, "aiotusd_uploads_terminated_total") == 1
        assert value(after, "aiotusd_uploads_in_progress") == 0
        assert value(after, "aiotusd_received_bytes_total") == len(data)
        assert value(after, "aiotusd_storage_errors_total") == 0
        assert requests_of(after, "PATCH", 204) == 3
        assert requests_of(after, "DELETE", 204) == 1
        assert (
            value(
                after,
                "aiotusd_request_duration_seconds_bucket",
                method="PATCH",
                status="204",
                le="+Inf",
            )
            == 3
        )
        assert (
            value(after, "aiotusd_request_duration_seconds_sum", method="PATCH", status="204") > 0
        )
        assert value(after, "aiotusd_hook_outbox_events", state="pending") == 0
    assert data_file(server, url).read_bytes() == data


@pytest.mark.slow
async def test_expired_uploads_are_counted(server_process):
    server = server_process("--metrics", "true", "--expiration", "1", "--expiry-interval", "0.2")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        assert (
            await session.post(base + "/files/", headers={**TUS, "Upload-Length": "5"})
        ).status == 201

        async def expired() -> dict | None:
            # The gauge is counted as a scrape begins: a scrape that overlaps the sweep may
            # show the expiry counted but the upload still in progress. The next one may not.
            metrics = await scrape(session, base + "/metrics")
            done = (
                value(metrics, "aiotusd_uploads_expired_total") == 1
                and value(metrics, "aiotusd_uploads_in_progress") == 0
            )
            return metrics if done else None

        metrics = await poll(expired, "the upload to expire and leave the gauge", timeout=15)
        assert value(metrics, "aiotusd_uploads_terminated_total") == 0
        assert value(metrics, "aiotusd_uploads_created_total") == 1


async def test_storage_errors_are_counted(server_process):
    server = server_process("--metrics", "true")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        created = await session.post(base + "/files/", headers={**TUS, "Upload-Length": "20"})
        url = created.headers["Location"]
        patched = await session.patch(
            url, data=b"x" * 10, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
        )
        assert patched.status == 204
        data_file(server, url).unlink()  # storage lost the bytes under the recorded offset
        broken = await session.patch(
            url, data=b"y" * 10, headers={**PATCH_HEADERS, "Upload-Offset": "10"}
        )
        assert broken.status == 500
        metrics = await scrape(session, base + "/metrics")
    assert value(metrics, "aiotusd_storage_errors_total") == 1
    assert requests_of(metrics, "PATCH", 500) == 1


async def test_metrics_on_a_port_of_their_own(server_process):
    metrics_port = free_port()
    server = server_process("--metrics", "true", "--metrics-port", str(metrics_port))
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        assert (
            await session.post(base + "/files/", headers={**TUS, "Upload-Length": "1"})
        ).status == 201
        async with session.get(base + "/metrics") as response:
            assert response.status == 404
        metrics = await scrape(session, f"http://127.0.0.1:{metrics_port}/metrics")
    assert value(metrics, "aiotusd_uploads_created_total") == 1
    assert requests_of(metrics, "POST", 201) == 1


async def test_metrics_tell_the_process_s_descriptors_memory_and_cpu(server_process):
    server = server_process("--metrics", "true")
    assert server.process is not None
    async with aiohttp.ClientSession() as session:
        metrics = await scrape(session, f"http://127.0.0.1:{server.port}/metrics")
    assert_plausible_process(metrics, server.process.pid)


async def test_no_metrics_unless_asked_for_and_health_outside_base_path(server_process):
    server = server_process("--base-path", "/")
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/metrics") as response:
            assert response.status != 200
        # With uploads at the root, these two are still the probes, not upload ids.
        for path, text in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
            async with session.get(base + path) as response:
                assert (response.status, await response.text()) == (200, text)
                assert response.content_type == "text/plain"
            async with session.head(base + path) as response:
                assert response.status == 200


async def test_readyz_fails_while_the_data_directory_is_gone(server_process, tmp_path):
    server = server_process("--database", str(tmp_path / "db" / "aiotusd.sqlite3"))
    base = f"http://127.0.0.1:{server.port}"
    away = tmp_path / "moved-away"
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/readyz") as response:
            assert response.status == 200
        shutil.move(server.data_dir, away)
        try:
            async with session.get(base + "/readyz") as response:
                assert response.status == 503
                reason = await response.text()
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
        finally:
            shutil.move(away, server.data_dir)
        async with session.get(base + "/readyz") as response:
            assert response.status == 200
    assert reason.startswith("not ready: storage: cannot write to the data directory")
    assert reason.endswith("\n") and reason.count("\n") == 1
    assert "not ready: storage" in server.log()
