"""What the tests share besides fixtures, one module per subject.

- ``http``: tus headers, uploads made through a test client, raw HTTP on a socket
- ``processes``: free ports, real ``aiotusd`` processes and its command line
- ``waiting``: waiting on a condition with a deadline, never sleep-and-hope
- ``storage``: test bytes, and what a backend holds of an upload (files or S3)
- ``markers``: the backends a test runs on, and the marks a test must have (a pytest plugin)
- ``s3``: moto's S3 server on loopback, buckets, and what they hold (also a pytest plugin)
- ``hooks``: webhook receivers on loopback (also a pytest plugin)
- ``postgres``: a throwaway PostgreSQL cluster on loopback, a database per test (also a
  pytest plugin)
- ``tls``: a self-signed certificate for loopback

The fixtures are in ``tests/conftest.py``, which registers ``markers``, ``s3``, ``hooks``
and ``postgres`` as plugins and has pytest rewrite the asserts of every module here.
"""
