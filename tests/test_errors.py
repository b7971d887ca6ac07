"""The one table from failures to answers: status, stable code, reason and headers."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3

import pytest
from aiohttp import web

from server.errors import (
    ChecksumMismatch,
    Conflict,
    ErrorAnswer,
    HookRejected,
    InsufficientStorage,
    Locked,
    OffsetMismatch,
    Problem,
    TooManyRequests,
    classify,
)
from server.state import DatabaseUnavailable, UploadGone
from storage_backends.base import StorageError, StorageUnavailable

FULL_DATABASE = sqlite3.OperationalError("database or disk is full")
FULL_DATABASE.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "failure, status, code, storage",
    [
        (Conflict("offset differs", code="offset-mismatch"), 409, "offset-mismatch", False),
        (Conflict("taken"), 409, "conflict", False),
        (Locked("busy"), 423, "locked", False),
        (TooManyRequests("slow down", {"Retry-After": "3"}), 429, "rate-limited", False),
        (ChecksumMismatch("sha1 differs"), 460, "checksum-mismatch", False),
        (InsufficientStorage("full"), 507, "storage-full", True),
        (UploadGone("abc"), 410, "gone", False),
        (web.HTTPNotFound(), 404, "not-found", False),
        (web.HTTPMethodNotAllowed("PUT", ["GET"]), 405, "method-not-allowed", False),
        (StorageUnavailable("down"), 503, "storage-unavailable", True),
        (DatabaseUnavailable("the database x is unavailable"), 503, "database-unavailable",
         False),
        (OSError(errno.ENOSPC, "No space left on device"), 507, "storage-full", True),
        (FULL_DATABASE, 507, "storage-full", True),
        (StorageError("lost bytes"), 500, "storage-failed", True),
        (OSError(errno.EIO, "I/O error"), 500, "internal-error", True),
        (RuntimeError("a bug"), 500, "internal-error", False),
    ],
)
def test_every_failure_has_a_status_a_code_and_a_one_line_reason(failure, status, code, storage):
    answer = classify(failure)
    assert (answer.status, answer.code, answer.storage) == (status, code, storage)
    assert answer.reason and "\n" not in answer.reason


def test_the_headers_of_a_refusal_go_with_it():
    assert classify(TooManyRequests("slow down", {"Retry-After": "3"})).headers == {
        "Retry-After": "3"
    }
    assert classify(StorageUnavailable("down")).headers["Retry-After"]
    assert classify(DatabaseUnavailable("gone")).headers == {"Retry-After": "5"}
    assert classify(web.HTTPMethodNotAllowed("PUT", ["GET", "HEAD"])).headers == {
        "Allow": "GET,HEAD"
    }


def test_a_hook_rejection_is_answered_with_the_hook_s_own_status_and_body():
    answer = classify(HookRejected(401, b"who are you?", {"WWW-Authenticate": "Bearer"}))
    assert answer == ErrorAnswer(
        401, "hook-rejected", "refused by a hook with status 401",
        {"WWW-Authenticate": "Bearer"}, body=b"who are you?",
    )


def test_a_problem_is_answered_with_its_rfc_9457_document():
    answer = classify(Problem(409, "mismatching-upload-offset", "offsets differ",
                              {"Upload-Offset": "4"}, {"expected-offset": 4}, code="offset-mismatch"))
    assert (answer.status, answer.code) == (409, "offset-mismatch")
    assert answer.headers == {"Upload-Offset": "4", "Content-Type": "application/problem+json"}
    assert json.loads(answer.body or b"") == {
        "type": "https://iana.org/assignments/http-problem-types#mismatching-upload-offset",
        "title": "offsets differ", "expected-offset": 4,
    }


def test_an_offset_mismatch_keeps_both_offsets_and_the_tus_answer():
    exc = OffsetMismatch(expected=4, provided=2)
    assert (exc.expected, exc.provided) == (4, 2)
    assert classify(exc) == ErrorAnswer(
        409, "offset-mismatch", "Upload-Offset 2 does not match the upload's offset 4")


def test_only_failures_of_the_server_are_logged_and_only_the_unforeseen_with_a_traceback():
    assert classify(Conflict("offset differs")).log_level is None
    assert classify(StorageUnavailable("down")).log_level == logging.WARNING
    failed = classify(StorageError("lost bytes"))
    assert (failed.log_level, failed.unforeseen) == (logging.ERROR, False)
    bug = classify(RuntimeError("a bug"))
    assert (bug.log_level, bug.unforeseen) == (logging.ERROR, True)
