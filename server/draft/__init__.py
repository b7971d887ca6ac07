"""The IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload) on
the same uploads as tus.

A request that names a supported ``Upload-Draft-Interop-Version`` is served as the draft
(unless ``ietf_draft`` is off); any other is a tus request, refused without
``Tus-Resumable`` as ever, and gets no ``104``. The draft's requests take the same steps
(:mod:`server.uploads`): the same hooks, locks, limits and expiry, so an upload created
by one protocol can be looked at, resumed and downloaded by the other.

- :mod:`.codec`: what differs between interop versions, one :class:`~.codec.Codec` each;
- :mod:`.handlers`: creation, offset retrieval, append and ``OPTIONS``;
- :mod:`.interim`: the ``104 (Upload Resumption Supported)`` interim response.
"""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from .codec import CODECS, Codec

INTEROP_VERSION = "Upload-Draft-Interop-Version"


def codec_of(request: web.Request, settings: Settings) -> Codec | None:
    """The codec of a draft request; None for a tus request."""
    if not settings.uploads.ietf_draft:
        return None
    value = request.headers.get(INTEROP_VERSION, "").strip()
    if not value.isdigit() or len(value) > 3:
        return None
    return CODECS.get(int(value))
