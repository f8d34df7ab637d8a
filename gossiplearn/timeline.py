"""A scenario's timeline: what happens to the network, and when.

Each event fires at a round (``at_round``: when the network first reaches it — the first
report of that round by any peer) or at a time (``at_time``: seconds since the start,
virtual in the simulator, real in ``launch`` and ``peer``). Kinds:

- ``crash``: peers stop silently (``amount`` — a fraction below 1 of the running peers, or
  a count — or ``peers``, a list of ids); ``recover``: crashed peers come back from their
  last completed round (``peers``, ``amount`` of the crashed ones, or all of them);
- ``join``: ``amount`` new peers (fraction of the initial peers, or a count) start, with ids
  after the initial peers' and data shards of their own; ``leave``: peers leave gracefully;
- ``partition``: the network splits into ``groups`` (a number of random groups, or lists of
  ids; unlisted peers form one more group) and messages between groups are lost; ``heal``
  ends it;
- ``attack-start`` / ``attack-stop``: the scenario's attackers start or stop attacking. An
  ``attack-start`` may itself say the attack (``attack``, ``amount`` or ``peers`` as the
  attackers, ``sybils``) instead of the scenario's top-level ``attack`` settings.

Who is concerned by an event given as an amount is decided before the run, from the
scenario's seed, in order of firing (round events by round, time events by time): the
simulator, ``launch`` and every ``peer --scenario`` process resolve the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

EventKind = Literal[
    "crash", "recover", "join", "leave", "partition", "heal", "attack-start", "attack-stop"
]
#: The optional fields each kind takes (besides ``kind``, ``at_round`` and ``at_time``).
ALLOWED: dict[str, set[str]] = {
    "crash": {"amount", "peers"},
    "recover": {"amount", "peers"},
    "join": {"amount"},
    "leave": {"amount", "peers"},
    "partition": {"groups"},
    "heal": set(),
    "attack-start": {"attack", "amount", "peers", "sybils"},
    "attack-stop": set(),
}
_OPTIONAL = ("amount", "peers", "groups", "attack", "sybils")


class TimelineEvent(BaseModel):
    """One event of a scenario's timeline (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EventKind
    at_round: int | None = Field(None, ge=1)
    at_time: float | None = Field(None, ge=0)
    #: Below 1: a fraction; from 1 up: a whole count.
    amount: float | None = Field(None, gt=0)
    peers: list[int] | None = Field(None, min_length=1)
    groups: int | list[list[int]] | None = None
    attack: str | None = None
    sybils: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _fits_kind(self) -> TimelineEvent:
        if (self.at_round is None) == (self.at_time is None):
            raise ValueError(f"{self.kind}: give exactly one of at_round and at_time")
        given = {name for name in _OPTIONAL if getattr(self, name) is not None}
        allowed = ALLOWED[self.kind]
        if given - allowed:
            takes = ", ".join(sorted(allowed)) or "nothing besides at_round/at_time"
            raise ValueError(f"{self.kind} takes {takes}; not {', '.join(sorted(given - allowed))}")
        if self.amount is not None and self.amount >= 1 and self.amount != int(self.amount):
            raise ValueError(
                f"{self.kind}: amount {self.amount} is neither a fraction below 1 nor a count"
            )
        if {"amount", "peers"} <= given:
            raise ValueError(f"{self.kind}: give amount or peers, not both")
        if self.kind in ("crash", "leave", "join") and not given & {"amount", "peers"}:
            raise ValueError(f"{self.kind} needs {' or '.join(sorted(allowed))}")
        if self.kind == "partition":
            self._check_groups()
        if self.peers is not None and len(set(self.peers)) != len(self.peers):
            raise ValueError(f"{self.kind}: peers lists an id twice")
        return self

    def _check_groups(self) -> None:
        groups = self.groups
        if groups is None:
            raise ValueError("partition needs groups: a number of groups, or lists of peer ids")
        if isinstance(groups, int):
            if groups < 2:
                raise ValueError(f"partition groups must be at least 2, got {groups}")
            return
        ids = [peer for group in groups for peer in group]
        if not groups or not all(groups):
            raise ValueError("partition groups must be non-empty lists of peer ids")
        if len(set(ids)) != len(ids):
            raise ValueError("partition groups overlap: each peer belongs to one group")

    def count(self, population: int) -> int:
        """How many peers ``amount`` means out of ``population``."""
        assert self.amount is not None
        return round(self.amount * population) if self.amount < 1 else int(self.amount)

    @property
    def trigger(self) -> str:
        return f"round {self.at_round}" if self.at_round is not None else f"{self.at_time} s"


