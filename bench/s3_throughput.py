"""Throughput of a large upload through aiotusd to S3, next to a plain multipart upload.

In one run, on loopback: a moto S3 endpoint (its own process), an aiotusd
process with ``--storage s3`` (default part size and concurrency), and this
client. The same bytes are uploaded

- through aiotusd: one creation and one PATCH streaming the whole body,
  timed until the 204 (the object is complete in S3 by then);
- straight to S3 with aiobotocore: CreateMultipartUpload, the parts with the
  same size and concurrency, CompleteMultipartUpload; once with the same
  client settings as aiotusd (Content-MD5, no payload hashing: the ceiling
  for aiotusd), once with aiobotocore's defaults.

Each stored object is checked against the multipart ETag computed locally.

    python bench/s3_throughput.py [--size-mib 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

MIB = 1024 * 1024
PART = 8 * MIB  # aiotusd's default --s3-part-size
CONCURRENCY = 4  # aiotusd's default --s3-concurrency
BUCKET = "bench-throughput"
ENV = {
    **os.environ,
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def client_config(tuned: bool) -> AioConfig:
    if not tuned:
        return AioConfig(s3={"addressing_style": "path"}, max_pool_connections=16)
    return AioConfig(
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        max_pool_connections=16,
    )


async def through_aiotusd(url: str, data: bytes) -> tuple[float, str]:
    async def body() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(data), MIB):
            yield bytes(view[start : start + MIB])

    tus = {"Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(url, headers={**tus, "Upload-Length": str(len(data))}) as created:
            assert created.status == 201, await created.text()
            location = created.headers["Location"]
        async with session.patch(
            location, data=body(),
            headers={**tus, "Upload-Offset": "0",
                     "Content-Type": "application/offset+octet-stream"},
        ) as patched:
            assert patched.status == 204, await patched.text()
        elapsed = time.perf_counter() - started
    return elapsed, location.rsplit("/", 1)[1]


async def plain_multipart(s3: Any, key: str, data: bytes, tuned: bool) -> float:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def upload(number: int, chunk: bytes) -> dict[str, Any]:
        async with slots:
            extra = {}
            if tuned:
                md5 = await asyncio.to_thread(hashlib.md5, chunk)
                extra["ContentMD5"] = base64.b64encode(md5.digest()).decode()
            response = await s3.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk, **extra
            )
            return {"PartNumber": number, "ETag": response["ETag"]}

    started = time.perf_counter()
    upload_id = (await s3.create_multipart_upload(Bucket=BUCKET, Key=key))["UploadId"]
    view = memoryview(data)
    parts = await asyncio.gather(*(
        upload(number, bytes(view[start : start + PART]))
        for number, start in enumerate(range(0, len(data), PART), 1)
    ))
    await s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
    )
    return time.perf_counter() - started


async def create_bucket(endpoint: str) -> None:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, config=client_config(tuned=True)
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)


async def measure(endpoint: str, tus_url: str, size: int, rounds: int) -> None:
    session = get_session()
    data = os.urandom(size)
    expected = multipart_etag(data, PART)
    results: dict[str, list[float]] = {"aiotusd": [], "plain-tuned": [], "plain-default": []}
    for round_number in range(rounds):
        elapsed, key = await through_aiotusd(tus_url, data)
        results["aiotusd"].append(elapsed)
        async with session.create_client(
            "s3", endpoint_url=endpoint, config=client_config(tuned=True)
        ) as s3:
            head = await s3.head_object(Bucket=BUCKET, Key=key)
            assert head["ETag"] == expected, (head["ETag"], expected)
            await s3.delete_object(Bucket=BUCKET, Key=key)
        for tuned in (True, False):
            name = "plain-tuned" if tuned else "plain-default"
            key = f"{name}-{round_number}"
            async with session.create_client(
                "s3", endpoint_url=endpoint, config=client_config(tuned)
            ) as s3:
                results[name].append(await plain_multipart(s3, key, data, tuned))
                head = await s3.head_object(Bucket=BUCKET, Key=key)
                assert head["ETag"] == expected, (head["ETag"], expected)
                await s3.delete_object(Bucket=BUCKET, Key=key)
    print(f"{size // MIB} MiB, part {PART // MIB} MiB, concurrency {CONCURRENCY}, "
          f"{rounds} rounds, moto on loopback, {os.cpu_count()} CPUs")
    labels = {
        "aiotusd": "aiotusd (tus PATCH -> S3)",
        "plain-tuned": "plain aiobotocore, same settings (ceiling)",
        "plain-default": "plain aiobotocore, default settings",
    }
    for name, times in results.items():
        speeds = ", ".join(f"{size / t / 1e6:.1f}" for t in times)
        print(f"  {labels[name]:<44} best {size / min(times) / 1e6:6.1f} MB/s  (runs: {speeds})")
    ceiling = min(min(results["plain-tuned"]), min(results["plain-default"]))
    print(f"  aiotusd reaches {ceiling / min(results['aiotusd']):.0%} of the faster plain upload")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    os.environ.update(ENV)
    s3_port, tus_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    data_dir = tempfile.mkdtemp(prefix="aiotusd-bench-")
    moto = aiotusd = None
    try:
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_listening(s3_port, moto)
        asyncio.run(create_bucket(endpoint))
        aiotusd = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(tus_port), "--data-dir", data_dir,
             "--storage", "s3", "--s3-endpoint", endpoint, "--s3-bucket", BUCKET,
             "--s3-region", "us-east-1", "--s3-path-style", "true", "--log-level", "warning"],
            env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
        )
        wait_listening(tus_port, aiotusd)
        asyncio.run(measure(
            endpoint, f"http://127.0.0.1:{tus_port}/files/", arguments.size_mib * MIB,
            arguments.rounds,
        ))
    finally:
        stop(aiotusd)
        stop(moto)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
