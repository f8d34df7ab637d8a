"""``gossiplearn peer --scenario FILE --index I``: one real peer plays role I of a scenario.

Every peer derives the same things from the scenario and its seed, with no coordinator:
its data shard (shard I of the initial and joining peers), its initial model, whether it
is one of the attackers, and the timeline with the peers each event concerns. It then
follows the events that concern it, on its own round counter (or on the clock, counted
from ``clock_origin``):

- ``crash``: the process kills itself with SIGKILL, at once, after the round's checkpoint;
- ``leave``: it says goodbye and stops;
- ``attack-start`` / ``attack-stop``: an attacker switches its attack on or off;
- ``partition`` / ``heal``: it drops messages to and from the peers outside its group
  (which needs the roster: the peer id of each index);
- ``join`` and ``recover`` are starts of the process: whoever runs the peers does them
  (``gossiplearn launch`` does, at the event's round; the state dir makes a restarted peer
  resume from its last checkpoint).

A restarted peer does not crash or leave again for events it has already passed; it takes
up the partition and attack state they left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossiplearn.config import RunConfig, topology_seed, validated
from gossiplearn.errors import ConfigError
from gossiplearn.peer.config import PeerConfig, check_real_protocol
from gossiplearn.peer.peer import Peer
from gossiplearn.timeline import Step
from gossiplearn.topologies import build_topology

log = logging.getLogger(__name__)

#: Events a peer carries out itself (join and recover are process starts).
OWN_KINDS = ("crash", "leave", "partition", "heal", "attack-start", "attack-stop")
#: RunConfig fields that a real peer's PeerConfig takes as they are.
_SHARED = set(PeerConfig.model_fields) - {"attack", "sybils", "neighbours"}


def peer_config(config: RunConfig, index: int, attackers: list[int]) -> PeerConfig:
    """The PeerConfig of role ``index``: the scenario's learning settings, keeping as many
    neighbours as the topology's largest degree (dpsgd weighs each 1 / (1 + that)), and
    the attack if it is an attacker."""
    check_real_protocol(config.protocol)
    graph = build_topology(config.topology, config.peers, topology_seed(config.seed))
    values = {k: v for k, v in config.model_dump().items() if k in _SHARED}
    values["neighbours"] = max(d for _, d in graph.degree())
    if index in attackers:
        values["attack"] = config.attack
        values["sybils"] = config.sybils
    return validated(PeerConfig, f"role {index} of the scenario", values)


def own_steps(config: RunConfig, index: int, attackers: list[int]) -> list[Step]:
    """The resolved timeline events peer ``index`` carries out itself."""
    steps = []
    for step in config.resolved_timeline():
        if step.kind not in OWN_KINDS:
            continue
        if step.kind in ("crash", "leave") and index not in step.peers:
            continue
        if step.kind.startswith("attack") and index not in attackers:
            continue
        steps.append(step)
    return steps


def read_roster(path: Path | None) -> list[str]:
    """The peer id of each index: a JSON list (``gossiplearn launch`` writes one)."""
    if path is None:
        return []
    try:
        roster = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--roster {path} not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--roster {path} is not JSON: {error}") from None
    if not isinstance(roster, list) or not all(isinstance(p, str) for p in roster):
        raise ConfigError(f"--roster {path} must be a JSON list of peer ids, one per index")
    return roster


class TimelineFollower:
    """Plays one peer's own timeline events on a running :class:`Peer`."""

    def __init__(
        self,
        peer: Peer,
        index: int,
        steps: list[Step],
        *,
        roster: list[str],
        clock_origin: float,
        leave: Callable[[], None],
    ) -> None:
        if any(s.kind == "partition" for s in steps) and not roster:
            raise ConfigError(
                "this scenario partitions the network: give --roster FILE (a JSON list of "
                "the peer id of each index) so the peer knows who is outside its group"
            )
        self.peer = peer
        self.index = index
        self.steps = steps
        self.roster = roster
        self.clock_origin = clock_origin
        self.leave = leave
        self._fired: set[int] = set()
        if any(s.kind == "attack-start" for s in steps):
            peer.set_attack(False)  # the attack waits for its window

    def attach(self) -> asyncio.Task[None]:
        """Catch up with the events already passed (a restarted peer), then follow."""
        round_ = self.peer.status().round
        elapsed = time.time() - self.clock_origin
        for step in self.steps:
            passed = (
                (step.at_round or 0) <= round_
                if step.at_round
                else ((step.at_time or 0.0) <= elapsed)
            )
            if passed:
                self._fired.add(step.index)
                if step.kind not in ("crash", "leave"):
                    self._fire(step)
        self.peer.on("round", self._on_round)
        return asyncio.create_task(self._clock())

    def _on_round(self, info: dict[str, Any]) -> None:
        for step in self.steps:
            if step.at_round is not None and step.at_round <= info["round"]:
                self._once(step)

    async def _clock(self) -> None:
        for step in sorted(
            (s for s in self.steps if s.at_time is not None), key=lambda s: s.at_time or 0.0
        ):
            delay = self.clock_origin + (step.at_time or 0.0) - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._once(step)

    def _once(self, step: Step) -> None:
        if step.index not in self._fired:
            self._fired.add(step.index)
            self._fire(step)

    def _fire(self, step: Step) -> None:
        when = f"round {step.at_round}" if step.at_round is not None else f"{step.at_time} s"
        print(f"timeline: {step.kind} at {when}", flush=True)  # before a crash, too
        log.info("timeline: %s", step.log())
        match step.kind:
            case "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            case "leave":
                self.leave()
            case "attack-start" | "attack-stop":
                self.peer.set_attack(step.kind == "attack-start")
            case "partition":
                mine = next((g for g in step.groups if self.index in g), [])
                others = {i for g in step.groups for i in g} - set(mine)
                self.peer.blocked = {self.roster[i] for i in others if i < len(self.roster)}
            case "heal":
                self.peer.blocked = set()
