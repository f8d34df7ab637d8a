"""Playing a scenario's timeline in the simulator (the events: :mod:`gossiplearn.timeline`).

Steps fire in order, each once: a round step when the network first reaches its round (the
first ``RoundDone`` of that round by any peer), a time step at its virtual instant.

- ``crash``: the peers stop at once, silently: they process nothing more and messages to
  them are lost (their senders still pay for them). ``recover`` brings a crashed peer back
  with the model of its last completed round, as a restarted process resumes from its
  checkpoint; it rejoins the network where the network is (its round counter jumps to it).
- ``leave``: the peers are asked to leave gracefully (a ``Leave`` event: a MoDeST peer
  advertises LEAVE, a gossip peer just stops), then stop.
- ``join``: new peers (ids reserved at the start, data shards of their own) start; the
  run's :class:`Rebuilder` decides how they bootstrap (MoDeST: the view of a random live
  peer, then a JOIN advert; gossip: random live neighbours, who are told ``PeerUp``).
- ``partition`` / ``heal``: messages between groups are lost until healed.
- ``attack-start`` / ``attack-stop``: the run's attackers switch their attack on or off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gossiplearn.errors import ConfigError
from gossiplearn.protocols.events import AnyCore, Core
from gossiplearn.timeline import Step
from gossiplearn.types import Params, PeerId

if TYPE_CHECKING:
    from gossiplearn.scenarios.simulator import Simulator


class Rebuilder(Protocol):
    """Makes the core of a peer that joins (``params`` None) or recovers with ``params``;
    returns it and the peers to tell ``PeerUp``."""

    def __call__(
        self, peer: PeerId, live: Sequence[PeerId], round_: int, params: Params | None
    ) -> tuple[Core | AnyCore, list[PeerId]]: ...


@dataclass
class TimelinePlayer:
    steps: list[Step]
    rebuild: Rebuilder | None = None
    #: Switches the run's attack on (True) or off.
    set_attack: Callable[[bool], None] | None = None
    #: What happened: one entry per fired step.
    log: list[dict[str, object]] = field(default_factory=list)
    _next: int = 0

    def next_time(self) -> float | None:
        """The virtual time of the next step if it is a time step."""
        if self._next < len(self.steps):
            return self.steps[self._next].at_time
        return None

    def advance(self, sim: Simulator, before: float) -> None:
        """Fire every step that is due: its round reached, or its time not after ``before``
        (the time of the simulator's next event)."""
        while self._next < len(self.steps):
            step = self.steps[self._next]
            if step.at_round is not None and step.at_round > sim.max_round:
                return
            if step.at_time is not None:
                if step.at_time > before:
                    return
                sim.now = max(sim.now, step.at_time)
            self._next += 1
            peers = self._fire(sim, step)
            entry = step.log() | {"peers": peers, "time": round(sim.now, 6)}
            self.log.append(entry | {"round": sim.max_round})

    def _fire(self, sim: Simulator, step: Step) -> list[PeerId]:
        match step.kind:
            case "crash" | "leave":
                victims: list[PeerId] = [p for p in step.peers if sim.is_alive(p)]
                for peer in victims:
                    sim.crash(peer) if step.kind == "crash" else sim.leave(peer)
                return victims
            case "join" | "recover":
                return self._start(sim, step)
            case "partition":
                sim.partition(step.groups)
            case "heal":
                sim.partition([])
            case "attack-start" | "attack-stop":
                if self.set_attack is not None:
                    self.set_attack(step.kind == "attack-start")
        return []

    def _start(self, sim: Simulator, step: Step) -> list[PeerId]:
        if self.rebuild is None:
            raise ConfigError(f"this protocol does not support {step.kind} events")
        started: list[PeerId] = []
        for peer in step.peers:
            recovering = step.kind == "recover"
            if recovering and (peer not in sim.peers or sim.is_alive(peer)):
                continue  # it left or never crashed (e.g. a crash of a finished peer)
            params = sim.last_params.get(peer) if recovering else None
            core, introduce = self.rebuild(peer, sim.live_peers(), sim.max_round, params)
            sim.start_peer(peer, core, introduce)
            started.append(peer)
        return started
