"""The demo page (``--demo``) in a real browser, uploading from another origin.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; ``.ci/run`` installs it, and
Playwright never downloads a browser here). A real aiotusd runs with ``--demo`` on
``127.0.0.1``; the page it renders, with the assets it serves, is published by a second
web server and opened as ``http://localhost:{port}/``: another origin, so every tus
request is a cross-origin one that only CORS lets through. The file goes in through the
Dashboard's own file input and upload button; the link the page shows must lead to the
same bytes, which must also be on disk. A screenshot is kept under ``tmp_path``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Request, sync_playwright
from support.http import TUS
from support.processes import ServerProcess, free_port, wait_listening
from support.storage import data_file, payload

from server.demo import STATIC

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``other_origin(html)``: publish the page on a second server; returns its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def publish(html: str) -> str:
        site = tmp_path / "site"
        site.mkdir()
        (site / "index.html").write_text(html, encoding="utf-8")
        shutil.copytree(STATIC / "demo", site / "_demo")
        port = free_port()
        log_path = tmp_path / "site.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                 "--directory", str(site), str(port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        processes.append(process)
        wait_listening(process, port, "the page's web server", log_path.read_text)
        return f"http://localhost:{port}/"

    yield publish
    for process in processes:
        process.kill()
        process.wait(timeout=10)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.e2e
@pytest.mark.slow
def test_upload_through_the_dashboard_from_another_origin(
    server_process: Callable[..., ServerProcess],
    other_origin: Callable[[str], str],
    browser: Browser,
    tmp_path: Path,
) -> None:
    server = server_process("--demo", "true")
    status, page_html = fetch(f"http://127.0.0.1:{server.port}/")
    assert status == 200
    assert f'data-endpoint="{server.url}"' in page_html.decode()
    page_url = other_origin(page_html.decode())
    page_origin = page_url.rstrip("/")

    content = payload(300 * 1024, seed=5)
    upload_path = tmp_path / "hello-browser.bin"
    upload_path.write_bytes(content)

    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    tus_requests: list[Request] = []
    page.on("request", lambda r: r.url.startswith(server.url) and tus_requests.append(r))

    page.goto(page_url, wait_until="load")
    assert page.locator("#endpoint").text_content() == server.url
    file_input = page.locator("input.uppy-Dashboard-input[type=file]").first
    file_input.wait_for(state="attached")
    file_input.set_input_files(str(upload_path))
    page.locator(".uppy-Dashboard-Item").first.wait_for(state="visible")
    page.locator("button.uppy-StatusBar-actionBtn--upload").click()

    link = page.locator("#uploads a").first
    link.wait_for(state="visible")
    page.locator(".uppy-StatusBar.is-complete").wait_for(state="visible")
    screenshot = tmp_path / "demo-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    href = link.get_attribute("href")
    name = link.text_content()
    origins = {request.all_headers().get("origin") for request in tus_requests}
    page.close()

    assert not problems, problems
    assert name == upload_path.name
    assert href is not None and href.startswith(server.url), href
    # The uploads really came from the other origin, past CORS.
    methods = {request.method for request in tus_requests}
    assert {"POST", "PATCH"} <= methods, methods
    assert origins == {page_origin}, origins

    assert data_file(server, href).read_bytes() == content
    status, downloaded = fetch(href, TUS)
    assert status == 200 and downloaded == content

    data = screenshot.read_bytes()
    assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


@pytest.mark.e2e
@pytest.mark.slow
def test_pause_and_resume_in_the_dashboard(
    server_process: Callable[..., ServerProcess],
    other_origin: Callable[[str], str],
    browser: Browser,
    tmp_path: Path,
) -> None:
    server = server_process("--demo", "true")
    page_url = other_origin(fetch(f"http://127.0.0.1:{server.port}/")[1].decode())
    size = 4 * 1024 * 1024
    content = payload(size, seed=6)
    upload_path = tmp_path / "paused.bin"
    upload_path.write_bytes(content)

    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    tus_requests: list[Request] = []
    page.on("request", lambda r: r.url.startswith(server.url) and tus_requests.append(r))
    # Slow the browser's uploads down (512 KiB/s) so that there is time to pause.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 0, "downloadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": 512 * 1024})

    page.goto(page_url, wait_until="load")
    page.locator("input.uppy-Dashboard-input[type=file]").first.set_input_files(str(upload_path))
    page.locator("button.uppy-StatusBar-actionBtn--upload").click()
    page.wait_for_function(
        "Number(document.querySelector('.uppy-StatusBar-progress')"
        "?.getAttribute('aria-valuenow')) >= 15"
    )
    toggle = page.locator("button[data-cy=togglePauseResume]")
    assert toggle.get_attribute("title") == "Pause"
    toggle.click()
    page.locator("button[data-cy=togglePauseResume][title=Resume]").wait_for(state="visible")
    page.screenshot(path=str(tmp_path / "demo-paused.png"), full_page=True)

    # The server holds part of the file: what arrived before the pause.
    upload_url = next(r for r in tus_requests if r.method == "PATCH").url

    def offset() -> int:
        request = urllib.request.Request(upload_url, method="HEAD", headers=TUS)
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.headers["Upload-Offset"])

    deadline = time.monotonic() + 10
    while (paused_at := offset()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < paused_at < size, paused_at
    sent_before = len(tus_requests)

    cdp.send("Network.emulateNetworkConditions", {**conditions, "uploadThroughput": -1})
    toggle.click()
    page.locator("#uploads a").first.wait_for(state="visible")
    page.locator(".uppy-StatusBar.is-complete").wait_for(state="visible")
    # Resumed, not restarted: the upload's offset asked for, the rest sent to the same URL.
    resumed = [r for r in tus_requests[sent_before:] if r.url == upload_url]
    assert [r.method for r in resumed][:2] == ["HEAD", "PATCH"], [r.method for r in resumed]
    resumed_offsets = [
        int(r.all_headers()["upload-offset"]) for r in resumed if r.method == "PATCH"
    ]
    assert resumed_offsets and resumed_offsets[0] >= paused_at > 0, (resumed_offsets, paused_at)
    assert not any(r.method == "POST" for r in tus_requests[sent_before:])
    href = page.locator("#uploads a").first.get_attribute("href")
    page.close()

    assert href == upload_url
    assert data_file(server, href).read_bytes() == content


async def test_without_demo_there_is_no_page(make_client) -> None:
    client = await make_client()
    assert (await client.get("/")).status == 404
    assert (await client.get("/_demo/uppy/uppy.min.js")).status == 404


async def test_demo_page_and_its_assets(make_client) -> None:
    client = await make_client(demo=True)
    response = await client.get("/")
    assert response.status == 200
    assert response.content_type == "text/html"
    text = await response.text()
    assert f'data-endpoint="http://{client.host}:{client.port}/files/"' in text
    for asset in ("_demo/uppy/uppy.min.js", "_demo/uppy/uppy.min.css", "_demo/demo.js"):
        assert asset in text
        response = await client.get("/" + asset)
        assert response.status == 200, asset
        assert len(await response.read()) > 0
    assert "https://" not in text.split("<body")[0]  # nothing from other sites


async def test_demo_page_behind_a_proxy_names_the_public_endpoint(make_client) -> None:
    client = await make_client(demo=True, behind_proxy=True)
    response = await client.get(
        "/",
        headers={
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "uploads.example.com",
            "X-Forwarded-Prefix": "/uploads",
        },
    )
    assert response.status == 200
    assert 'data-endpoint="https://uploads.example.com/uploads/files/"' in await response.text()


async def test_demo_page_beside_uploads_at_the_root(make_client) -> None:
    client = await make_client(demo=True, base_path="/")
    response = await client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    response = await client.post("/", headers={**TUS, "Upload-Length": "3"})
    assert response.status == 201, await response.text()
    assert (await client.get("/_demo/demo.js")).status == 200
