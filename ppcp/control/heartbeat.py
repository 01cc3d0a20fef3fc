"""Heartbeat bookkeeping (sans-I/O: the driver passes the time in)."""

from __future__ import annotations

from msgspec import Struct, field

DEFAULT_INTERVAL = 5.0
# A client notices a dead server within ~20 s.  A server waits about two minutes:
# a client stopped for a while (Ctrl-Z, a debugger) must not come back to find
# its commands killed, as an ssh session survives it.
DEFAULT_MAX_MISSED = 3
DEFAULT_SERVER_MAX_MISSED = 24


class HeartbeatMonitor(Struct):
    """Decides when to send a heartbeat and when the peer is dead.

    The peer is declared dead when ``max_missed`` consecutive heartbeats went
    unanswered, i.e. after at most ``interval * (max_missed + 1)`` seconds of
    silence.  Round-trip times of answered heartbeats are kept for reporting.

    Silence while this endpoint itself did not run (its process stopped, its
    loop blocked) says nothing about the peer: when a check comes more than two
    intervals after the previous one, the count starts again from that moment.
    """

    interval: float = DEFAULT_INTERVAL
    max_missed: int = DEFAULT_MAX_MISSED
    next_id: int = 1
    outstanding: dict[int, float] = field(default_factory=dict)
    rtts: list[float] = field(default_factory=list)
    last_answer: float = 0.0
    last_check: float = 0.0
    _started: bool = False

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_missed < 1:
            raise ValueError("heartbeat interval must be > 0 and max_missed >= 1")

    def start(self, now: float) -> None:
        self.last_answer = self.last_check = now
        self._started = True

    def due(self, now: float) -> int:
        """Allocate the id of a heartbeat to send now."""
        hb_id = self.next_id
        self.next_id += 1
        self.outstanding[hb_id] = now
        # Unanswered ids older than the death bound are useless: keep memory flat.
        if len(self.outstanding) > self.max_missed + 1:
            del self.outstanding[min(self.outstanding)]
        return hb_id

    def answered(self, hb_id: int, now: float) -> float | None:
        sent = self.outstanding.pop(hb_id, None)
        if sent is None:
            return None
        self.last_answer = now
        rtt = now - sent
        self.rtts.append(rtt)
        del self.rtts[:-1000]
        return rtt

    def dead(self, now: float) -> bool:
        if not self._started:
            return False
        if now - self.last_check > 2 * self.interval:
            # We were not running: the peer's answers may be waiting unread,
            # and the requests it answered were never sent on time.
            self.last_answer = now
            self.outstanding.clear()
        self.last_check = now
        return now - self.last_answer > self.interval * (self.max_missed + 0.5)
