"""What the S3 backend is told: its bucket, how it sizes parts, where it spools.

The backend takes these and never the server's whole ``Settings``: a reader sees in one
place every knob it turns, and a test can build one without the rest of the server.
Credentials and the retry policy are not here: aiobotocore finds them the usual way
(``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` / an instance role, ``AWS_RETRY_MODE``,
``AWS_MAX_ATTEMPTS``), as every AWS tool does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .parts import MIN_PART

if TYPE_CHECKING:
    from server.config import Settings


@dataclass(frozen=True)
class S3Settings:
    """The defaults are the server's (``server.config.Settings``): none are repeated here."""

    bucket: str
    prefix: str
    """Put before the upload id to make its object key."""
    endpoint: str
    """The endpoint URL of a store other than AWS; empty for AWS."""
    region: str
    path_style: bool
    part_size: int
    """The size of parts (all but the last), unless the upload needs larger ones to fit."""
    max_parts: int
    equal_parts: bool
    """Every part but the last of one size, as Cloudflare R2 demands."""
    concurrency: int
    """Parts of one upload sent at once."""
    download_redirect: bool
    """Answer a download with a presigned URL instead of streaming the object."""
    spool: Path
    """Where a request's parts wait on the local disk until S3 holds them:
    ``{data_dir}/s3-spool``. A buffer, never synced: S3 is where bytes are durable."""

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Settings:
        """The S3 part of the server's settings.

        The part size and concurrency are held to what S3 and the backend can work with
        even when the settings were built in code, past the configuration's checks.
        """
        return cls(
            bucket=settings.s3.bucket,
            prefix=settings.s3.prefix,
            endpoint=settings.s3.endpoint,
            region=settings.s3.region,
            path_style=settings.s3.path_style,
            part_size=max(settings.s3.part_size, MIN_PART),
            max_parts=settings.s3.max_parts,
            equal_parts=settings.s3.equal_parts,
            concurrency=max(settings.s3.concurrency, 1),
            download_redirect=settings.s3.download_redirect,
            spool=Path(settings.storage.data_dir) / "s3-spool",
        )
