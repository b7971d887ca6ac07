"""The S3 operations the backend uses, on its one bucket, over aiobotocore.

Every other module speaks to S3 through :class:`S3Client` only: a dozen calls with
typed arguments instead of aiobotocore's open-ended ``**params``, each turning every
error into a :class:`~storage_backends.base.StorageError` that says what was being done.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.loaders import create_loader

from ..base import StorageError, StorageUnavailable
from .settings import S3Settings

READ_CHUNK = 1024 * 1024
PRESIGN_SECONDS = 300
_THROTTLING = frozenset(
    {
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
        "RequestThrottledException", "TooManyRequestsException", "SlowDown",
        "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
        "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError",
    }
)


class S3Error(StorageError):
    """S3 refused a request; ``code`` is S3's error code."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class S3Unavailable(StorageUnavailable):
    """S3 could not be reached, or kept answering 5xx or throttling after the retries."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _status_and_code(exc: ClientError) -> tuple[int, str]:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status, str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: BaseException, what: str) -> StorageError:
    """The :class:`StorageError` for an exception of aiobotocore, for an operator."""
    if isinstance(exc, ClientError):
        status, code = _status_and_code(exc)
        error = exc.response.get("Error", {})
        message = f"{what}: S3 answered {status} {code} {error.get('Message', '')}".rstrip()
        if status >= 500 or status == 429 or code in _THROTTLING:
            return S3Unavailable(message, code, status)
        return S3Error(message, code, status)
    if isinstance(exc, (HTTPClientError, BotoConnectionError, aiohttp.ClientError, TimeoutError)):
        return S3Unavailable(f"{what}: {exc or type(exc).__name__}")
    return S3Error(f"{what}: {exc or type(exc).__name__}")


def _start_error(exc: BaseException, bucket: str, endpoint: str) -> StorageError:
    """Why the bucket cannot be used at start-up, for the operator."""
    where = endpoint or "AWS"
    if not isinstance(exc, ClientError):
        return StorageError(f"cannot use S3 bucket {bucket!r} at {where}: {exc}")
    status, code = _status_and_code(exc)
    if status == 404 or code in ("404", "NoSuchBucket"):
        return StorageError(f"S3 bucket {bucket!r} does not exist at {where}")
    if status in (401, 403):
        return StorageError(
            f"access to S3 bucket {bucket!r} at {where} was denied ({status}): check "
            "the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / instance role), the "
            "region and the bucket policy"
        )
    return StorageError(f"cannot use S3 bucket {bucket!r} at {where}: {exc}")


def _is_missing(exc: S3Error) -> bool:
    return exc.status == 404 or exc.code in ("404", "NoSuchKey", "NotFound")


START_CHECK = AioConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=10)
"""The start-up ``HeadBucket``: one attempt, soon given up. A wrong endpoint or bucket is
then told at once, and a store that is down is waited for by whatever restarts the server;
the retries that ride out a store's hiccups are for a server that runs."""


_MODELS = create_loader()
"""botocore's loader of service models, shared by the sessions of this process: each new
session would parse S3's JSON model again (about 0.1 s of CPU per client made). Only the
models are shared; credentials stay each session's own."""


def _session() -> AioSession:
    session = get_session()
    session.register_component("data_loader", _MODELS)
    return session


