"""Deterministic discrete-event simulator driving protocol cores in virtual time.

A heap of timestamped events (ties broken by insertion order) is the only clock. Every
message goes through the real wire codec: the bytes counted are the bytes a peer would
send, and a message a peer would reject is rejected here too. With ``late_decoding`` a
model not trained yet is encoded and decoded when its content is first read
(:mod:`gossiplearn.scenarios.late`), so that deliveries do not force training to run.
Training runs when it is asked for and its result is delivered after the simulated compute
time.

Peers may crash, recover, leave or join while it runs, and the network may split into
groups (see :mod:`gossiplearn.scenarios.timeline`): a crashed or departed peer processes
nothing more, messages to it (or across groups, or lost with the network's ``loss``
probability) are lost, and a recovered peer gets nothing its earlier self had pending.
With compression each peer has a :class:`~gossiplearn.protocols.feedback.ModelLink`: every
send is compressed for its receiver, the bytes counted are the compressed bytes, and a
receiver's ReferenceMissing answer travels back like any message. A core that
speaks more than model messages (``accepts_any_message``) gets every decoded message; any
other core gets model messages only, and other types are counted as rejected.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gossiplearn.errors import WireError
from gossiplearn.learning.pool import DeferredParams, TrainingPool
from gossiplearn.protocols.codec import decode_message, encode, encoded_model_size
from gossiplearn.protocols.events import (
    AnyCore,
    AnyEffect,
    Core,
    Effect,
    Event,
    Finished,
    Leave,
    Log,
    MessageReceived,
    PeerUp,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    Timer,
    TrainingDone,
    speaks_any_message,
)
from gossiplearn.protocols.feedback import ModelLink
from gossiplearn.protocols.messages import Message, ModelMessage, ModelSpec
from gossiplearn.scenarios.late import LateEncoding, late_model_message
from gossiplearn.scenarios.network import NetworkModel
from gossiplearn.types import Params, PeerId

if TYPE_CHECKING:
    from gossiplearn.scenarios.timeline import TimelinePlayer

RoundCallback = Callable[[PeerId, int, Params, float], None]


@dataclass(frozen=True)
class _TrainingFinished:
    """The simulated compute time of a training job has passed."""

    ticket: int
    token: int


@dataclass(frozen=True)
class _Delivery:
    """Encoded bytes arriving at a peer; decoded (and maybe rejected) on arrival."""

    sender: PeerId
    payload: bytes | LateEncoding = field(repr=False)


_Internal = _TrainingFinished | _Delivery


@dataclass
class SimPeer:
    core: Core | AnyCore
    trains: bool = False
    alive: bool = True
    finished: bool = False
    #: Bumped when the peer recovers: events for an earlier incarnation are dropped.
    incarnation: int = 0
    #: Compressed model transfer (None: models travel as they are). A recovering peer gets
    #: a new one: like a restarted process, it holds no references.
    link: ModelLink | None = None


@dataclass
class TrafficStats:
    bytes_sent: int = 0
    messages_sent: int = 0
    messages_rejected: Counter[str] = field(default_factory=Counter)
    #: Training jobs started, per peer.
    trainings: Counter[PeerId] = field(default_factory=Counter)


class Simulator:
    def __init__(
        self,
        network: NetworkModel,
        spec: ModelSpec,
        pool: TrainingPool,
        *,
        max_message_bytes: int,
        on_round: RoundCallback,
        on_log: Callable[[PeerId, Log], None] | None = None,
        loss_rng: np.random.Generator | None = None,
        late_decoding: bool = False,
    ) -> None:
        self.network = network
        #: Hand a model whose sender's training has not run yet to its receiver undecoded:
        #: it is decoded when its content is first read (see scenarios.late).
        self.late_decoding = late_decoding
        #: Models handed over undecoded, perhaps not read yet (see :meth:`decode_late`).
        self._late: list[DeferredParams] = []
        self._late_pruned = 0
        self.spec = spec
        self.pool = pool
        self.max_message_bytes = max_message_bytes
        self.on_round = on_round
        self.on_log = on_log
        self.peers: dict[PeerId, SimPeer] = {}
        self.now = 0.0
        self.stats = TrafficStats()
        self._queue: list[tuple[float, int, PeerId, int, Event | _Internal]] = []
        self.loss_rng = loss_rng
        #: Partition: peer -> its group; peers in no group reach everyone.
        self.group_of: dict[PeerId, int] = {}
        #: The model of each peer's last completed round (kept for recovering peers).
        self.keep_last_params = False
        self.last_params: dict[PeerId, Params] = {}
        self._order = itertools.count()
        #: The highest round any peer reported finishing (timeline steps fire on it).
        self.max_round = 0
        self.timeline: TimelinePlayer | None = None
        #: Called when a peer crashes or leaves, and when one joins (with the round it
        #: joins at).
        self.on_gone: Callable[[PeerId], None] | None = None
        self.on_joined: Callable[[PeerId, int], None] | None = None
        #: Makes each peer's (each incarnation's) compressed link; None: no compression.
        self.link_factory: Callable[[PeerId], ModelLink] | None = None

    def _link(self, peer: PeerId) -> ModelLink | None:
        return None if self.link_factory is None else self.link_factory(peer)

    def add_peer(self, peer: PeerId, core: Core | AnyCore, *, trains: bool = True) -> None:
        """Add a peer; ``trains`` peers have a training slot in the pool under the same id."""
        self.peers[peer] = SimPeer(core, trains, link=self._link(peer))
        self.network.add_peer(peer)

    def schedule(self, time: float, peer: PeerId, event: Event | _Internal) -> None:
        incarnation = self.peers[peer].incarnation
        heapq.heappush(self._queue, (time, next(self._order), peer, incarnation, event))

    def start_all(self, at: float = 0.0) -> None:
        for peer in self.peers:
            self.schedule(at, peer, Start())

    def run(self, until: float = math.inf) -> None:
        """Process events in time order until none is left or virtual time passes ``until``."""
        while self._queue and self._queue[0][0] <= until:
            if self.timeline is not None:
                self.timeline.advance(self, before=self._queue[0][0])
            time, _, peer_id, incarnation, event = heapq.heappop(self._queue)
            self.now = time
            peer = self.peers[peer_id]
            if not peer.alive or incarnation != peer.incarnation:
                continue
            if isinstance(event, _Delivery):
                effects = self._deliver(peer, event)
                if effects is None:
                    continue
            else:
                if isinstance(event, _TrainingFinished):
                    trained = self.pool.claim(event.ticket)
                    if trained is None:  # abandoned: the peer started another job since
                        continue
                    event = TrainingDone(trained, event.token)
                effects = peer.core.handle(time, event)
            self._apply(peer_id, peer, effects)
            if isinstance(event, Leave):
                self._gone(peer_id)

    # ---- timeline ----------------------------------------------------------------------

    def is_alive(self, peer: PeerId) -> bool:
        return peer in self.peers and self.peers[peer].alive

    def live_peers(self) -> list[PeerId]:
        """Training peers still running, in the order they were added."""
        return [p for p, peer in self.peers.items() if peer.alive and peer.trains]

    def crash(self, peer: PeerId) -> None:
        """Stop ``peer`` now, silently."""
        self._gone(peer)

    def leave(self, peer: PeerId) -> None:
        """Ask ``peer`` to leave gracefully now; it stops once it has handled that."""
        self.schedule(self.now, peer, Leave())

    def start_peer(self, peer: PeerId, core: Core | AnyCore, introduce: Sequence[PeerId]) -> None:
        """Start a new (or recovering) peer now and tell ``introduce`` about it."""
        if peer in self.peers:  # recovering: a new incarnation of a crashed peer
            old = self.peers[peer]
            self.peers[peer] = SimPeer(
                core, old.trains, incarnation=old.incarnation + 1, link=self._link(peer)
            )
        else:
            self.add_peer(peer, core)
        self.schedule(self.now, peer, Start())
        for other in introduce:
            self.schedule(self.now, other, PeerUp(peer))
        if self.on_joined is not None:
            self.on_joined(peer, self.max_round)

    def _gone(self, peer: PeerId) -> None:
        if self.peers[peer].alive:
            self.peers[peer].alive = False
            if self.on_gone is not None:
                self.on_gone(peer)

    def partition(self, groups: Sequence[Sequence[PeerId]]) -> None:
        """Split the network into ``groups`` (none: heal it)."""
        self.group_of = {peer: g for g, group in enumerate(groups) for peer in group}

    def _reaches(self, sender: PeerId, to: PeerId) -> bool:
        """Whether a message sent now will arrive: the receiver is up, in the sender's group
        (if partitioned) and the message is not lost."""
        if not self.is_alive(to):
            return False
        groups = self.group_of
        if sender in groups and to in groups and groups[sender] != groups[to]:
            return False
        loss = self.network.settings.loss
        return not (loss and self.loss_rng is not None and self.loss_rng.random() < loss)

    @property
    def all_finished(self) -> bool:
        return all(p.finished or not p.core.reports_rounds for p in self.peers.values())

    def decode_late(self) -> None:
        """Decode every model handed over undecoded that no peer has read yet, so that one
        its receiver would have rejected is found (LateRejection) even if its content was
        never used."""
        late, self._late = self._late, []
        for params in late:
            params.fill()

    def _remember_late(self, message: Message) -> None:
        if isinstance(message, ModelMessage) and isinstance(message.params, DeferredParams):
            self._late.append(message.params)
            # Forget those decoded since the last pass: a decoded model keeps the bytes it
            # was decoded from alive. A pass every 256 new ones keeps that bounded.
            if len(self._late) > self._late_pruned + 256:
                self._late = [params for params in self._late if not params.ready]
                self._late_pruned = len(self._late)

    def _deliver(self, peer: SimPeer, delivery: _Delivery) -> Sequence[Effect | AnyEffect] | None:
        """Decode and hand over a message; None if it is rejected."""
        try:
            payload = delivery.payload
            decoded: Message | None = None
            if self.late_decoding and isinstance(payload, LateEncoding):
                decoded = late_model_message(payload, self.spec, self.max_message_bytes)
                if decoded is not None:
                    self._remember_late(decoded)
            if decoded is None:
                data = payload if isinstance(payload, bytes) else payload.payload()
                decoded = decode_message(data, self.spec, max_bytes=self.max_message_bytes)
            message, reply = (
                (decoded, None)
                if peer.link is None
                else peer.link.incoming(delivery.sender, decoded)
            )
        except WireError as error:
            self.stats.messages_rejected[type(error).__name__] += 1
            return None
        answer: list[Effect | AnyEffect] = [] if reply is None else [Send(delivery.sender, reply)]
        if message is None:
            if reply is not None:
                self.stats.messages_rejected["ReferenceMissing"] += 1
            return answer
        if isinstance(message, ModelMessage):
            return [*answer, *peer.core.handle(self.now, MessageReceived(delivery.sender, message))]
        if speaks_any_message(peer.core):
            return [*answer, *peer.core.handle(self.now, MessageReceived(delivery.sender, message))]
        self.stats.messages_rejected["UnexpectedMessage"] += 1
        return None

    def _apply(self, peer_id: PeerId, peer: SimPeer, effects: Sequence[Effect | AnyEffect]) -> None:
        # One encoding per message object, shared by its sends.
        encoded: dict[int, tuple[bytes | LateEncoding, int]] = {}
        for effect in effects:
            match effect:
                case Send(to=to, message=message, via=via):
                    payload: bytes | LateEncoding
                    if peer.link is not None:  # compressed for this receiver: its own bytes
                        payload = encode(peer.link.outgoing(to, message, via))
                        size = len(payload)
                    else:
                        if id(message) not in encoded:
                            encoded[id(message)] = _encoding(message)
                        payload, size = encoded[id(message)]
                    self.stats.bytes_sent += size
                    self.stats.messages_sent += 1
                    sender = peer_id if via is None else via
                    arrival = self.network.arrival_time(self.now, sender, to, size)
                    if self._reaches(sender, to):
                        self.schedule(arrival, to, _Delivery(sender, payload))
                case StartTraining(params=params, steps=steps, token=token):
                    if not peer.trains or not isinstance(peer_id, int):
                        raise RuntimeError(f"peer {peer_id!r} cannot train but asked to")
                    ticket = self.pool.submit(peer_id, params, steps)
                    self.stats.trainings[peer_id] += 1
                    samples = steps * self.pool.samples_per_step(peer_id)
                    done = self.now + self.network.training_time(peer_id, samples)
                    self.schedule(done, peer_id, _TrainingFinished(ticket, token))
                case SetTimer(delay=delay, name=name, token=token):
                    self.schedule(self.now + delay, peer_id, Timer(name, token))
                case RoundDone(round=round_, params=params):
                    self.max_round = max(self.max_round, round_)
                    if self.keep_last_params:
                        self.last_params[peer_id] = params
                    self.on_round(peer_id, round_, params, self.now)
                case Finished():
                    peer.finished = True
                case Log() if self.on_log is not None:
                    self.on_log(peer_id, effect)


def _encoding(message: Message) -> tuple[bytes | LateEncoding, int]:
    """The message's payload (or its late encoding) and its size in bytes."""
    if isinstance(message, ModelMessage):
        params = message.params
        if isinstance(params, DeferredParams) and not params.ready:
            size = encoded_model_size(message.round, message.samples, params.spec)
            return LateEncoding(message, size), size
    payload = encode(message)
    return payload, len(payload)