@dataclass(frozen=True)
class Step:
    """A resolved event: the concrete peers (or groups) it concerns."""

    index: int
    kind: str
    at_round: int | None
    at_time: float | None
    peers: list[int] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)

    def log(self) -> dict[str, object]:
        entry: dict[str, object] = {"kind": self.kind, "peers": self.peers}
        if self.at_round is not None:
            entry["at_round"] = self.at_round
        else:
            entry["at_time"] = self.at_time
        if self.groups:
            entry["groups"] = self.groups
        return entry


def firing_order(events: list[TimelineEvent]) -> list[int]:
    """Indices of ``events`` in the order they fire: round events by round, time events by
    time (stable); a timeline that mixes both keeps the file's order."""
    order = list(range(len(events)))
    if all(e.at_round is not None for e in events):
        return sorted(order, key=lambda i: events[i].at_round or 0)
    if all(e.at_time is not None for e in events):
        return sorted(order, key=lambda i: events[i].at_time or 0.0)
    return order


def resolve(events: list[TimelineEvent], peers: int, rng: np.random.Generator) -> list[Step]:
    """Decide the peers each event concerns, in firing order; ValueError (naming the event
    by its position in the timeline) for an id that does not exist or is not in the state
    the event needs."""
    total = peers + sum(e.count(peers) for e in events if e.kind == "join")
    running, crashed = list(range(peers)), []
    next_joiner = peers
    steps = []
    for i in firing_order(events):
        event = events[i]
        where = f"timeline[{i}] ({event.kind} at {event.trigger})"
        for peer in [*(event.peers or []), *_group_ids(event.groups)]:
            if not 0 <= peer < total:
                raise ValueError(f"{where}: peer {peer} does not exist (ids 0..{total - 1})")
        chosen: list[int] = []
        groups: list[list[int]] = []
        if event.kind in ("crash", "leave"):
            chosen = _pick(event, running, rng, where, "running")
            running = [p for p in running if p not in chosen]
            if event.kind == "crash":
                crashed += chosen
        elif event.kind == "recover":
            everyone = event.peers is None and event.amount is None
            chosen = list(crashed) if everyone else _pick(event, crashed, rng, where, "crashed")
            crashed = [p for p in crashed if p not in chosen]
            running += chosen
        elif event.kind == "join":
            chosen = list(range(next_joiner, next_joiner + event.count(peers)))
            next_joiner += len(chosen)
            running += chosen
        elif event.kind == "partition":
            groups = _groups(event.groups, total, rng)
        elif event.kind == "attack-start" and event.peers:
            chosen = sorted(event.peers)
        steps.append(Step(i, event.kind, event.at_round, event.at_time, sorted(chosen), groups))
    return steps


def _pick(
    event: TimelineEvent, pool: list[int], rng: np.random.Generator, where: str, state: str
) -> list[int]:
    if event.peers is not None:
        missing = sorted(set(event.peers) - set(pool))
        if missing:
            raise ValueError(f"{where}: peers {missing} are not {state} at that point")
        return list(event.peers)
    count = min(event.count(len(pool)), len(pool))
    picks = rng.choice(len(pool), size=count, replace=False) if count else np.empty(0, int)
    return [pool[j] for j in sorted(int(p) for p in picks)]


def _group_ids(groups: int | list[list[int]] | None) -> list[int]:
    return [p for group in groups for p in group] if isinstance(groups, list) else []


def _groups(
    groups: int | list[list[int]] | None, total: int, rng: np.random.Generator
) -> list[list[int]]:
    if isinstance(groups, int):
        shuffled = rng.permutation(total)
        return [sorted(int(p) for p in part) for part in np.array_split(shuffled, groups)]
    assert groups is not None
    listed = {p for group in groups for p in group}
    rest = [p for p in range(total) if p not in listed]
    return [sorted(group) for group in groups] + ([rest] if rest else [])