class S3Client:
    """One bucket's S3 operations; open it before use and close it at the end."""

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self.bucket = settings.bucket
        self._client: Any = None
        self._exit = contextlib.AsyncExitStack()

    def _config(self) -> AioConfig:
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "5")
        if not attempts.strip().isdecimal():
            raise StorageError(f"AWS_MAX_ATTEMPTS {attempts!r} is not a whole number")
        retries: dict[str, Any] = {
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "max_attempts": int(attempts),
        }
        return AioConfig(
            region_name=self._settings.region or None,
            signature_version="s3v4",
            s3={
                "addressing_style": "path" if self._settings.path_style else "auto",
                # Parts carry Content-MD5; hashing them again with SHA-256 for the signature
                # would only burn CPU on the event loop.
                "payload_signing_enabled": False,
            },
            retries=retries,
            connect_timeout=10,
            read_timeout=60,
            # One pool for every upload of the server, each with up to `concurrency` parts in flight.
            max_pool_connections=max(64, self._settings.concurrency * 16),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def open(self) -> None:
        """Connect once the bucket answered (see :data:`START_CHECK`); else raise
        :class:`StorageError` naming the bucket and the endpoint."""
        session = _session()
        endpoint = self._settings.endpoint or None
        try:
            config = self._config()
            async with session.create_client(
                "s3", endpoint_url=endpoint, config=config.merge(START_CHECK)
            ) as client:
                await client.head_bucket(Bucket=self.bucket)
            self._client = await self._exit.enter_async_context(
                session.create_client("s3", endpoint_url=endpoint, config=config)
            )
        except (ClientError, BotoCoreError, ValueError) as exc:
            # botocore refuses some values (an endpoint it cannot parse) with ValueError.
            await self._exit.aclose()
            raise _start_error(exc, self.bucket, self._settings.endpoint) from None
        except BaseException:
            await self._exit.aclose()
            raise

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None

    async def _call(self, what: str, operation: str, **params: Any) -> Any:
        """Run a client operation on the bucket; errors become :class:`StorageError`."""
        try:
            return await getattr(self._client, operation)(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, what) from exc

    async def check_bucket(self) -> None:
        await self._call(f"checking the bucket {self.bucket}", "head_bucket")

    # -- objects

    async def put(self, key: str, body: io.BytesIO, md5: str, headers: dict[str, Any]) -> None:
        """Store ``body`` (its base64 MD5 ``md5``) as object ``key``, with ``headers``."""
        await self._call(
            f"storing {key}", "put_object", Key=key, Body=body, ContentMD5=md5, **headers
        )

    async def object_size(self, key: str) -> int | None:
        """The size of object ``key``, None if there is none."""
        try:
            response = await self._call(f"looking up {key}", "head_object", Key=key)
        except S3Error as exc:
            if _is_missing(exc):
                return None
            raise
        return int(response["ContentLength"])

    async def get(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of object ``key`` (GetObject with Range), in bounded chunks."""
        if start >= end:
            return
        what = f"reading {key}"
        response = await self._call(what, "get_object", Key=key, Range=f"bytes={start}-{end - 1}")
        async with response["Body"] as body:
            remaining = end - start
            while remaining > 0:
                try:
                    chunk = await body.read(min(READ_CHUNK, remaining))
                except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
                    raise translate(exc, what) from exc
                if not chunk:
                    raise StorageError(f"{key} ended {remaining} bytes early")
                remaining -= len(chunk)
                yield chunk

    async def presigned_get(self, key: str, content_type: str, content_disposition: str) -> str:
        """A GET of ``key`` valid for a few minutes, answered with these content headers."""
        return str(
            await self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket, "Key": key,
                    "ResponseContentType": content_type,
                    "ResponseContentDisposition": content_disposition,
                },
                ExpiresIn=PRESIGN_SECONDS,
            )
        )

    async def delete(self, key: str) -> None:
        await self._call(f"deleting {key}", "delete_object", Key=key)

    async def keys(self, prefix: str) -> list[str]:
        """The keys of the objects whose keys begin with ``prefix``."""
        found: list[str] = []
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            response = await self._call(f"listing {prefix}*", "list_objects_v2", **params)
            found += [str(item["Key"]) for item in response.get("Contents", [])]
            if not response.get("IsTruncated"):
                return found
            params = {"Prefix": prefix, "ContinuationToken": response["NextContinuationToken"]}

    # -- multipart uploads

    async def create_multipart(self, key: str, headers: dict[str, Any]) -> str:
        """Start a multipart upload of ``key``; its UploadId."""
        response = await self._call(
            f"starting the multipart upload of {key}", "create_multipart_upload",
            Key=key, **headers,
        )
        return str(response["UploadId"])

    async def upload_part(
        self, key: str, mpu: str, number: int, body: io.BytesIO, md5: str
    ) -> str:
        """Store part ``number`` (its base64 MD5 ``md5``); its ETag."""
        response = await self._call(
            f"uploading part {number} of {key}", "upload_part",
            Key=key, UploadId=mpu, PartNumber=number, Body=body, ContentMD5=md5,
        )
        return str(response["ETag"])

    async def upload_part_copy(
        self, key: str, mpu: str, number: int, source: str, start: int, end: int
    ) -> str:
        """Make bytes ``[start, end)`` of object ``source`` part ``number``; its ETag."""
        response = await self._call(
            f"copying {source} into part {number} of {key}", "upload_part_copy",
            Key=key, UploadId=mpu, PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source},
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        return str(response["CopyPartResult"]["ETag"])

    async def complete(self, key: str, mpu: str, parts: Iterable[tuple[int, str]]) -> None:
        """Assemble the object from parts ``(number, etag)``."""
        await self._call(
            f"completing the multipart upload of {key}", "complete_multipart_upload",
            Key=key, UploadId=mpu,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    async def abort(self, key: str, mpu: str) -> None:
        """Drop a multipart upload and its parts; one already gone is no error."""
        try:
            await self._call(
                f"aborting the multipart upload of {key}", "abort_multipart_upload",
                Key=key, UploadId=mpu,
            )
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    async def list_parts(self, key: str, mpu: str) -> dict[int, tuple[str, int]]:
        """The parts S3 holds of a multipart upload: ``{number: (etag, size)}``."""
        listed: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            response = await self._call(
                f"listing the parts of {key}", "list_parts",
                Key=key, UploadId=mpu, PartNumberMarker=marker, MaxParts=1000,
            )
            for part in response.get("Parts", []):
                listed[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not response.get("IsTruncated"):
                return listed
            marker = int(response["NextPartNumberMarker"])

    async def multipart_uploads(self, key: str) -> list[str]:
        """The UploadIds of the multipart uploads of ``key`` in progress."""
        found: list[str] = []
        params: dict[str, Any] = {"Prefix": key}
        while True:
            response = await self._call(
                f"listing multipart uploads of {key}", "list_multipart_uploads", **params
            )
            found += [u["UploadId"] for u in response.get("Uploads", []) if u["Key"] == key]
            if not response.get("IsTruncated"):
                return found
            params = {
                "Prefix": key,
                "KeyMarker": response["NextKeyMarker"],
                "UploadIdMarker": response["NextUploadIdMarker"],
            }
