"""Uploads as S3 objects: a finished upload is the object ``{prefix}{id}``, assembled by multipart upload.

How the bytes travel
--------------------
Every byte of a request body is first appended to a local *spool file* of
the part it belongs to, ``{data_dir}/s3-spool/{id}/{part number}``. A part
whose spool file reaches the part size is *closed* and uploaded in the
background (``UploadPart`` with ``Content-MD5``), at most ``s3_concurrency``
parts at once per upload, while the request keeps streaming into the next
part. :meth:`S3Writer.sync` only fsyncs spool files: the durable offset it
returns is every byte received, never waiting for S3, and never more than
what is either in a completed part or in a spool file. The last, partly
filled part is the *tail*: it stays in its spool file, survives a restart,
and the next request appends to it until it fills up.

With ``fsync always``, the file of a part stored in S3 is not removed but kept
as a *spare* (at most ``SPARE_FILES`` per upload), and a later part is written
over it: an fdatasync of blocks already on disk commits no journal, where one of
appended bytes does (1.1 against 1.7 ms per MiB on the benchmark's disk), and no
part-sized file is freed on the way. So a spool file may be longer than its
part: its first bytes, as many as the state says, are the part.

Where state lives
-----------------
The upload's record, ``StoredUpload.storage``. The backend never changes the
record it is given: ``create``, ``declare_length``, ``finish`` and
``concatenate`` return a new one, and a writer makes a new one at each sync
(:attr:`S3Writer.storage`), naming only parts its sync made durable. The
server saves it in its database together with the offset::

    {"key": "<prefix><id>", "mpu": "<UploadId>" | null, "part_size": 8388608,
     "parts": [[size, etag | null], ...], "done": false}

``parts[n-1]`` is part ``n``; every entry but the last is a closed part of
exactly its target size, the last is the open tail. An ETag means the part
is stored in S3 (and its spool file may go); ``null`` means its bytes are in
the spool file. The sizes add up to the offset. In the code each entry is a
:class:`~.parts.Part`, converted where the state is read and written.

Reconciliation
--------------
When a writer opens, the spool is made to match the committed state (bytes
past the committed offset are cut off, files of stored parts and of parts
past the end removed). When closed parts are still unrecorded, or the upload
is opened for the first time since this process started (it may have
crashed), ``ListParts`` is asked: a recorded part that S3 lacks is reported
as data loss; an unrecorded part that S3 holds with the MD5 of its spool file
is adopted without a new upload; any other is (re)uploaded under the same
part number, which replaces whatever an interrupted attempt left there, so
nothing is lost and nothing duplicated. Multipart uploads of the same key
that the state does not name are aborted.

Small uploads (length known and at most one part) never start a multipart
upload: :meth:`S3Backend.finish` sends them with one ``PutObject``.

Where the code is
-----------------
``settings``  :class:`S3Settings`, everything the backend is told
``parts``     :class:`~.parts.Part`, and part sizing as pure functions
``spool``     the spool files (blocking I/O, run in threads)
``writer``    the part producer: a request's body into spooled parts
``uploads``   the part uploads in the background, at most ``s3_concurrency`` at once
``client``    :class:`~.client.S3Client`, the S3 calls, errors made :class:`StorageError`
``recovery``  ListParts and ListMultipartUploads as the truth after a crash
``concat``    the final upload of a concatenation, copied by S3 or streamed
``metadata``  the object's content headers and user metadata
``backend``   :class:`S3Backend`, which the server calls, putting these together
"""

from .backend import S3Backend
from .client import S3Error, S3Unavailable
from .metadata import object_headers
from .parts import Part
from .settings import S3Settings

__all__ = ["Part", "S3Backend", "S3Error", "S3Settings", "S3Unavailable", "object_headers"]
