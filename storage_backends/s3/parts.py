"""Parts: what the state records of each, and how large each must be.

S3 assembles an object from at most ``max_parts`` parts, each but the last at least
5 MiB and none over 5 GiB. Which size a part gets is decided here, by pure functions of
the upload's length and the settings, so that the rules can be read and tested apart
from any I/O (tests/test_s3_part_sizing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base import StorageError

MIB = 1024 * 1024
MIN_PART = 5 * MIB
"""S3's smallest part (all but the last)."""
MAX_PART = 5 * 1024 * MIB
"""S3's largest part, and the largest range one ``UploadPartCopy`` may copy."""


@dataclass(slots=True)
class Part:
    """One part of an upload. Parts are numbered by their place: ``parts[n - 1]`` is part ``n``.

    In ``upload.storage`` a part is the JSON pair ``[size, etag]``, as databases written by
    earlier versions hold it: :meth:`from_json` and :meth:`to_json` convert at that boundary.
    """

    size: int
    etag: str | None = None
    """S3's ETag once S3 holds the part; None while its bytes are only in its spool file."""

    @classmethod
    def from_json(cls, item: list[Any]) -> Part:
        size, etag = item
        return cls(size, etag)

    def to_json(self) -> list[Any]:
        return [self.size, self.etag]


def parts_from_json(items: list[list[Any]]) -> list[Part]:
    return [Part.from_json(item) for item in items]


def parts_to_json(parts: list[Part]) -> list[list[Any]]:
    return [part.to_json() for part in parts]


def cut_parts(parts: list[Part], offset: int) -> list[Part] | None:
    """New parts holding exactly the first ``offset`` bytes of ``parts``; None if they hold fewer.

    Bytes past the recorded offset (a body dropped after a periodic commit, or
    a crash before the commit) are dropped: the part that holds ``offset``
    becomes the open tail again, to be refilled from its spool file.
    """
    kept: list[Part] = []
    total = 0
    for index, part in enumerate(parts):
        end = total + part.size
        last = index == len(parts) - 1
        if end < offset or (end == offset and last):
            kept.append(Part(part.size, part.etag))
            total = end
        elif end == offset:
            # A closed part ends exactly at the offset: a fresh tail follows it.
            return [*kept, Part(part.size, part.etag), Part(0)]
        else:
            return [*kept, Part(offset - total)]
    if not kept and offset == 0:
        return [Part(0)]
    return kept if total == offset else None


def ceil_div(dividend: int, divisor: int) -> int:
    return -(-dividend // divisor)


def round_up(value: int, unit: int = MIB) -> int:
    return ceil_div(value, unit) * unit


def plan_part_size(length: int | None, *, part_size: int, max_parts: int) -> int:
    """The part size for an upload of ``length`` bytes (None: not known yet) within ``max_parts``
    parts: ``part_size``, or the next whole MiB that makes the upload fit."""
    if length is None:
        return part_size
    size = max(part_size, round_up(ceil_div(length, max_parts)))
    if size > MAX_PART:
        raise StorageError(
            f"an upload of {length} bytes needs parts over 5 GiB with at most {max_parts} parts"
        )
    return size


def growth_step(max_parts: int) -> int:
    """Parts per doubling of the part size while the length is unknown: ``max_parts`` parts
    then hold ~255 times the bytes of the first step's parts."""
    return max(1, max_parts // 8)


def part_target(part_size: int, number: int, *, grows: bool, max_parts: int) -> int:
    """The size at which part ``number`` is full and closed.

    ``grows`` while the length is unknown and parts need not be equal: the upload may turn
    out larger than ``max_parts`` parts of ``part_size``, so parts double in size every
    :func:`growth_step` parts, up to S3's largest.
    """
    if not grows:
        return part_size
    return min(part_size << ((number - 1) // growth_step(max_parts)), MAX_PART)


def declared_part_size(
    length: int, *, current: int, closed: int, stored: int, part_size: int, max_parts: int,
    equal_parts: bool,
) -> int | None:
    """The part size from now on of an upload whose deferred ``length`` was just declared.

    ``current`` is the size of the open part, ``closed`` the count of parts before it and
    ``stored`` their bytes. Returns None when the length cannot fit any more.

    Equal parts may only change size while no part is closed. Otherwise the parts left
    are sized so that the rest of the upload fits in the part numbers left.
    """
    if equal_parts:
        if ceil_div(length, current) <= max_parts:
            return current
        if closed:
            return None
        return plan_part_size(length, part_size=part_size, max_parts=max_parts)
    room = max(max_parts - closed, 1)
    size = max(current, round_up(ceil_div(length - stored, room)))
    return None if size > MAX_PART else size


def copy_ranges(pieces: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """The parts ``UploadPartCopy`` makes of objects ``(key, size)`` set end to end:
    ``(key, start, end)``, each object cut in as few equal ranges as S3 allows."""
    ranges = []
    for source, size in pieces:
        step = ceil_div(size, ceil_div(size, MAX_PART))
        ranges += [(source, start, min(start + step, size)) for start in range(0, size, step)]
    return ranges


def copyable(pieces: list[tuple[str, int]], *, max_parts: int, equal_parts: bool) -> bool:
    """Whether every part of a server-side copy of ``pieces`` would be a valid part."""
    if not pieces:
        return False
    ranges = copy_ranges(pieces)
    if len(ranges) > max_parts:
        return False
    sizes = [end - start for _, start, end in ranges]
    if any(size < MIN_PART for size in sizes[:-1]):
        return False
    # Equal-part stores (R2): every part but the last the same size, the last no larger.
    return not equal_parts or len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
