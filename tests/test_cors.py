"""CORS: preflights, the headers of every answer, origin lists and credentials."""

from __future__ import annotations

import pytest
from support.http import PATCH_HEADERS, TUS, create_upload

from server.config import ConfigError, load_settings

ORIGIN = "https://app.example"
TUS_REQUEST_HEADERS = {
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-checksum",
    "tus-resumable",
    "x-http-method-override",
    "x-requested-with",
    "content-type",
    "authorization",
    "x-request-id",
}
TUS_RESPONSE_HEADERS = {
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "x-request-id",
    "content-range",
    "etag",
}
METHODS = {"POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS", "PUT"}
"""tus's methods, and the IETF draft's creation by ``PUT``."""


def names(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def preflight(method: str = "PATCH", origin: str = ORIGIN, headers: str = "") -> dict[str, str]:
    request = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request["Access-Control-Request-Headers"] = headers
    return request


def assert_readable(response, origin: str = "*") -> None:
    """A page of ``origin`` may read this answer and every tus header of it."""
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert names(response.headers["Access-Control-Expose-Headers"]) >= TUS_RESPONSE_HEADERS


@pytest.mark.parametrize("path", ["/files/", "/files/0123456789abcdef"])
async def test_preflight_is_answered_with_the_tus_methods_and_headers(client, path):
    response = await client.options(
        path, headers=preflight(headers="upload-offset,tus-resumable,content-type,x-api-key")
    )
    assert response.status == 204
    assert "Tus-Version" not in response.headers  # CORS answered it, not tus
    assert {
        m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")
    } == METHODS
    allowed = names(response.headers["Access-Control-Allow-Headers"])
    assert allowed >= TUS_REQUEST_HEADERS
    assert "x-api-key" in allowed  # an uploader's own header, as asked for
    assert int(response.headers["Access-Control-Max-Age"]) >= 3600
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_a_page_may_speak_the_ietf_draft(client):
    response = await client.options("/files/", headers=preflight(
        "POST", headers="upload-complete,upload-draft-interop-version,content-disposition"))
    assert {"upload-complete", "upload-draft-interop-version", "content-disposition",
            "upload-incomplete", "content-digest", "repr-digest", "want-repr-digest"} <= names(
        response.headers["Access-Control-Allow-Headers"])
    created = await client.post("/files/", data=b"x", headers={
        "Origin": ORIGIN, "Upload-Draft-Interop-Version": "8", "Upload-Complete": "?0"})
    assert created.status == 201
    exposed = names(created.headers["Access-Control-Expose-Headers"])
    assert {"upload-complete", "upload-incomplete", "upload-limit", "accept-patch",
            "upload-offset", "location", "repr-digest"} <= exposed


async def test_put_is_offered_for_the_ietf_draft_only(make_client):
    """The draft creates uploads by PUT too; tus has no PUT."""
    for draft, offered in [(True, METHODS), (False, METHODS - {"PUT"})]:
        client = await make_client(ietf_draft=draft)
        response = await client.options("/files/", headers=preflight("PUT"))
        assert {
            m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")
        } == offered


async def test_a_tus_options_request_is_still_answered_by_tus(client):
    response = await client.options("/files/", headers={"Origin": ORIGIN})
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert "creation" in response.headers["Tus-Extension"]
    assert_readable(response)


async def test_every_answer_of_an_upload_is_readable(client):
    response = await client.post(
        "/files/",
        headers={
            **TUS,
            "Origin": ORIGIN,
            "Upload-Length": "4",
            "Upload-Metadata": "filename YS50eHQ=",
        },
    )
    assert response.status == 201
    assert_readable(response)
    path = response.headers["Location"][response.headers["Location"].index("/files/") :]
    for response in (
        await client.patch(
            path, data=b"ab", headers={**PATCH_HEADERS, "Origin": ORIGIN, "Upload-Offset": "0"}
        ),
        await client.head(path, headers={**TUS, "Origin": ORIGIN}),
        await client.patch(
            path, data=b"cd", headers={**PATCH_HEADERS, "Origin": ORIGIN, "Upload-Offset": "2"}
        ),
        await client.get(path, headers={"Origin": ORIGIN, "Range": "bytes=1-2"}),
        await client.delete(path, headers={**TUS, "Origin": ORIGIN}),
    ):
        assert response.status < 300, response.status
        assert_readable(response)


async def test_errors_carry_the_cors_headers_so_pages_can_read_the_reason(client):
    path = await create_upload(client, 5)
    refused = [
        await client.post("/files/", headers={"Origin": ORIGIN, "Upload-Length": "1"}),  # 412
        await client.head(
            "/files/ffffffffffffffffffffffffffffffff", headers={**TUS, "Origin": ORIGIN}
        ),  # 404
        await client.patch(
            path, data=b"x", headers={**PATCH_HEADERS, "Origin": ORIGIN, "Upload-Offset": "3"}
        ),  # 409
        await client.get(path, headers={"Origin": ORIGIN}),  # 409: not finished
        await client.put(path, headers={**TUS, "Origin": ORIGIN}),  # 405
    ]
    assert [r.status for r in refused] == [412, 404, 409, 409, 405]
    for response in refused:
        assert_readable(response)
        if response.method != "HEAD":
            assert (await response.text()).strip()


async def test_an_answer_to_a_request_without_origin_varies_by_origin_alone(client):
    """No page made the request (a browser sends ``Origin`` to another origin): the CORS
    headers would be read by nobody, and a cache must not hand the answer to a page."""
    path = await create_upload(client, 4)
    plain = [
        await client.patch(path, data=b"ab", headers={**PATCH_HEADERS, "Upload-Offset": "0"}),
        await client.head(path, headers=TUS),
        await client.get("/files/ffffffffffffffffffffffffffffffff"),  # 404
    ]
    assert [r.status for r in plain] == [204, 200, 404]
    for response in plain:
        assert response.headers["Vary"] == "Origin"
        assert not {name for name in response.headers if name.lower().startswith("access-control")}
    from_a_page = await client.head(path, headers={**TUS, "Origin": ORIGIN})
    assert from_a_page.headers["Access-Control-Allow-Origin"] == "*"
    assert "upload-offset" in names(from_a_page.headers["Access-Control-Expose-Headers"])


async def test_a_list_of_origins_echoes_the_allowed_one(make_client):
    client = await make_client(cors_origins="https://app.example,http://localhost:3000")
    allowed = await client.post(
        "/files/", headers={**TUS, "Origin": "http://localhost:3000", "Upload-Length": "1"}
    )
    assert_readable(allowed, "http://localhost:3000")
    assert "origin" in names(allowed.headers["Vary"])
    assert "Access-Control-Allow-Credentials" not in allowed.headers

    other = await client.post(
        "/files/", headers={**TUS, "Origin": "https://evil.example", "Upload-Length": "1"}
    )
    assert other.status == 201
    assert "Access-Control-Allow-Origin" not in other.headers
    assert "origin" in names(other.headers["Vary"])

    # A preflight from an origin not on the list gets tus's answer, which allows nothing.
    refused = await client.options("/files/", headers=preflight(origin="https://evil.example"))
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers
    assert refused.headers["Tus-Version"] == "1.0.0"

    accepted = await client.options("/files/", headers=preflight(origin="https://app.example"))
    assert accepted.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "origin" in names(accepted.headers["Vary"])


async def test_credentials_echo_the_origin_instead_of_a_star(make_client):
    client = await make_client(cors_credentials=True)
    response = await client.options("/files/", headers=preflight(origin="https://a.example"))
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "origin" in names(response.headers["Vary"])
    created = await client.post(
        "/files/", headers={**TUS, "Origin": "https://b.example", "Upload-Length": "1"}
    )
    assert_readable(created, "https://b.example")
    assert created.headers["Access-Control-Allow-Credentials"] == "true"
    # Without an Origin there is nothing to echo.
    plain = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_empty_cors_origins_turns_cors_off(make_client):
    client = await make_client(cors_origins="")
    response = await client.options("/files/", headers=preflight())
    assert response.headers["Tus-Version"] == "1.0.0"
    created = await client.post("/files/", headers={**TUS, "Origin": ORIGIN, "Upload-Length": "1"})
    for answer in (response, created):
        assert not [h for h in answer.headers if h.lower().startswith("access-control-")]


def test_cors_origins_are_checked_and_normalised():
    assert (
        load_settings(flags={"cors_origins": "HTTPS://App.Example/, http://x:8080"}).cors.origins
        == ("https://app.example", "http://x:8080")
    )
    assert load_settings(flags={"cors_origins": "https://a.example,*"}).cors.origins == ("*",)
    for bad in ("app.example", "https://app.example/path", "https://a.example?x=1"):
        with pytest.raises(ConfigError, match="'cors_origins'"):
            load_settings(flags={"cors_origins": bad})


async def test_extra_allowed_and_exposed_headers_are_added_to_tus_s_own(make_client):
    client = await make_client(
        cors_allow_headers="X-Api-Key, Upload-Offset", cors_expose_headers="X-Quota,ETag"
    )
    response = await client.options(
        "/files/", headers=preflight(headers="upload-offset,x-api-key,x-trace")
    )
    allowed = [h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")]
    assert set(map(str.lower, allowed)) >= TUS_REQUEST_HEADERS | {"x-api-key", "x-trace"}
    assert len(allowed) == len(set(map(str.lower, allowed)))  # each once
    path = await create_upload(client, 3, Origin=ORIGIN)
    for answer in (
        await client.head(path, headers={**TUS, "Origin": ORIGIN}),
        await client.head("/files/ffffffffffffffffffffffffffffffff", headers={**TUS, "Origin": ORIGIN}),
    ):
        assert_readable(answer)
        exposed = [h.strip() for h in answer.headers["Access-Control-Expose-Headers"].split(",")]
        assert "X-Quota" in exposed
        assert [h.lower() for h in exposed].count("etag") == 1


def test_extra_cors_headers_must_be_header_names():
    settings = load_settings(flags={"cors_expose_headers": "X-Quota, X-Used"})
    assert settings.cors.expose_headers == ("X-Quota", "X-Used")
    for name in ("cors_expose_headers", "cors_allow_headers"):
        with pytest.raises(ConfigError, match=f"bad value 'X-Ok, bad header' for '{name}'"):
            load_settings(flags={name: "X-Ok, bad header"})
