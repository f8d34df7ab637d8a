"""Senders whose messages are rejected again and again are dropped and ignored for a while.

Pure bookkeeping (the caller passes the clock). A sender earns a strike for each message
that fails the checks (undecodable, NaN, out of range) and loses its strikes with one
valid model; ``strikes`` in a row put it in quarantine for ``seconds``: its messages are
ignored and it is not taken as a neighbour, so nobody waits for its models. Memory is
bounded whatever the number of identities: the least recently seen are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

V = TypeVar("V")
#: Senders remembered (strikes or quarantine); forgetting one only ever forgives it.
MAX_TRACKED = 4096


class Quarantine:
    def __init__(self, strikes: int = 3, seconds: float = 120.0) -> None:
        self.strikes = strikes
        self.seconds = seconds
        self._strikes: OrderedDict[str, int] = OrderedDict()
        self._until: OrderedDict[str, float] = OrderedDict()

    def strike(self, sender: str, now: float) -> bool:
        """Count a rejected message; True if this puts ``sender`` in quarantine."""
        count = self._strikes.pop(sender, 0) + 1
        if count < self.strikes:
            _remember(self._strikes, sender, count)
            return False
        _remember(self._until, sender, now + self.seconds)
        return True

    def forgive(self, sender: str) -> None:
        """A valid model: the strikes in a row start again from zero."""
        self._strikes.pop(sender, None)

    def holds(self, sender: str, now: float) -> bool:
        until = self._until.get(sender)
        if until is None:
            return False
        if now < until:
            return True
        del self._until[sender]
        return False

    def __len__(self) -> int:
        return len(self._until)


def _remember(table: OrderedDict[str, V], key: str, value: V) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)
