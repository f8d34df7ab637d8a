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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossiplearn.attacks import parse_attack
from gossiplearn.config import RunConfig, validated
from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import Dataset
from gossiplearn.peer.config import PeerConfig, check_real_protocol
from gossiplearn.peer.peer import Peer
from gossiplearn.timeline import Step

log = logging.getLogger(__name__)

#: Events a peer carries out itself (join and recover are process starts).
OWN_KINDS = ("crash", "leave", "partition", "heal", "attack-start", "attack-stop")
#: RunConfig fields that a real peer's PeerConfig takes as they are.
_SHARED = set(PeerConfig.model_fields) - {"attack", "sybils", "neighbours"}


@dataclass(frozen=True)
class AttackPlan:
    """Who attacks in a scenario and where its Sybil identities attach, as ``simulate``
    plans it. Identities are numbered on from the scenario's peers (joining ones
    included), as in the simulator; a roster that lists them gives their peer ids."""

    attackers: list[int] = field(default_factory=list)
    #: Sybil identity -> the attacker that holds it.
    owner: dict[int, int] = field(default_factory=dict)
    #: Sybil identity -> the honest peers it attaches to.
    attached: dict[int, list[int]] = field(default_factory=dict)
    #: The topology's largest degree, the identities' links included.
    max_degree: int = 1

    def sybils_of(self, attacker: int) -> list[int]:
        """The Sybil identities ``attacker`` holds (besides its own)."""
        return sorted(s for s, a in self.owner.items() if a == attacker)

    def sybils_at(self, peer: int) -> list[int]:
        """The Sybil identities attached to honest ``peer``."""
        return sorted(s for s, peers in self.attached.items() if peer in peers)

    def identities(self) -> list[int]:
        """Every identity of the attack: the attackers and their Sybils."""
        return sorted([*self.attackers, *self.owner])


def attack_plan(config: RunConfig) -> AttackPlan:
    """The scenario's attack plan (the same on every peer: derived from the seed)."""
    from gossiplearn.plan import planned_adversary

    graph, adversary = planned_adversary(config)
    degree = max((d for _, d in graph.degree()), default=1)
    if adversary is None:
        return AttackPlan(max_degree=degree)
    owner, attached = {}, {}
    for attacker, identities in adversary.identities.items():
        for identity, neighbours in identities.items():
            if identity != attacker:
                owner[int(identity)] = attacker
                attached[int(identity)] = [int(p) for p in neighbours]
    return AttackPlan(adversary.attackers, owner, attached, degree)


def peer_config(config: RunConfig, index: int, plan: AttackPlan) -> PeerConfig:
    """The PeerConfig of role ``index``: the scenario's learning settings, keeping as many
    neighbours as the topology's largest degree (Sybil links included: an honest peer
    takes the identities attached to it; dpsgd weighs each 1 / (1 + that)), and the
    attack if it is an attacker (which then runs until stopped)."""
    check_real_protocol(config.protocol)
    values = {k: v for k, v in config.model_dump().items() if k in _SHARED}
    values["neighbours"] = plan.max_degree
    if index in plan.attackers:
        values["attack"] = config.attack
        values["sybils"] = config.sybils
        # It attacks for as long as the network learns (launch stops it once every honest
        # peer is done), as in simulate: a data attacker merges nothing and waits for
        # nobody, so with a round count of its own it would finish and leave early.
        values["rounds"] = None
    return validated(PeerConfig, f"role {index} of the scenario", values)


def measure_attack(
    peer: Peer, config: RunConfig, plan: AttackPlan, roster: list[str], data: Dataset
) -> None:
    """Make honest ``peer`` report what ``simulate`` measures of an attack, in each round
    line: ``attack_success_rate`` of its model on its test data (targeted attacks) and
    ``attacker_weight``, the share of its last merge that came from the attack's
    identities (needs the ``roster`` naming them, and a core that reports shares)."""
    from gossiplearn.attacks.adversary import attack_success, attacker_weight, success_meter

    if config.attack is None:
        return
    attack = parse_attack(config.attack)
    meter = success_meter(attack, data, peer.evaluator) if peer.evaluator else None
    if meter is not None:
        peer.model_measures.append(
            lambda params: {"attack_success_rate": attack_success(meter, params)}
        )
    identities = {roster[i] for i in plan.identities() if i < len(roster)}
    if not identities:
        return
    peer.weigh_merges = True

    def weight(core: object) -> dict[str, float]:
        share = attacker_weight(core, identities)
        return {} if share is None else {"attacker_weight": share}

    peer.merge_measures.append(weight)


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
