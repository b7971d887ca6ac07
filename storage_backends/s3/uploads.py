"""Part uploads in the background: the consumer of the parts the writer closes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

from ..base import StorageError
from .client import S3Client
from .spool import body_digest, read_part

log = logging.getLogger("aiotusd")

PartSource = tuple[Path, int] | io.BytesIO
"""A part's bytes: the first ``size`` bytes of a spool file ``(path, size)``, or a body."""


class PartUploads:
    """The part uploads of one multipart upload, at most ``concurrency`` at once.

    A failed upload does not raise here: its error is kept in :attr:`error`
    for the writer to raise at its next write.
    """

    def __init__(self, client: S3Client, key: str, mpu: str, concurrency: int) -> None:
        self._client = client
        self._key = key
        self.mpu = mpu
        self._slots = asyncio.Semaphore(concurrency)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.results: dict[int, str] = {}
        """ETags of the finished uploads, by part number."""
        self.error: StorageError | None = None

    def submit(self, number: int, source: PartSource) -> None:
        assert number not in self.tasks, f"part {number} is already being uploaded"
        self.results.pop(number, None)
        self.tasks[number] = asyncio.create_task(self._upload(number, source))

    @property
    def unfinished(self) -> int:
        return sum(1 for task in self.tasks.values() if not task.done())

    async def _upload(self, number: int, source: PartSource) -> None:
        try:
            async with self._slots:
                if isinstance(source, tuple):
                    data, _, md5 = await asyncio.to_thread(read_part, *source)
                else:
                    data = source
                    md5 = (await asyncio.to_thread(body_digest, data))[1]
                data.seek(0)
                self.results[number] = await self._client.upload_part(
                    self._key, self.mpu, number, data, md5
                )
        except StorageError as exc:
            log.warning("%s", exc)
            self.error = self.error or exc
        except OSError as exc:
            self.error = self.error or StorageError(f"reading part {number} of {self._key}: {exc}")

    async def wait_room(self, limit: int) -> None:
        """Wait until no more than ``limit`` uploads are unfinished."""
        while self.unfinished > limit:
            await asyncio.wait(
                [task for task in self.tasks.values() if not task.done()],
                return_when=asyncio.FIRST_COMPLETED,
            )

    async def wait_all(self) -> None:
        """Wait for every upload; their errors stay in :attr:`error`."""
        tasks = list(self.tasks.values())
        if tasks:
            await asyncio.wait(tasks)

    async def drain(self) -> None:
        """Wait for every upload; raise the first error."""
        await self.wait_all()
        if self.error is not None:
            raise self.error

    async def cancel(self, which: Callable[[int], bool]) -> None:
        """Stop the uploads of the parts ``which`` selects and forget their results."""
        chosen = [number for number in self.tasks if which(number)]
        for number in chosen:
            self.tasks[number].cancel()
        for number in chosen:
            with contextlib.suppress(asyncio.CancelledError):
                await self.tasks.pop(number)
            self.results.pop(number, None)

    async def stop(self) -> None:
        """Stop the uploads still running; keep the results of those that finished."""
        await self.cancel(lambda number: not self.tasks[number].done())
