"""The asyncio driver acts on every event the sans-I/O core can return."""

from __future__ import annotations

import ppcp.control.channels  # noqa: F401  (defines the channel events)
from ppcp.core.events import Event
from ppcp.transport.aio_driver import _EVENT_HANDLERS


def _all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_every_event_type_has_a_handler() -> None:
    # The driver looks handlers up by exact type: an event type added to the
    # core without an entry would be dropped without a word.
    events = _all_subclasses(Event)
    assert len(events) >= 12
    assert events - set(_EVENT_HANDLERS) == set()
