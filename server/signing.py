"""The signatures of webhook requests, as ``hooks_signing`` chooses them.

- ``aiotusd`` (the default): ``Hook-Timestamp`` (Unix seconds) and ``Hook-Signature:
  sha256=<hex>``, the HMAC-SHA256 of ``{timestamp}.{body}`` keyed with ``hooks_secret``
  as its UTF-8 bytes.
- ``standard``: Standard Webhooks (standardwebhooks.com): ``webhook-id`` (the event's
  ``Hook-Id``, the same for every attempt, so that a receiver can drop a repeat),
  ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64>``, the
  HMAC-SHA256 of ``{id}.{timestamp}.{body}``. The key is the one its libraries take: a
  ``hooks_secret`` of the form ``whsec_<base64>`` is that base64 decoded; any other is its
  UTF-8 bytes, which those libraries take as ``whsec_`` followed by their base64.
- ``both``: the headers of each, for receivers that move from one to the other.

Requests are signed afresh on every attempt: the timestamp lets receivers refuse replays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from .errors import ConfigError

SIGNINGS = ("aiotusd", "standard", "both")
STANDARD_PREFIX = "whsec_"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``Hook-Signature`` of ``body`` sent at ``timestamp``: ``sha256=<hex HMAC>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks key of ``hooks_secret``; :class:`ConfigError` for a
    ``whsec_`` secret that is not base64."""
    if not secret.startswith(STANDARD_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret[len(STANDARD_PREFIX):], validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ConfigError(
            f"hooks_secret starts with {STANDARD_PREFIX} but what follows is not base64 "
            "(Standard Webhooks secrets are whsec_ and the key in base64)"
        )
    return key


class Signer:
    """Signs webhook requests with ``secret`` as ``signing`` (one of :data:`SIGNINGS`)."""

    def __init__(self, secret: str, signing: str) -> None:
        self._secret = secret
        self._aiotusd = signing in ("aiotusd", "both")
        self._standard = standard_key(secret) if signing in ("standard", "both") else None

    def headers(self, hook_id: str, body: bytes) -> dict[str, str]:
        """The signature headers of one attempt to send event ``hook_id`` with ``body``."""
        timestamp = str(int(time.time()))
        headers = {}
        if self._aiotusd:
            headers["Hook-Timestamp"] = timestamp
            headers["Hook-Signature"] = signature(self._secret, timestamp, body)
        if self._standard is not None:
            signed = f"{hook_id}.{timestamp}.".encode() + body
            mac = hmac.new(self._standard, signed, hashlib.sha256).digest()
            headers["webhook-id"] = hook_id
            headers["webhook-timestamp"] = timestamp
            headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode()
        return headers
