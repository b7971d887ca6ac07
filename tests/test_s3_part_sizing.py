"""Part sizing and object headers of the S3 backend, as pure functions: no S3, no disk.

S3's rules: at most ``max_parts`` parts (10,000 on AWS, fewer on some stores), each but
the last at least 5 MiB, none over 5 GiB; Cloudflare R2 also wants every part but the
last of one size. A length may be unknown (deferred) until late in the upload.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import S3Section, Settings, StorageSettings
from storage_backends.base import StorageError
from storage_backends.s3 import S3Settings, object_headers
from storage_backends.s3.parts import (
    MAX_PART,
    MIB,
    MIN_PART,
    Part,
    copy_ranges,
    copyable,
    cut_parts,
    declared_part_size,
    growth_step,
    part_target,
    parts_from_json,
    parts_to_json,
    plan_part_size,
)

GIB = 1024 * MIB


def test_parts_are_never_under_5_mib_whatever_the_settings_say() -> None:
    settings = Settings(
        storage=StorageSettings(data_dir="/srv/tus", fsync="none"),
        s3=S3Section(part_size=MIB, concurrency=0),
    )
    s3 = S3Settings.from_settings(settings)
    assert (s3.part_size, s3.concurrency) == (MIN_PART, 1)
    assert s3.spool == Path("/srv/tus/s3-spool")
    assert plan_part_size(1, part_size=s3.part_size, max_parts=s3.max_parts) == MIN_PART


@pytest.mark.parametrize(
    ("length", "part_size", "max_parts", "expected"),
    [
        (None, 5 * MIB, 10_000, 5 * MIB),  # deferred: the configured size, for now
        (None, 8 * MIB, 10_000, 8 * MIB),
        (0, 5 * MIB, 10_000, 5 * MIB),
        (1, 5 * MIB, 10_000, 5 * MIB),
        (5 * MIB * 10_000, 5 * MIB, 10_000, 5 * MIB),  # exactly max_parts parts
        (5 * MIB * 10_000 + 1, 5 * MIB, 10_000, 6 * MIB),  # one byte more: the next MiB
        (11 * MIB, 5 * MIB, 2, 6 * MIB),  # max_parts configured low
        (10 * MIB, 5 * MIB, 2, 5 * MIB),
        (10 * MIB + 1, 5 * MIB, 2, 6 * MIB),
        (7 * MIB, 5 * MIB, 1, 7 * MIB),  # one part: the whole upload
        (MAX_PART * 10_000, 5 * MIB, 10_000, MAX_PART),  # the largest upload there is
        (MAX_PART, 5 * MIB, 1, MAX_PART),
    ],
)
def test_plan_part_size(length: int | None, part_size: int, max_parts: int, expected: int) -> None:
    assert plan_part_size(length, part_size=part_size, max_parts=max_parts) == expected


@pytest.mark.parametrize(
    ("length", "max_parts"),
    [(MAX_PART * 10_000 + 1, 10_000), (MAX_PART + 1, 1), (2 * MAX_PART + 1, 2)],
)
def test_an_upload_that_needs_parts_over_5_gib_is_refused(length: int, max_parts: int) -> None:
    with pytest.raises(StorageError, match=f"an upload of {length} bytes needs parts over 5 GiB"):
        plan_part_size(length, part_size=5 * MIB, max_parts=max_parts)


@pytest.mark.parametrize("max_parts", [1, 2, 3, 1000, 10_000])
@pytest.mark.parametrize("part_size", [MIN_PART, 8 * MIB])
def test_planned_parts_follow_s3s_rules_at_the_limits(part_size: int, max_parts: int) -> None:
    limits = [part_size * max_parts, MAX_PART * max_parts, MIN_PART * (max_parts - 1)]
    for limit in limits:
        for length in (limit - 1, limit, limit + 1, (limit + 1) // 3):
            if length < 0 or length > MAX_PART * max_parts:
                continue
            size = plan_part_size(length, part_size=part_size, max_parts=max_parts)
            full, last = divmod(length, size)
            assert part_size <= size <= MAX_PART, (length, size)
            assert size % MIB == 0, (length, size)
            assert full + (last > 0) <= max_parts, (length, size)  # the last part is smaller


@pytest.mark.parametrize(
    ("part_size", "number", "grows", "max_parts", "expected"),
    [
        (8 * MIB, 1, False, 10_000, 8 * MIB),  # length known, or equal parts: never grows
        (8 * MIB, 10_000, False, 10_000, 8 * MIB),
        (8 * MIB, 1, True, 10_000, 8 * MIB),  # deferred: doubles every 1,250 parts
        (8 * MIB, 1250, True, 10_000, 8 * MIB),
        (8 * MIB, 1251, True, 10_000, 16 * MIB),
        (8 * MIB, 2501, True, 10_000, 32 * MIB),
        (8 * MIB, 10_000, True, 10_000, 1024 * MIB),
        (GIB, 10_000, True, 10_000, MAX_PART),  # never over 5 GiB
        (5 * MIB, 1, True, 8, 5 * MIB),  # few parts: doubles every part
        (5 * MIB, 2, True, 8, 10 * MIB),
        (5 * MIB, 3, True, 1, 20 * MIB),
    ],
)
def test_part_target(part_size: int, number: int, grows: bool, max_parts: int, expected: int) -> None:
    assert part_target(part_size, number, grows=grows, max_parts=max_parts) == expected


def test_deferred_parts_hold_255_times_the_first_steps_bytes() -> None:
    part_size, max_parts = 5 * MIB, 10_000
    step = growth_step(max_parts)
    total = sum(
        part_target(part_size, number, grows=True, max_parts=max_parts)
        for number in range(1, max_parts + 1)
    )
    assert total == 255 * step * part_size


@pytest.mark.parametrize(
    ("length", "current", "closed", "stored", "max_parts", "expected"),
    [
        (20 * MIB, 5 * MIB, 0, 0, 10_000, 5 * MIB),  # fits as it is
        (30 * MIB, 5 * MIB, 2, 10 * MIB, 4, 10 * MIB),  # 20 MiB left for 2 parts
        (30 * MIB + 1, 5 * MIB, 2, 10 * MIB, 4, 11 * MIB),  # rounded up to a whole MiB
        (100 * MIB, 5 * MIB, 4, 20 * MIB, 4, 80 * MIB),  # no part numbers left: one last part
        (40 * MIB, 16 * MIB, 1, 8 * MIB, 10_000, 16 * MIB),  # grown parts stay grown
        (MAX_PART * 2 + 1, 5 * MIB, 0, 0, 2, None),  # needs parts over 5 GiB
    ],
)
def test_declared_length_resizes_the_parts_left(
    length: int, current: int, closed: int, stored: int, max_parts: int, expected: int | None
) -> None:
    size = declared_part_size(
        length, current=current, closed=closed, stored=stored, part_size=5 * MIB,
        max_parts=max_parts, equal_parts=False,
    )
    assert size == expected


@pytest.mark.parametrize(
    ("length", "current", "closed", "expected"),
    [
        (20 * MIB, 5 * MIB, 0, 5 * MIB),  # fits in 4 parts
        (20 * MIB, 5 * MIB, 2, 5 * MIB),
        (21 * MIB, 5 * MIB, 0, 6 * MIB),  # no part closed yet: all get larger
        (21 * MIB, 5 * MIB, 1, None),  # part 1 is 5 MiB already: no equal size fits
    ],
)
def test_declared_length_with_equal_parts(
    length: int, current: int, closed: int, expected: int | None
) -> None:
    size = declared_part_size(
        length, current=current, closed=closed, stored=closed * current, part_size=5 * MIB,
        max_parts=4, equal_parts=True,
    )
    assert size == expected


def parts(*pairs: tuple[int, str | None]) -> list[Part]:
    return [Part(size, etag) for size, etag in pairs]


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, parts((0, None))),
        (3, parts((3, None))),  # into part 1: it is the tail again, to be sent again
        (5, parts((5, "a"), (0, None))),  # part 1 ends there: a fresh tail
        (7, parts((5, "a"), (2, None))),
        (9, parts((5, "a"), (4, "b"), (0, None))),
        (10, parts((5, "a"), (4, "b"), (1, None))),
        (11, None),  # more than the parts hold: lost
    ],
)
def test_cut_parts_to_the_committed_offset(offset: int, expected: list[Part] | None) -> None:
    recorded = parts((5, "a"), (4, "b"), (1, None))
    assert cut_parts(recorded, offset) == expected
    assert recorded == parts((5, "a"), (4, "b"), (1, None))  # a copy: the record is untouched


def test_parts_are_stored_as_json_pairs() -> None:
    stored = json.loads('[[5242880, "\\"etag\\""], [12, null]]')
    typed = parts_from_json(stored)
    assert typed == [Part(5 * MIB, '"etag"'), Part(12, None)]
    assert parts_to_json(typed) == stored
    assert json.dumps(parts_to_json(typed)) == '[[5242880, "\\"etag\\""], [12, null]]'


@pytest.mark.parametrize(
    ("pieces", "max_parts", "equal_parts", "expected"),
    [
        ([], 10_000, False, False),
        ([("a", 5 * MIB), ("b", MIB)], 10_000, False, True),  # only the last under 5 MiB
        ([("a", MIB), ("b", 5 * MIB)], 10_000, False, False),
        ([("a", 5 * MIB), ("b", 5 * MIB), ("c", MIB)], 2, False, False),  # too many parts
        ([("a", 6 * MIB), ("b", 5 * MIB), ("c", MIB)], 10_000, True, False),  # R2: sizes differ
        ([("a", 6 * MIB), ("b", 5 * MIB)], 10_000, True, True),  # R2: a smaller last part
        ([("a", 5 * MIB), ("b", 5 * MIB), ("c", MIB)], 10_000, True, True),
        ([("a", 5 * MIB), ("b", 6 * MIB)], 10_000, True, False),  # R2: the last larger
    ],
)
def test_copyable(
    pieces: list[tuple[str, int]], max_parts: int, equal_parts: bool, expected: bool
) -> None:
    assert copyable(pieces, max_parts=max_parts, equal_parts=equal_parts) is expected


def test_an_object_over_5_gib_is_copied_in_as_few_near_equal_ranges_as_fit() -> None:
    size = 2 * MAX_PART + 3
    step = -(-size // 3)
    assert copy_ranges([("big", size), ("small", MIB)]) == [
        ("big", 0, step), ("big", step, 2 * step), ("big", 2 * step, size), ("small", 0, MIB),
    ]
    assert step <= MAX_PART


def test_object_metadata_stays_within_s3_limit():
    metadata = {
        "filename": "naïve résumé.txt".encode(),
        "filetype": b"text/html",
        "big": b"x" * 3000,
        "small": b"ok",
        "unicode": "żółw".encode(),
        "bad key(": b"dropped",
    }
    headers = object_headers(metadata)
    assert headers["ContentType"] == "application/octet-stream"  # never served as HTML
    assert headers["ContentDisposition"].startswith('attachment; filename="naive resume.txt"')
    assert headers["Metadata"] == {"small": "ok", "unicode": "=?UTF-8?B?xbzDs8WCdw==?="}
