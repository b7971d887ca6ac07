"""Peak memory of a real aiotusd process receiving one huge PATCH.

Usage: python bench/rss_single_patch.py [--size-mib 1024] [--limit-mb 100] [--time-limit 300]

Starts ``python -m server`` on a free loopback port with a temporary data
directory, creates one upload of ``--size-mib`` MiB and sends all of it in a
single PATCH with a Content-Length, streamed from a generator (the client
never holds more than one 1 MiB block). Meanwhile it samples the server's
``VmRSS``; at the end it reads ``VmHWM``, the kernel's record of the peak
resident set. It then checks that the data file has the right size and the
same SHA-256 as what was sent, and prints:

    peak RSS (VmHWM), the highest sampled VmRSS, the RSS before the upload,
    the throughput of the PATCH, and whether the peak is below ``--limit-mb``.

Exits 1 if the check or the memory limit fails. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MIB = 1024 * 1024
BLOCK = MIB
TUS = {"Tus-Resumable": "1.0.0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status, e.g. VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler(threading.Thread):
    """Samples VmRSS every ``interval`` seconds until stopped; keeps the highest."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.highest_kib = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.highest_kib = max(self.highest_kib, status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return  # the process is gone
            self.samples += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("aiotusd exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("aiotusd did not start listening")


def blocks(size: int, digest: hashlib._Hash, deadline: float) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB blocks, each one different; feeds ``digest`` on the way."""
    base = bytearray(os.urandom(BLOCK))
    sent = 0
    number = 0
    while sent < size:
        if time.monotonic() > deadline:
            raise SystemExit("time limit reached while sending")
        base[:8] = number.to_bytes(8, "big")
        block = bytes(base[: min(BLOCK, size - sent)])
        digest.update(block)
        sent += len(block)
        number += 1
        yield block


def request(port: int, method: str, path: str, headers: dict[str, str], timeout: float):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, headers={**TUS, **headers})
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def file_sha256(path: Path, deadline: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MIB):
            if time.monotonic() > deadline:
                raise SystemExit("time limit reached while verifying")
            digest.update(chunk)
    return digest.hexdigest()


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MIB
    deadline = time.monotonic() + args.time_limit
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="aiotusd-rss-") as data_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", data_dir, "--log-level", "warning"],
            env={k: v for k, v in os.environ.items() if not k.startswith("AIOTUSD_")},
        )
        sampler = RssSampler(process.pid)
        try:
            wait_listening(port, process)
            created = request(port, "POST", "/files/", {"Upload-Length": str(size)}, timeout=30)
            assert created.status == 201, created.status
            location = created.getheader("Location")
            path = location[location.index("/files/") :]
            upload_id = path.rsplit("/", 1)[1]
            rss_before_kib = status_kib(process.pid, "VmRSS")
            sampler.start()

            sent_digest = hashlib.sha256()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            started = time.perf_counter()
            connection.putrequest("PATCH", path)
            for name, value in {
                **TUS,
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0",
                "Content-Length": str(size),
            }.items():
                connection.putheader(name, value)
            connection.endheaders()
            for block in blocks(size, sent_digest, deadline):
                connection.send(block)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            connection.close()
            sampler.stop()
            peak_kib = status_kib(process.pid, "VmHWM")

            ok = True
            if response.status != 204 or response.getheader("Upload-Offset") != str(size):
                print(f"PATCH answered {response.status}, Upload-Offset "
                      f"{response.getheader('Upload-Offset')}")
                ok = False
            stored = Path(data_dir) / upload_id
            stored_size = stored.stat().st_size
            stored_digest = file_sha256(stored, deadline)
            checked = request(port, "HEAD", path, {}, timeout=30)
            print(f"upload: {args.size_mib} MiB in one PATCH, streamed in {BLOCK // MIB} MiB blocks")
            print(f"stored: {stored_size} bytes, sha256 {stored_digest[:16]}... "
                  f"({'matches' if stored_digest == sent_digest.hexdigest() else 'DIFFERS'}), "
                  f"HEAD Upload-Offset {checked.getheader('Upload-Offset')}")
            ok = ok and stored_size == size and stored_digest == sent_digest.hexdigest()
            ok = ok and checked.getheader("Upload-Offset") == str(size)
            peak_mb = peak_kib * 1024 / 1e6
            print(f"peak RSS (VmHWM): {peak_kib / 1024:.1f} MiB = {peak_mb:.1f} MB; "
                  f"highest sampled VmRSS {sampler.highest_kib / 1024:.1f} MiB "
                  f"({sampler.samples} samples); before the PATCH {rss_before_kib / 1024:.1f} MiB")
            print(f"throughput: {size / 1e6 / elapsed:.0f} MB/s "
                  f"({size / MIB / elapsed:.0f} MiB/s, {elapsed:.1f} s)")
            within = peak_mb < args.limit_mb
            print(f"peak RSS {'<' if within else '>='} {args.limit_mb} MB: "
                  f"{'PASS' if within else 'FAIL'}; data check: {'PASS' if ok else 'FAIL'}")
            return 0 if ok and within else 1
        finally:
            if sampler.is_alive():
                sampler.stop()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--limit-mb", type=float, default=100.0)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
