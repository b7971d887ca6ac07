"""The names of hook events, as ``hooks_events`` lists them and receivers get them in
``type``. Their own module, so that the settings can name them without importing the
hooks (which need the settings)."""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    PRE_CREATE = "pre-create"
    POST_CREATE = "post-create"
    POST_RECEIVE = "post-receive"
    PRE_FINISH = "pre-finish"
    POST_FINISH = "post-finish"
    PRE_TERMINATE = "pre-terminate"
    POST_TERMINATE = "post-terminate"
    PRE_ACCESS = "pre-access"


PRE_CREATE = Event.PRE_CREATE
POST_CREATE = Event.POST_CREATE
POST_RECEIVE = Event.POST_RECEIVE
PRE_FINISH = Event.PRE_FINISH
POST_FINISH = Event.POST_FINISH
PRE_TERMINATE = Event.PRE_TERMINATE
POST_TERMINATE = Event.POST_TERMINATE
PRE_ACCESS = Event.PRE_ACCESS
EVENTS: tuple[str, ...] = tuple(Event)
