"""URLs behind reverse proxies: ``behind_proxy``, ``trusted_proxies`` and forwarded headers.

The test client connects from 127.0.0.1, which stands for the proxy next to aiotusd.
"""

from __future__ import annotations

import pytest
from support.http import PATCH_HEADERS, TUS, upload_id

from server.config import ConfigError, load_settings

FORGED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": 'proto=https;host="evil.example:444"',
}


async def location(client, **headers: str) -> str:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": "3", **headers})
    assert response.status == 201, await response.text()
    return response.headers["Location"]


def own(client, path: str = "/files/") -> str:
    return f"http://127.0.0.1:{client.port}{path}"


async def test_without_behind_proxy_forwarded_headers_are_ignored(make_client):
    client = await make_client()
    url = await location(client, **FORGED)
    assert url == own(client) + upload_id(url)


async def test_x_forwarded_headers_build_the_location(make_client):
    client = await make_client(behind_proxy=True)
    url = await location(
        client,
        **{
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "uploads.example.com",
            "X-Forwarded-Prefix": "/tus/",
        },
    )
    assert url == f"https://uploads.example.com/tus/files/{upload_id(url)}"


@pytest.mark.parametrize(
    ("headers", "start"),
    [
        (
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "up.example",
                "X-Forwarded-Port": "8443",
            },
            "https://up.example:8443/files/",
        ),
        (
            {
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "up.example:80",
                "X-Forwarded-Port": "443",
            },
            "https://up.example/files/",
        ),
        (
            {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "up.example:80"},
            "http://up.example/files/",
        ),
        ({"X-Forwarded-Host": "[2001:db8::1]:8080"}, "http://[2001:db8::1]:8080/files/"),
        (
            {"X-Forwarded-Host": "[2001:db8::1]", "X-Forwarded-Port": "81"},
            "http://[2001:db8::1]:81/files/",
        ),
        # One value per hop: the last is the one the proxy next to aiotusd set.
        (
            {"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil.example, up.example"},
            "https://up.example/files/",
        ),
        ({"X-Forwarded-Prefix": "a/b"}, "http://127.0.0.1:{port}/a/b/files/"),
    ],
)
async def test_forwarded_host_port_and_scheme(make_client, headers, start):
    client = await make_client(behind_proxy=True)
    assert (await location(client, **headers)).startswith(start.format(port=client.port))


async def test_rfc_7239_forwarded(make_client):
    client = await make_client(behind_proxy=True)
    url = await location(client, Forwarded='for=192.0.2.60;proto=https;host="up.example:8443"')
    assert url.startswith("https://up.example:8443/files/")
    url = await location(
        client, Forwarded="proto=https;host=up.example", **{"X-Forwarded-Prefix": "/p"}
    )
    assert url.startswith("https://up.example/p/files/")
    # Most proxies set X-Forwarded-* and pass a client's Forwarded on: it is then ignored.
    for proxy_set in ({"X-Forwarded-Host": "up.example"}, {"X-Forwarded-Proto": "http"}):
        url = await location(client, Forwarded="proto=https;host=evil.example", **proxy_set)
        assert "evil" not in url and url.startswith("http://"), url
    # A client's own element comes first; the proxy's (believed) one last.
    url = await location(
        client, Forwarded="host=evil.example;proto=http, host=up.example;proto=https"
    )
    assert url.startswith("https://up.example/files/")


async def test_malformed_forwarded_values_are_ignored(make_client):
    client = await make_client(behind_proxy=True)
    url = await location(
        client,
        **{
            "X-Forwarded-Proto": "javascript",
            "X-Forwarded-Host": "evil.example/x@y",
            "X-Forwarded-Port": "99999",
            "X-Forwarded-Prefix": "/a/../b",
        },
    )
    assert url == own(client) + upload_id(url)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": ""},
        {"X-Forwarded-Host": "", "X-Forwarded-Proto": "http"},
        {"X-Forwarded-Host": ":80"},
        {"X-Forwarded-Host": ":"},
        {"X-Forwarded-Host": "up.example:99999"},
        {"X-Forwarded-Host": "up.example:0"},
        {"X-Forwarded-Host": "user@up.example"},
        {"X-Forwarded-Host": "::1"},
        {"X-Forwarded-Host": "[zz::1]"},
        {"Forwarded": 'host=""'},
        {"Forwarded": 'host=":80"'},
    ],
)
async def test_a_forwarded_host_that_names_no_host_is_ignored(make_client, headers):
    client = await make_client(behind_proxy=True)
    url = await location(client, **headers)
    assert url == own(client) + upload_id(url)


