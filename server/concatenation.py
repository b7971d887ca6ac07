"""What the parts of a final upload (tus's concatenation) add up to: its parts as they
stand, its length once every part's is known, and the least it will be before then."""

from __future__ import annotations

from collections.abc import Sequence

from .context import Context
from .state import Upload


async def partials_of(ctx: Context, final: Upload) -> list[Upload | None]:
    """The parts of a final upload in order; None for a part that no longer exists."""
    part_ids = await ctx.store.parts(final.id)
    found = await ctx.store.get_many(part_ids)
    return [found.get(part_id) for part_id in part_ids]


def concatenated_length(partials: Sequence[Upload | None]) -> int | None:
    """The length of a final upload, once every part's length is known."""
    total = 0
    for partial in partials:
        if partial is None or partial.length is None:
            return None
        total += partial.length
    return total


def least_concatenated_length(partials: Sequence[Upload]) -> int:
    """What a final upload's length is at least: a part of a deferred length will hold
    at least the bytes it holds now."""
    return sum(p.offset if p.length is None else p.length for p in partials)
