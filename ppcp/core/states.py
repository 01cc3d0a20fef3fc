"""Connection states and the transition tables.

Everything that decides which frame may arrive when lives in this file (h11's
rule).  docs/rfc.md's state table is checked against :data:`TRANSITIONS` by
tests/test_rfc_consistency.py.  A received frame type missing from the table
for the current state is a protocol error and moves the connection to FAILED.
"""

from __future__ import annotations

import enum

from ppcp.transport.frames import MUX_TYPES, FrameType


class IdentityEnum(enum.Enum):
    """An enum whose members hash by identity, in C.

    States and roles key the transition tables consulted for every record;
    ``enum.Enum`` hashes in Python (by name), several times per record.
    Members are singletons, so identity is exactly their equality.
    """

    __hash__ = object.__hash__


class Role(IdentityEnum):
    CLIENT = "client"
    SERVER = "server"


class State(IdentityEnum):
    START = "START"
    WAIT_SERVER_HELLO = "WAIT_SERVER_HELLO"
    WAIT_SERVER_AUTH = "WAIT_SERVER_AUTH"
    WAIT_CLIENT_HELLO = "WAIT_CLIENT_HELLO"
    WAIT_CLIENT_AUTH = "WAIT_CLIENT_AUTH"
    OPEN = "OPEN"
    CLOSING = "CLOSING"  # we sent CLOSE; waiting for the peer's
    CLOSED = "CLOSED"
    FAILED = "FAILED"


HANDSHAKE_STATES = frozenset(
    {
        State.START,
        State.WAIT_SERVER_HELLO,
        State.WAIT_SERVER_AUTH,
        State.WAIT_CLIENT_HELLO,
        State.WAIT_CLIENT_AUTH,
    }
)

F = FrameType

# Records allowed once both sides are authenticated, in OPEN and CLOSING alike
# (frames the peer sent before it saw our CLOSE are still delivered).
# The channel layer (ppcp/control/channels.py) has its own per-channel table.
_RECORDS: dict[FrameType, State | None] = {
    F.MESSAGE: None,
    F.KEY_UPDATE: None,
    **{t: None for t in sorted(MUX_TYPES)},
    F.CLOSE: State.CLOSED,
}


def _established(state: State) -> dict[FrameType, State]:
    return {t: (nxt if nxt is not None else state) for t, nxt in _RECORDS.items()}


# TRANSITIONS[role][state][received frame type] -> next state.
# An ALERT is accepted in every handshake state and always leads to FAILED.
TRANSITIONS: dict[Role, dict[State, dict[FrameType, State]]] = {
    Role.CLIENT: {
        State.WAIT_SERVER_HELLO: {F.SERVER_HELLO: State.WAIT_SERVER_AUTH, F.ALERT: State.FAILED},
        State.WAIT_SERVER_AUTH: {F.SERVER_AUTH: State.OPEN, F.ALERT: State.FAILED},
        State.OPEN: _established(State.OPEN),
        State.CLOSING: _established(State.CLOSING),
    },
    Role.SERVER: {
        State.WAIT_CLIENT_HELLO: {F.CLIENT_HELLO: State.WAIT_CLIENT_AUTH, F.ALERT: State.FAILED},
        State.WAIT_CLIENT_AUTH: {F.CLIENT_AUTH: State.OPEN, F.ALERT: State.FAILED},
        State.OPEN: _established(State.OPEN),
        State.CLOSING: _established(State.CLOSING),
    },
}

# Local actions: START -(initiate)-> WAIT_SERVER_HELLO for the client;
# OPEN -(close)-> CLOSING; any state -(local error)-> FAILED.
INITIAL_STATE = {Role.CLIENT: State.START, Role.SERVER: State.WAIT_CLIENT_HELLO}


def next_state(role: Role, state: State, frame_type: int) -> State | None:
    """The state after receiving ``frame_type``, or None if it is not allowed."""
    row = TRANSITIONS[role].get(state)
    # FrameType is an IntEnum: the table answers plain ints, and None for unknown ones.
    return None if row is None else row.get(frame_type)  # type: ignore[call-overload]
