"""Property tests (hypothesis) for every parser of untrusted header text.

Each parser either returns a well-formed value or raises :class:`BadRequest`; nothing
else may escape, whatever a client sends. Where a value can be written as well as read,
generated values round-trip. Runs are derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import unicodedata
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from support.http import TUS, assert_one_line_error, create_upload

from server.checksum import ALGORITHMS, ExpectedChecksum
from server.content import content_disposition, parse_range
from server.errors import BadRequest, one_line
from server.protocol import (
    MAX_INTEGER,
    Concat,
    format_metadata,
    is_upload_id,
    parse_checksum,
    parse_concat,
    parse_metadata,
    parse_non_negative,
)
from server.proxy import PROXY, ProxyPolicy, external_url

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FEW = settings(PROPERTY, max_examples=100)

# Header text as aiohttp hands it over: any code point, lone surrogates included
# (bytes that are not UTF-8 arrive surrogate-escaped).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
HOSTILE_CHAR = st.one_of(
    st.sampled_from(
        list(" ,;:=/\\\"'.%@?#[]{}<>\t\r\n\x00\x7f+-_~!$&()*|^`")
        + ["..", "\u2003", "\udcff", "é", "٣", "＃"]
    ),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    ANY_CHAR,
)
ANY_TEXT = st.text(ANY_CHAR, max_size=200)
HOSTILE_TEXT = st.one_of(ANY_TEXT, st.lists(HOSTILE_CHAR, max_size=60).map("".join))
DIGITS = st.text(st.sampled_from("0123456789"), min_size=1, max_size=30)
SPACES = st.text(st.sampled_from(" \t"), max_size=2)

# --- Upload-Metadata -------------------------------------------------------------------------

METADATA_KEY = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=20,
)


@PROPERTY
@given(
    st.dictionaries(
        METADATA_KEY,
        st.text(ANY_CHAR.filter(lambda c: not 0xD800 <= ord(c) < 0xE000), max_size=40),
        max_size=12,
    )
)
def test_metadata_round_trips_through_the_formatter(metadata):
    assert parse_metadata(format_metadata(metadata)) == {k: v.encode() for k, v in metadata.items()}


@PROPERTY
@given(
    st.dictionaries(METADATA_KEY, st.binary(max_size=40), max_size=12),
    st.sampled_from([",", ", ", " , "]),
)
def test_metadata_of_any_bytes_round_trips(metadata, separator):
    header = separator.join(
        f"{key} {base64.b64encode(value).decode()}" if value else key
        for key, value in metadata.items()
    )
    assert parse_metadata(header) == metadata


@PROPERTY
@given(HOSTILE_TEXT)
@example("a  b")
@example("a b c")
@example("k ====")
@example("k \udcff")
@example("k ٣٣٣٣")
def test_metadata_of_any_text_is_a_dict_or_bad_request(text):
    try:
        metadata = parse_metadata(text)
    except BadRequest as exc:
        body = one_line(exc.reason)  # as the error middleware writes it
        assert "\n" not in body and body.isprintable()
        return
    for key, value in metadata.items():
        assert re.fullmatch(r"[!-+\--~]+", key) and isinstance(value, bytes)


# --- Upload-Concat ---------------------------------------------------------------------------

UPLOAD_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", fullmatch=True)
BASE = "/files/"
PART_URL = st.tuples(
    st.sampled_from(
        ["", "http://example.com", "https://up.example:8443", "http://[::1]:1080", "//h"]
    ),
    UPLOAD_ID,
    st.sampled_from(["", "?x=1", "#frag"]),
).map(lambda t: (f"{t[0]}{BASE}{t[1]}{t[2]}", t[1]))


@PROPERTY
@given(st.lists(PART_URL, min_size=1, max_size=20), st.sampled_from([" ", "  ", "\t", " \t "]))
def test_concat_valid_url_lists_round_trip(parts, separator):
    header = "final;" + separator.join(url for url, _ in parts)
    assert parse_concat(header, BASE) == Concat(final=True, parts=tuple(i for _, i in parts))


@PROPERTY
@given(st.text(st.sampled_from(" \t"), max_size=3))
def test_concat_partial(padding):
    assert parse_concat(padding + "partial" + padding, BASE) == Concat(final=False)


@PROPERTY
@given(
    st.one_of(
        HOSTILE_TEXT,
        HOSTILE_TEXT.map(lambda t: "final;" + t),
        HOSTILE_TEXT.map(lambda t: "final;/files/" + t),
    )
)
@example("final;/files/..")
@example("final;/files/../files/abc")
@example("final;/files/./abc")
@example("final;/files/abc/..")
@example("final;/files/%2e%2e")
@example("final;http://[/files/abc")
@example("final;http://a\uff03b/files/abc")
@example("final;/other/abc")
@example("final;/filesabc")
@example("final;")
def test_concat_of_any_text_is_a_concat_or_bad_request(text):
    try:
        concat = parse_concat(text, BASE, "/prefix/files/")
    except BadRequest:
        return
    assert isinstance(concat, Concat)
    if not concat.final:
        assert text.strip() == "partial"
        return
    urls = text.strip()[len("final;") :].split()
    assert len(urls) == len(concat.parts)
    for url, part in zip(urls, concat.parts):
        assert is_upload_id(part)
        # The id is the last segment right below a base path: no dot segments, nothing above.
        assert re.search(rf"(^|[^/])(/prefix)?/files/{re.escape(part)}([?#]|$)", url), url


@PROPERTY
@given(
    st.lists(st.sampled_from([".", "..", "a", "files", "%2e%2e", ""]), min_size=1, max_size=5),
    UPLOAD_ID,
)
def test_concat_refuses_dot_segments_and_other_paths(segments, upload_id):
    url = BASE + "/".join(segments) + "/" + upload_id
    with pytest.raises(BadRequest):
        parse_concat("final;" + url, BASE)
    with pytest.raises(BadRequest):
        parse_concat(f"final;/elsewhere/{upload_id}", BASE)


# --- Upload-Checksum -------------------------------------------------------------------------


@PROPERTY
@given(st.sampled_from(sorted(ALGORITHMS)), st.binary(min_size=1, max_size=64), SPACES)
def test_checksum_round_trips(algorithm, digest, padding):
    header = f"{padding}{algorithm} {base64.b64encode(digest).decode()}{padding}"
    assert parse_checksum(header) == (algorithm, digest)


@PROPERTY
@given(st.sampled_from(sorted(ALGORITHMS)))
def test_checksum_of_each_algorithm_is_accepted(algorithm):
    digest = ALGORITHMS[algorithm]().digest()
    expected = ExpectedChecksum(f"{algorithm} {base64.b64encode(digest).decode()}")
    assert expected.matches()


@PROPERTY
@given(
    st.one_of(
        HOSTILE_TEXT,
        HOSTILE_TEXT.map(lambda t: "sha1 " + t),
        HOSTILE_TEXT.map(lambda t: t + " AAAA"),
    )
)
@example("sha1 \udcff")
@example("sha1 ٣٣٣٣")
@example("sha1 ====")
@example("sha1 A")
@example("sha1  AAAA")
def test_checksum_of_any_text_is_parsed_or_bad_request(text):
    try:
        algorithm, digest = parse_checksum(text)
    except BadRequest:
        pass
    else:
        assert algorithm and " " not in algorithm and isinstance(digest, bytes)
    try:
        ExpectedChecksum(text)
    except BadRequest:
        pass


# --- Upload-Length / Upload-Offset -----------------------------------------------------------


@PROPERTY
@given(st.integers(0, MAX_INTEGER), SPACES, SPACES)
def test_non_negative_round_trips(number, before, after):
    assert parse_non_negative(f"{before}{number}{after}", "Upload-Length") == number


@PROPERTY
@given(st.integers(MAX_INTEGER + 1, 10**40))
def test_non_negative_refuses_past_the_largest_integer(number):
    with pytest.raises(BadRequest):
        parse_non_negative(str(number), "Upload-Offset")


@PROPERTY
@given(
    st.one_of(HOSTILE_TEXT, DIGITS, DIGITS.map(lambda d: "-" + d), DIGITS.map(lambda d: "+" + d))
)
@example("٣")
@example("1_000")
@example("1e3")
@example("0x10")
@example("9" * 5000)
@example("")
def test_non_negative_of_any_text_is_an_integer_or_bad_request(text):
    try:
        number = parse_non_negative(text, "Upload-Length")
    except BadRequest as exc:
        assert exc.reason == "Upload-Length must be a non-negative integer"
        return
    assert 0 <= number <= MAX_INTEGER
    assert re.fullmatch(r"[0-9]+", text.strip()) and int(text.strip()) == number


# --- Range -----------------------------------------------------------------------------------


def range_model(first: int | None, last: int | None, size: int) -> tuple[int, int] | None:
    """RFC 9110 section 14.1.2 for one ``bytes=first-last`` range, in unbounded integers."""
    if first is None and last is None:
        return None
    if first is None:
        assert last is not None
        return (size, size) if last == 0 else (max(size - last, 0), size)
    if last is not None and last < first:
        return None  # invalid: the header is ignored
    if first >= size:
        return size, size  # unsatisfiable
    return first, size if last is None else min(last + 1, size)


POSITION = st.one_of(
    st.none(), st.integers(0, 2**20), st.integers(0, 10**40), st.integers(2**63 - 3, 2**63 + 3)
)


@PROPERTY
@given(
    POSITION,
    POSITION,
    st.integers(0, 2**40),
    st.integers(0, 3),
    st.lists(st.sampled_from(["", " ", "\t"]), min_size=4, max_size=4),
)
@example(10**25, 2 * 10**25 - 1, 100, 0, ["", "", "", ""])
@example(2 * 10**25, 10**25, 100, 0, ["", "", "", ""])
@example(10**30, 10**29, 100, 0, ["", "", "", ""])
def test_range_matches_the_model(first, last, size, zeros, spaces):
    def digits(value: int | None) -> str:
        return "" if value is None else "0" * zeros + str(value)

    header = f"bytes={spaces[0]}{digits(first)}{spaces[1]}-{spaces[2]}{digits(last)}{spaces[3]}"
    assert parse_range(header, size) == range_model(first, last, size), header


@PROPERTY
@given(st.one_of(HOSTILE_TEXT, HOSTILE_TEXT.map(lambda t: "bytes=" + t)), st.integers(0, 2**63 - 1))
@example("bytes=" + "9" * 5000 + "-", 10)
@example("bytes=-" + "9" * 5000, 10)
@example("bytes=٣-٤", 10)
@example("bytes=1-2,3-4", 10)
def test_range_of_any_text_never_raises(text, size):
    result = parse_range(text, size)
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size


# --- Forwarded / X-Forwarded-* ---------------------------------------------------------------

FORWARDED_VALUE = st.one_of(
    HOSTILE_TEXT,
    st.sampled_from(
        [
            "https",
            "http",
            "HTTPS",
            "ftp",
            "",
            "a/b",
            "x@y",
            "h st",
            "[::1]",
            "[::1]:99",
            "ex.com:",
            "ex.com:99999",
            "0",
            "65536",
            "/a/../b",
            "a//b",
            "%2e%2e",
            "/up loads/",
        ]
    ),
)
FORWARDED_HEADER = st.one_of(
    HOSTILE_TEXT,
    st.lists(
        st.tuples(
            st.sampled_from(["for", "host", "proto", "by", "x"]), FORWARDED_VALUE, st.booleans()
        ),
        max_size=4,
    ).map(lambda items: ";".join(f'{k}="{v}"' if quoted else f"{k}={v}" for k, v, quoted in items)),
)
HOST = st.sampled_from(["127.0.0.1:1080", "example.com", "[::1]:8080", "up.example:443", "h"])
NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))


@FEW
@given(
    HOST,
    st.dictionaries(
        st.sampled_from(
            ["X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix"]
        ),
        FORWARDED_VALUE,
        max_size=4,
    ),
    st.lists(FORWARDED_HEADER, max_size=3),
    st.booleans(),
)
@example("h", {"X-Forwarded-Host": "evil/x"}, [], False)
@example("h", {}, ['host="a/b"', "host=x@y"], False)
@example("h", {}, ['for=10.0.0.1;host="a b"'], True)
@example("[::1]:8080", {"X-Forwarded-Port": "99"}, [], False)
def test_forwarded_headers_never_raise_nor_yield_a_bad_host(host, x_forwarded, forwarded, trusted):
    headers = CIMultiDict({"Host": host, **x_forwarded})
    for value in forwarded:
        headers.add("Forwarded", value)
    app = web.Application()
    app[PROXY] = ProxyPolicy(True, NETWORKS if trusted else ())
    request = make_mocked_request("POST", "/files/", headers=headers, app=app).clone(
        remote="127.0.0.1"
    )
    url = external_url(request, "/files/abc")
    match = re.fullmatch(r"(https?)://([^/]*)((?:/[^/]+)*)/files/abc", url)
    assert match, url
    external_host, prefix = match.group(2), match.group(3)
    assert not re.search(r"[/@\s]", external_host), url
    assert not any(ord(c) < 0x21 or ord(c) >= 0x7F for c in url), url
    assert "/../" not in prefix + "/" and "/./" not in prefix + "/", url


# --- Content-Disposition ---------------------------------------------------------------------

_DISPOSITION_RE = re.compile(
    r"(inline|attachment)"
    r'(; filename="[^"\\\x00-\x1f\x7f]*")?'
    r"(; filename\*=UTF-8''([A-Za-z0-9%._~-]*))?"
)


@PROPERTY
@given(st.one_of(st.none(), HOSTILE_TEXT), st.booleans())
@example('a"; filename="evil.html', False)
@example("a\r\nSet-Cookie: x=1", True)
@example("\\\\server\\share\\x.exe", False)
@example("\udcff", False)
def test_content_disposition_is_always_one_safe_header(filename, inline):
    header = content_disposition(filename, inline)
    assert header.isascii() and header.isprintable(), header
    match = _DISPOSITION_RE.fullmatch(header)
    assert match, header
    assert match.group(1) == ("inline" if inline else "attachment")
    if match.group(4) is not None:
        name = unquote(match.group(4), errors="strict")
        assert name and "/" not in name and "\\" not in name
        assert all(unicodedata.category(ch)[0] not in "CZ" or ch == " " for ch in name), name


# --- caps on metadata and concatenation ------------------------------------------------------


async def test_metadata_longer_than_the_cap_is_400(make_client):
    client = await make_client(max_metadata_size=100)
    fits = "k " + base64.b64encode(b"x" * 72).decode()
    assert len(fits) == 98
    await create_upload(client, 1, **{"Upload-Metadata": fits})
    too_long = "k " + base64.b64encode(b"x" * 75).decode()
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": too_long}
    )
    await assert_one_line_error(response, 400)
    assert "Upload-Metadata is longer than the maximum of 100 bytes" in await response.text()


async def test_metadata_cap_counts_bytes_not_characters(make_client):
    client = await make_client(max_metadata_size=10)
    # 9 characters, 13 bytes in UTF-8: aiohttp hands the header over decoded.
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "kéééé"}
    )
    await assert_one_line_error(response, 400)


async def test_default_metadata_cap_is_4_kib(client):
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": "k" * 4097}
    )
    await assert_one_line_error(response, 400)
    await create_upload(client, 1, **{"Upload-Metadata": "k" * 4096})


async def test_final_with_more_parts_than_the_cap_is_400(make_client):
    client = await make_client(max_concat_parts=3)
    parts = [await create_upload(client, 1, **{"Upload-Concat": "partial"}) for _ in range(4)]
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)}
    )
    await assert_one_line_error(response, 400)
    assert "at most 3 are allowed" in await response.text()
    response = await client.post(
        "/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts[:3])}
    )
    assert response.status == 201, await response.text()


async def test_default_concat_cap_is_100(client):
    # Checked before any part is looked up: unknown parts would give another 400.
    parts = " ".join(f"/files/{i:x}" for i in range(101))
    response = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{parts}"})
    await assert_one_line_error(response, 400)
    assert "at most 100 are allowed" in await response.text()
