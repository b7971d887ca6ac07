"""Security guarantees: unguessable ids, no path traversal, sandboxed downloads, no listing,
and tenants kept apart by the pre-create and pre-access hooks."""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support.http import (
    PATCH_HEADERS,
    TUS,
    ClientFactory,
    assert_one_line_error,
    create_upload,
    head_offset,
    path_of,
    upload_id,
)
from support.storage import data_files
from yarl import URL

from server.app import create_app
from server.config import Settings
from server.hooks import PythonHook
from server.uploads import new_upload_id
from storage_backends.filesystem import FilesystemBackend

DATA = b"<script>alert(document.cookie)</script>"
SECRET = b"not for clients"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def finished(client: TestClient, auth: dict[str, str] | None = None, **headers: str) -> str:
    """A finished upload of :data:`DATA`; ``auth`` goes with both of its requests."""
    path = await create_upload(client, len(DATA), **(auth or {}), **headers)
    response = await client.patch(
        path, data=DATA, headers={**PATCH_HEADERS, **(auth or {}), "Upload-Offset": "0"}
    )
    assert response.status == 204
    return path


# --- ids ----------------------------------------------------------------------------------


def test_ids_are_128_random_bits_in_hex() -> None:
    ids = {new_upload_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", upload) for upload in ids)
    # Every hex digit turns up in every position: no fixed prefix, counter or timestamp.
    for position in range(32):
        assert len({upload[position] for upload in ids}) == 16, position


async def test_the_id_of_a_new_upload_comes_from_the_csprng(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id in ``Location`` is what ``secrets.token_hex(16)`` (os.urandom) returned."""
    returned: list[tuple[int, str]] = []
    token_hex = secrets.token_hex

    def spy(nbytes: int) -> str:
        returned.append((nbytes, token_hex(nbytes)))
        return returned[-1][1]

    monkeypatch.setattr(secrets, "token_hex", spy)
    path = await create_upload(client, 1)
    assert (16, upload_id(path)) in returned


# --- path traversal -----------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes, the database's files left out."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith("aiotusd.sqlite3")
    }


def traversal_paths(tmp_path: Path) -> list[str]:
    """Request paths (sent as they are) that would reach ``tmp_path/secret`` or a file of the
    data directory if an id were taken as a file name."""
    absolute = str(tmp_path / "secret")
    encoded = absolute.replace("/", "%2F")
    return [
        "/files/../secret",
        "/files/..%2fsecret",
        "/files/..%2Fsecret",
        "/files/%2e%2e%2fsecret",
        "/files/%2E%2E/secret",
        "/files/.%2e/secret",
        "/files/%252e%252e%252fsecret",
        "/files/..%5csecret",
        "/files/..%5c..%5csecret",
        "/files/%5csecret",
        "/files/..\\secret",
        "/files/\\..\\..\\secret",
        "/files/" + encoded,
        "/files/" + absolute,
        "/files//" + absolute.lstrip("/"),
        "/files/secret%00",
        "/files/%00",
        "/files/secret%00.png",
        "/files/..",
        "/files/.",
        "/files/%2e",
        "/files/aiotusd.sqlite3",
        "/files/aiotusd.sqlite3-wal",
        "/files/stray0file%2f..%2f..%2fsecret",
    ]


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "GET", "DELETE", "POST"])
async def test_path_traversal_never_reaches_a_file(
    make_client: ClientFactory, settings: Settings, tmp_path: Path, method: str
) -> None:
    client = await make_client()
    (tmp_path / "secret").write_bytes(SECRET)
    # A file in the data directory with a name an id could have, that is no upload.
    (Path(settings.storage.data_dir) / "stray0file").write_bytes(SECRET)
    real = await finished(client)
    before = snapshot(tmp_path)
    headers = {**PATCH_HEADERS, "Upload-Offset": "0", "Upload-Length": "1"}
    if method == "POST":
        headers["X-HTTP-Method-Override"] = "DELETE"

    for path in traversal_paths(tmp_path):
        response = await client.request(method, URL(path, encoded=True), headers=headers, data=b"x")
        body = await response.read()
        assert response.status in (400, 404, 405), (path, response.status)
        assert SECRET not in body and DATA not in body, path
        assert "Upload-Offset" not in response.headers, path
        if method != "HEAD":
            await assert_one_line_error(response)

    stray = await client.request(method, "/files/stray0file", headers=headers, data=b"x")
    assert stray.status == 404
    assert snapshot(tmp_path) == before
    assert sorted(data_files(settings)) == sorted([upload_id(real), "stray0file"])
    assert await head_offset(client, real) == str(len(DATA))


@pytest.mark.parametrize(
    "name", ["../secret", "..", ".", "/etc/passwd", "a/../../secret", ".hidden"]
)
def test_the_filesystem_backend_refuses_names_that_leave_its_directory(
    tmp_path: Path, name: str
) -> None:
    """The last line of defence, should an id ever get past the router and the database."""
    backend = FilesystemBackend(tmp_path / "data")
    with pytest.raises(ValueError, match="not an upload id"):
        backend.path(name)


@pytest.mark.parametrize(
    "part",
    ["/files/..%2fsecret", "/files/../data/stray0file", "/files/%2e%2e", "/etc/passwd",
     "/files/stray0file", "/files/a\\..\\secret", "/files/secret%00"],
)
async def test_concatenation_names_only_uploads(
    make_client: ClientFactory, settings: Settings, tmp_path: Path, part: str
) -> None:
    client = await make_client()
    (tmp_path / "secret").write_bytes(SECRET)
    (Path(settings.storage.data_dir) / "stray0file").write_bytes(SECRET)
    partial = await finished(client, **{"Upload-Concat": "partial"})
    before = snapshot(tmp_path)
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": f"final;{partial} {part}"}
    )
    await assert_one_line_error(response, 400)
    assert snapshot(tmp_path) == before


# --- downloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filetype",
    [
        "text/html", "TEXT/HTML", " text/html ", "text/html; charset=utf-8",
        "image/svg+xml", "application/xhtml+xml", "application/xml", "text/xml",
        "text/javascript", "application/javascript", "application/ecmascript", "text/css",
        "application/x-shockwave-flash", "multipart/x-mixed-replace; boundary=x",
        "text/vtt", "application/json", "application/wasm", "text/html\r\nX-XSS: 0",
        "image/png, text/html", "text/plain/../html",
    ],
)
async def test_active_content_is_only_ever_an_attachment(client: TestClient, filetype: str) -> None:
    metadata = f"filetype {b64(filetype)},filename {b64('x.html')}"
    path = await finished(client, **{"Upload-Metadata": metadata})
    for headers in ({}, {"Range": "bytes=0-7"}):
        response = await client.get(path, headers=headers)
        assert response.status in (200, 206)
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"] == 'attachment; filename="x.html"'
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert "X-XSS" not in response.headers


@pytest.mark.parametrize(
    "filetype, content_type",
    [
        ("image/png", "image/png"),
        ("text/plain", "text/plain; charset=utf-8"),
        ("application/pdf", "application/pdf"),
        ("text/plain; text/html", "text/plain; charset=utf-8"),
    ],
)
async def test_inline_types_are_sandboxed_too(
    client: TestClient, filetype: str, content_type: str
) -> None:
    """Bytes shown inline are whatever the uploader sent (HTML in a "png" here): the browser
    must neither sniff them into HTML nor run anything in them."""
    path = await finished(client, **{"Upload-Metadata": f"filetype {b64(filetype)}"})
    response = await client.get(path)
    assert response.status == 200 and await response.read() == DATA
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == "inline"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


# --- no listing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/files/"), ("HEAD", "/files/"), ("GET", "/files"), ("HEAD", "/files"),
     ("PROPFIND", "/files/"), ("GET", "/files/?list=1"), ("GET", "/files/*"),
     ("GET", "/"), ("GET", "/files/%2a"), ("OPTIONS", "/files/")],
)
async def test_uploads_cannot_be_listed(client: TestClient, method: str, path: str) -> None:
    ids = [upload_id(await finished(client)) for _ in range(3)]
    response = await client.request(method, URL(path, encoded=True), headers=TUS)
    body = await response.text()
    if method == "OPTIONS":
        assert response.status == 204
    else:
        assert response.status in (404, 405), response.status
    answer = body + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    assert not any(upload in answer for upload in ids)
    assert not re.search(r"[0-9a-f]{32}", body)


# --- tenants ------------------------------------------------------------------------------


def tenant_hooks() -> PythonHook:
    """Hooks that keep tenants apart: the ``Authorization`` bearer token names the tenant.

    ``pre-create`` refuses anonymous uploads, notes the new upload's tenant, and refuses a
    final upload that names a partial upload of another tenant; ``pre-access`` refuses
    every request on an upload of another tenant."""
    owners: dict[str, str] = {}

    def tenant(event: dict[str, Any]) -> str | None:
        value = event["request"]["headers"].get("Authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None

    async def hooks(event: dict[str, Any]) -> dict[str, Any] | None:
        who = tenant(event)
        upload = event["upload"]
        if event["type"] == "pre-create":
            parts = upload["partial_uploads"] or []
            if who is None or any(owners.get(part) != who for part in parts):
                return {"reject": {"status": 403, "body": "not yours\n"}}
            owners[upload["id"]] = who
        elif event["type"] == "pre-access" and owners.get(upload["id"]) != who:
            return {"reject": {"status": 404, "body": "no such upload\n"}}
        return None

    return hooks


async def test_a_pre_access_hook_keeps_tenants_apart(
    aiohttp_client: Any, settings: Settings
) -> None:
    settings = settings.with_values(hooks_events="pre-create,pre-access")
    client = await aiohttp_client(create_app(settings, hooks=tenant_hooks()))
    alice = {"Authorization": "Bearer alice"}
    mallory = {"Authorization": "Bearer mallory"}

    anonymous = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert anonymous.status == 403
    path = await finished(client, alice)
    partial = await finished(client, alice, **{"Upload-Concat": "partial"})

    attempts = [
        ("HEAD", path, {**TUS}),
        ("GET", path, {}),
        ("GET", path, {"Range": "bytes=0-3"}),
        ("PATCH", path, {**PATCH_HEADERS, "Upload-Offset": str(len(DATA))}),
        ("DELETE", path, {**TUS}),
        ("POST", path, {**TUS, "X-HTTP-Method-Override": "DELETE"}),
        ("POST", path, {**TUS, "X-HTTP-Method-Override": "GET"}),
        ("HEAD", partial, {**TUS}),
    ]
    for method, target, headers in attempts:
        response = await client.request(method, target, headers={**headers, **mallory})
        assert response.status == 404, (method, headers)
        assert DATA not in await response.read()
        assert "Upload-Offset" not in response.headers and "Upload-Length" not in response.headers
    # Nor can another tenant read a partial upload by concatenating it into one of its own:
    # pre-access refuses each part before pre-create is asked.
    stolen = await client.post(
        "/files/", headers={**TUS, **mallory, "Upload-Concat": f"final;{partial}"}
    )
    assert stolen.status == 404

    response = await client.get(path, headers=alice)
    assert response.status == 200 and await response.read() == DATA
    final = await client.post(
        "/files/", headers={**TUS, **alice, "Upload-Concat": f"final;{partial}"}
    )
    assert final.status == 201
    response = await client.get(path_of(final), headers=alice)
    assert response.status == 200 and await response.read() == DATA


async def test_pre_access_alone_keeps_a_partial_out_of_another_tenants_final_upload(
    aiohttp_client: Any, settings: Settings
) -> None:
    # Only pre-access: naming a partial upload in a final one is access to it.
    settings = settings.with_values(hooks_events="pre-create,pre-access")
    owners: dict[str, str] = {}

    async def hooks(event: dict[str, Any]) -> dict[str, Any] | None:
        who = event["request"]["headers"].get("Authorization", "")
        if event["type"] == "pre-create":
            owners[event["upload"]["id"]] = who
        elif owners.get(event["upload"]["id"]) != who:
            return {"reject": {"status": 404, "body": "no such upload\n"}}
        return None

    client = await aiohttp_client(create_app(settings, hooks=hooks))
    alice = {"Authorization": "Bearer alice"}
    partial = await finished(client, alice, **{"Upload-Concat": "partial"})
    stolen = await client.post(
        "/files/", headers={**TUS, "Authorization": "Bearer mallory",
                            "Upload-Concat": f"final;{partial}"}
    )
    assert stolen.status == 404
    assert "Location" not in stolen.headers
    final = await client.post("/files/", headers={**TUS, **alice, "Upload-Concat": f"final;{partial}"})
    assert final.status == 201
    response = await client.get(path_of(final), headers=alice)
    assert response.status == 200 and await response.read() == DATA
