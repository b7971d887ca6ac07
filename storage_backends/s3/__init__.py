"""Uploads as S3 objects: a finished upload is the object ``{prefix}{id}``, assembled by multipart upload.

Everything an upload needs between requests is in S3 (and its record in the database), so
that any server sharing the bucket and the database can take its next request, or recover
it after a crash: nothing of it is only on one server's disk.

How the bytes travel
--------------------
Every byte of a request body is first appended to a local *spool file* of the
part it belongs to, ``{data_dir}/s3-spool/{id}/{part number}``: a buffer of that
request, never synced. A part whose spool file reaches the part size is *closed* and
uploaded in the background (``UploadPart`` with ``Content-MD5``), at most
``s3_concurrency`` parts at once per upload, while the request keeps streaming into the
next part. The last, partly filled part is the *open part*.

At the end of a request (:meth:`S3Writer.sync`) the parts in flight are waited for and
the bytes the request added to the open part are put as a *tail object*
``{key}.part{n}.{start}.{token}`` (see :mod:`.tails`): the offset recorded never runs
ahead of what S3 holds. A full upload's open part goes as its last part instead, or,
without a multipart upload, as the object itself. The periodic commits of a long request
put nothing: they record the parts stored so far (and the tail the request began with),
since the bytes after them will be in a part soon. The next request, on any server,
starts from the stored parts and the tail objects, read back into its spool; the server
that put them keeps its spool file and skips the download.

Where state lives
-----------------
The upload's record, ``StoredUpload.storage``. The backend never changes the
record it is given: ``create``, ``declare_length``, ``finish`` and
``concatenate`` return a new one, and a writer makes a new one at each sync
(:attr:`S3Writer.storage`), naming only what its sync stored. The server saves it in
its database together with the offset::

    {"key": "<prefix><id>", "mpu": "<UploadId>" | null, "part_size": 8388608,
     "parts": [[size, etag], ..., [size, null]],
     "tails": [{"key": "<key>.part<n>.<start>.<token>", "part": n, "start": start,
                "size": size, "md5": "<hex>"}, ...],
     "done": false}

``parts[n-1]`` is part ``n``; every entry but the last is a stored part of exactly its
target size, the last is the open part, whose bytes a chain of tails of part ``n`` holds
end to end. ``tails`` also names those that the record a request began with needed, so
that a request whose body is dropped can go back to it. The sizes of the parts add up to
the offset. In the code each entry is a :class:`~.parts.Part` or a :class:`~.tails.Tail`,
converted where the state is read and written.

Records of earlier versions have no ``tails``: their unsent parts (``null`` ETags, also
before the last) are in the spool of the server that wrote them. Such an upload resumes on
that server, from its spool; its first request ends with a record of this form.

Reconciliation
--------------
When a writer opens, the spool is made to hold the open part's tail and nothing else, and
tail objects that no record names (put just before a crash) are deleted; those that hold
bytes now in a part, or in a tail object put in their place, go while the body arrives.
When the upload is opened for the first time by this process (another server wrote it
last, or this one crashed), ``ListParts`` checks that the recorded parts are there; parts
S3 holds that the record does not name are sent again under the same numbers. Multipart
uploads of the same key that the state does not name are aborted. A multipart upload that
is gone while the object stands was completed by a server that finished the upload: it is
left as it is.

Small uploads (length known and at most one part) never start a multipart
upload: the last request puts them as the object with one ``PutObject``.

Where the code is
-----------------
``settings``  :class:`S3Settings`, everything the backend is told
``parts``     :class:`~.parts.Part`, and part sizing as pure functions
``spool``     the spool files (blocking I/O, run in threads)
``tails``     the tail objects: put, read back, deleted
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
