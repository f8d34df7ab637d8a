"""Which peers run another model than ours, found out when we connect.

Each peer tells every peer it connects to its model spec (once; see
:mod:`gossiplearn.protocols.model_spec`) and compares the spec it is told with its own. A peer
with another architecture is said once, in one log line naming the first tensor that
differs, and is then neither a neighbour nor merged with: its models are dropped unread. A
model that does not fit (a peer that sent one before its spec) counts the same. A peer that
later tells a spec like ours (restarted with the right ``--model``) is taken back.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TypeVar

from gossiplearn.protocols.messages import ModelSpec
from gossiplearn.protocols.model_spec import encode_spec, first_difference

log = logging.getLogger(__name__)

#: Peers remembered (told, or found incompatible), the oldest forgotten first: a flood of
#: fresh keys cannot grow them without bound.
MAX_REMEMBERED = 4096

_V = TypeVar("_V")


class ArchitectureCheck:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        #: The spec as sent to every peer we connect to.
        self.payload = encode_spec(spec)
        #: Peers with another architecture -> what differs.
        self.incompatible: OrderedDict[str, str] = OrderedDict()
        self._told: OrderedDict[str, None] = OrderedDict()
        #: Peers whose change of model was said once: a peer that flips its spec back and
        #: forth gets one warning of each kind, then debug lines (no log flood).
        self._said: OrderedDict[str, set[str]] = OrderedDict()

    def to_tell(self, peer: str) -> bool:
        """Whether ``peer`` has not been told our spec yet (and is now counted as told)."""
        if peer in self._told:
            return False
        _remember(self._told, peer, None)
        return True

    def heard(self, peer: str, theirs: ModelSpec) -> bool:
        """``peer`` told us its spec; True if it newly turned out to be incompatible."""
        difference = first_difference(self.spec, theirs)
        if difference is None:
            if self.incompatible.pop(peer, None) is not None:
                self._say(
                    peer,
                    "back",
                    "%s now runs the same model as this peer: merging with it again",
                    peer,
                )
            return False
        return self.mismatch(peer, difference)

    def mismatch(self, peer: str, difference: str) -> bool:
        """``peer`` runs another model; True (and one log line) the first time."""
        if peer in self.incompatible:
            return False
        _remember(self.incompatible, peer, difference)
        self._say(
            peer,
            "other",
            "%s runs another model (%s): not merging with it; every peer of a network needs "
            "the same --model and --dataset",
            peer,
            difference,
        )
        return True

    def _say(self, peer: str, kind: str, *line: object) -> None:
        said = self._said.get(peer, set())
        level = logging.DEBUG if kind in said else logging.WARNING
        log.log(level, *line)
        _remember(self._said, peer, said | {kind})

    def refuses(self, peer: str) -> bool:
        return peer in self.incompatible


def _remember(table: OrderedDict[str, _V], peer: str, value: _V) -> None:
    table[peer] = value
    if len(table) > MAX_REMEMBERED:
        table.popitem(last=False)