async def test_trusted_proxies_limit_whose_headers_are_believed(make_client):
    untrusted = await make_client(behind_proxy=True, trusted_proxies="10.0.0.0/8,::1")
    url = await location(untrusted, **FORGED)
    assert url == own(untrusted) + upload_id(url)

    trusted = await make_client(behind_proxy=True, trusted_proxies="10.0.0.0/8,127.0.0.0/8")
    url = await location(
        trusted, **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "up.example"}
    )
    assert url.startswith("https://up.example/files/")


async def test_a_forwarded_chain_is_followed_through_trusted_hops(make_client):
    chain = "proto=https;host=public.example, for=10.1.2.3;host=internal.lan"
    both = await make_client(behind_proxy=True, trusted_proxies="127.0.0.1,10.0.0.0/8")
    assert (await location(both, Forwarded=chain)).startswith("https://public.example/files/")
    # The hop from 10.1.2.3 is not trusted: only the element the next proxy added counts.
    nearest = await make_client(behind_proxy=True, trusted_proxies="127.0.0.1")
    assert (await location(nearest, Forwarded=chain)).startswith("http://internal.lan/files/")


async def test_concatenation_takes_the_prefixed_urls_and_names_them_on_head(make_client):
    client = await make_client(behind_proxy=True)
    proxy = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "up.example",
        "X-Forwarded-Prefix": "/uploads",
    }
    urls = []
    for part in (b"abc", b"defg"):
        response = await client.post(
            "/files/",
            headers={**TUS, **proxy, "Upload-Length": str(len(part)), "Upload-Concat": "partial"},
        )
        url = response.headers["Location"]
        assert url.startswith("https://up.example/uploads/files/")
        patched = await client.patch(
            f"/files/{upload_id(url)}", data=part, headers={**PATCH_HEADERS, "Upload-Offset": "0"}
        )
        assert patched.status == 204
        urls.append(url)

    # The absolute URLs the client got, and the server's own paths, both name the parts.
    for parts in (" ".join(urls), " ".join(f"/files/{upload_id(u)}" for u in urls)):
        final = await client.post(
            "/files/", headers={**TUS, **proxy, "Upload-Concat": "final;" + parts}
        )
        assert final.status == 201, await final.text()
        final_path = f"/files/{upload_id(final.headers['Location'])}"
        head = await client.head(final_path, headers={**TUS, **proxy})
        assert head.headers["Upload-Concat"] == "final;" + " ".join(
            f"/uploads/files/{upload_id(u)}" for u in urls
        )
        assert head.headers["Upload-Length"] == "7"
        assert await (await client.get(final_path)).read() == b"abcdefg"

    # Without the proxy's headers, the same upload is named by the server's own paths.
    head = await client.head(final_path, headers=TUS)
    assert head.headers["Upload-Concat"] == "final;" + " ".join(
        f"/files/{upload_id(u)}" for u in urls
    )


async def test_a_prefixed_url_of_another_prefix_is_refused(make_client):
    client = await make_client(behind_proxy=True)
    partial = await location(client, **{"Upload-Concat": "partial"})
    response = await client.post(
        "/files/",
        headers={
            **TUS,
            "X-Forwarded-Prefix": "/uploads",
            "Upload-Concat": f"final;/elsewhere/files/{upload_id(partial)}",
        },
    )
    assert response.status == 400


def test_trusted_proxies_setting_is_checked_and_normalised():
    settings = load_settings(flags={"trusted_proxies": " 10.1.2.3/8, ::1 ,192.168.0.7"})
    assert [str(network) for network in settings.proxy.trusted_proxies] == [
        "10.0.0.0/8", "::1/128", "192.168.0.7/32"
    ]
    with pytest.raises(ConfigError, match="'trusted_proxies'.*not an IP address"):
        load_settings(flags={"trusted_proxies": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="'behind_proxy'"):
        load_settings(environ={"AIOTUSD_BEHIND_PROXY": "maybe"})


async def test_relative_location_is_the_path_below_the_proxy_s_prefix(make_client):
    plain = await make_client(relative_location=True)
    path = await location(plain, **FORGED)
    assert path == "/files/" + upload_id(path)
    assert (await plain.head(path, headers=TUS)).status == 200

    proxied = await make_client(relative_location=True, behind_proxy=True)
    path = await location(
        proxied, **{"X-Forwarded-Host": "up.example", "X-Forwarded-Prefix": "/tus"}
    )
    assert path == "/tus/files/" + upload_id(path)
    # A final upload may name its partials by the paths it was given.
    partial = await location(proxied, **{"Upload-Concat": "partial", "X-Forwarded-Prefix": "/tus"})
    response = await proxied.post(
        "/files/", headers={**TUS, "Upload-Concat": f"final;{partial}", "X-Forwarded-Prefix": "/tus"}
    )
    assert response.status == 201, await response.text()
    assert response.headers["Location"].startswith("/tus/files/")
