"""The asyncio Peer: drives a protocol core with a real clock, a transport and a trainer.

The Peer coordinates; the core decides; the learner trains (in a worker thread, so the
event loop keeps serving the network); the transport moves bytes. Every call into the core
happens on the event loop thread, one at a time.

    async with Peer(model, train_data=(x, y), test_data=(tx, ty), config=PeerConfig()) as peer:
        peer.on("round", lambda info: print(info))
        await peer.finished()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gossiplearn.aggregation import get_shares, has_shares
from gossiplearn.attacks import Attack, parse_attack
from gossiplearn.attacks.adversary import attacker_merge
from gossiplearn.attacks.core import AttackerCore, SigningAttackerCore
from gossiplearn.attacks.data import add_source_samples, poison_data
from gossiplearn.errors import (
    CheckpointError,
    GossiplearnError,
    MalformedMessage,
    ModelMismatch,
    WireError,
)
from gossiplearn.learning.trainer import Evaluator, Learner, Loss
from gossiplearn.peer.architecture import ArchitectureCheck
from gossiplearn.peer.bristle_setup import BristleAdapter
from gossiplearn.peer.checkpoint import check_writable, load_checkpoint, save_checkpoint
from gossiplearn.peer.clock import Cancellable, Clock, LoopClock
from gossiplearn.peer.config import PeerConfig
from gossiplearn.peer.discovery import (
    DIAL_TIMEOUT,
    DIALS_PER_SOURCE,
    FIRST_HAND,
    GRACE_ROUNDS,
    MAX_DIALS,
    MAX_PX_PEERS,
    AddressBook,
    Usefulness,
    decode_exchange,
    encode_exchange,
)
from gossiplearn.peer.quarantine import Quarantine
from gossiplearn.peer.reachability import Reachability
from gossiplearn.peer.sybils import SybilIdentities, any_port
from gossiplearn.protocols.bounds import ModelBounds
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.compressed_messages import CompressedModel, ReferenceMissing
from gossiplearn.protocols.events import (
    AnyCore,
    AnyEffect,
    AnyEvent,
    Core,
    Effect,
    Event,
    Finished,
    Log,
    MessageReceived,
    PeerDown,
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
from gossiplearn.protocols.gossip import GossipCore
from gossiplearn.protocols.messages import Message, ModelMessage, spec_of
from gossiplearn.protocols.model_spec import decode_spec
from gossiplearn.protocols.modest import ModestCore
from gossiplearn.protocols.modest_messages import Activity
from gossiplearn.protocols.registry import CoreSpec, build_core
from gossiplearn.protocols.rounds import LoopState
from gossiplearn.protocols.signing import PeerIdVerifier, Signer, Verifier, is_peer_id
from gossiplearn.transport.base import (
    GOODBYE_PROTOCOL,
    MODEL_PROTOCOL,
    PEER_EXCHANGE_PROTOCOL,
    SPEC_PROTOCOL,
    ProtocolNotSpoken,
    ReceiverBusy,
    Transport,
    TransportError,
)
from gossiplearn.transport.discovery import NetworkServices
from gossiplearn.types import PeerId

log = logging.getLogger("gossiplearn.peer")

#: Peers remembered as not speaking the model protocol (relay nodes) at most.
MAX_NOT_SPEAKING = 256
#: A bootstrap peer is redialled all run long; pauses double up to this many seconds.
BOOTSTRAP_MAX_DELAY = 30.0
#: Failed bootstrap dials are warnings for the first few, then one in this many.
BOOTSTRAP_LOUD_TRIES = 3
BOOTSTRAP_LOUD_EVERY = 10
#: Seconds between takes of what the transport's discovery found.
DISCOVERY_POLL = 1.0
#: Address-book source of peers found by discovery: "discovery:dht", "discovery:mdns".
DISCOVERY_SOURCE = "discovery:"
#: Addresses of one peer tried per dial, beyond the first.
MAX_DIAL_ADDRESSES = 8

#: Events a Peer reports to listeners registered with :meth:`Peer.on`.
EVENTS = ("round", "merged", "peer_joined", "peer_left", "rejected", "sent")

Listener = Callable[[dict[str, Any]], Any]


@dataclass
class PeerStatus:
    """A snapshot of a running peer."""

    peer_id: str
    addresses: list[str]
    round: int
    accuracy: float | None
    neighbours: list[str]
    known_peers: int
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    #: Peers dialled from the address book that have not sent a valid model yet.
    candidates: list[str] = field(default_factory=list)
    #: Dials to peers from the address book, by outcome: ok, failed, timeout.
    dials: dict[str, int] = field(default_factory=dict)
    #: Discovery and NAT traversal (libp2p with NetworkServices): reachability (AutoNAT:
    #: public, private, unknown), relay reservations, connection kinds (direct, relayed),
    #: DHT routing-table size, DCUtR upgrades, relayed_bytes_in / relayed_bytes_out.
    network: dict[str, Any] = field(default_factory=dict)
    #: Peers found by discovery (DHT provider lookups, mDNS), by source.
    discovered: dict[str, int] = field(default_factory=dict)

    @property
    def relayed_bytes(self) -> int:
        """Bytes (both ways, with encryption overhead) over relayed connections."""
        return int(
            self.network.get("relayed_bytes_in", 0) + self.network.get("relayed_bytes_out", 0)
        )


class Peer:
    """One gossip-learning peer on a real (or in-memory) network.

    An attacker with ``config.sybils`` > 1 holds that many identities: on libp2p it makes
    the other keys itself; with a ``transport`` of your own, pass theirs as
    ``sybil_transports``.

    ``clock`` is where the peer reads time, sleeps, sets timers and runs blocking work;
    by default the event loop's. Tests on the in-memory transport pass a
    :class:`~gossiplearn.peer.clock.VirtualClock` to run in virtual time.

    ``attack_pool`` (a data attacker's): labelled data it may gather more of; a label
    flipper adds samples of the class it flips, as attackers do in the simulator.

    ``loss(outputs, targets)`` is what local training minimises (default: cross-entropy,
    with targets the class numbers); evaluation on ``test_data`` reports accuracy.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: tuple[torch.Tensor, torch.Tensor],
        test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        config: PeerConfig | None = None,
        *,
        transport: Transport | None = None,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        bootstrap: Sequence[str] = (),
        identity: Path | None = None,
        state_dir: Path | None = None,
        announce: Sequence[str] = (),
        services: NetworkServices | None = None,
        sybil_transports: Sequence[Transport] | None = None,
        clock: Clock | None = None,
        attack_pool: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss: Loss | None = None,
    ) -> None:
        self.config = config or PeerConfig()
        self.clock: Clock = clock or LoopClock()
        max_frame = int(self.config.max_message_mb * 2**20) + 4096
        rate = self.config.inbound_mb_per_second * 2**20
        if sybil_transports is None:  # on libp2p: fresh keys, on any port of the peer's host
            sybils = self.config.sybils - 1 if transport is None else 0
            anywhere = any_port(listen)
            sybil_transports = [
                _libp2p_transport(anywhere, None, max_frame, rate, (), self.config.open_timeout)
                for _ in range(sybils)
            ]
        self.transport = transport or _libp2p_transport(
            listen, identity, max_frame, rate, announce, self.config.open_timeout, services
        )
        #: An attacker's other identities (``config.sybils``): they send what it sends.
        self.sybils = SybilIdentities(sybil_transports, self.config.send_timeout)
        self.bootstrap = list(bootstrap)
        self.state_dir = state_dir
        seeds = np.random.SeedSequence(self.config.seed).spawn(3)
        self.attack = parse_attack(self.config.attack) if self.config.attack else None
        x, y = train_data
        #: Bristle: inputs featurised once, its core, heads stamped with the extractor.
        self.bristle = BristleAdapter(model) if self.config.aggregator == "bristle" else None
        if self.bristle is not None:
            x = self.bristle.features(x)
            if test_data is not None:
                test_data = (self.bristle.features(test_data[0]), test_data[1])
        #: Clean and poisoned training data of a data attacker (see set_attack).
        self._data_modes: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.attack is not None and self.attack.kind == "data":
            rng = np.random.default_rng(seeds[2])
            if attack_pool is not None:  # a label flipper gathers samples of its source class
                pool = (attack_pool[0].numpy(), attack_pool[1].numpy())
                more = add_source_samples(self.attack, x.numpy(), y.numpy(), *pool, rng)
                x, y = torch.from_numpy(more[0]), torch.from_numpy(more[1])
            self._data_modes[False] = (x, y)
            x, y = _poison(self.attack, x, y, test_data, rng)
            self._data_modes[True] = (x, y)
        self.learner = Learner(
            model,
            x,
            y,
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
            batch_size=self.config.batch_size,
            seed=int(seeds[0].generate_state(1)[0]),
            loss=loss,
        )
        self.evaluator = Evaluator(_clone(model), *test_data) if test_data is not None else None
        self.spec = spec_of(self.learner.params())
        #: What the protocol sends and takes (Bristle: the head without its local bias).
        self.sent_spec = spec_of(self.config.sent_params(self.learner.params()))
        #: Peers running another architecture: told when connecting, never merged with.
        self.architecture = ArchitectureCheck(self.spec)
        self._core_rng = np.random.default_rng(seeds[1])
        #: Compressed model transfer. It always decodes what others compress; it
        #: compresses what it sends with ``config.compression``. Its stream ids come from
        #: fresh entropy, so a restarted peer never continues a stream of its earlier self.
        self.link = ModelLink(
            self.config.compression_spec,
            self.sent_spec,
            np.random.default_rng(secrets.randbits(128)),
        )
        self.core: Core | AnyCore | None = None
        self.book: AddressBook | None = None
        self.neighbours: list[str] = []
        #: Dialled peers on probation (-> the source of their address): they become
        #: neighbours once they send a valid model, and are dropped if they stay silent.
        self.candidates: dict[str, str] = {}
        self._dialling: dict[str, str] = {}
        self.dials: Counter[str] = Counter()
        #: Peers found by the transport's discovery services, by source (dht, mdns).
        self.discovered: Counter[str] = Counter()
        push_one = self.config.push == "one"  # a neighbour sends us one round in N
        self.usefulness = Usefulness(
            GRACE_ROUNDS * (self.config.neighbours if push_one else 1), clock=self.clock.time
        )
        self.accuracy: float | None = None
        self.traffic: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        #: Senders of message after rejected message: dropped and ignored for a while.
        self.quarantine = Quarantine()
        self.bounds: ModelBounds | None = None  # set from the own model at start
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENTS}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[Cancellable] = []
        self._finished = asyncio.Event()
        self._round_lock = asyncio.Lock()  # evaluations and checkpoints stay in round order
        self._final_round: int | None = None
        #: What stopped this peer early (e.g. its checkpoints cannot be written).
        self.failure: GossiplearnError | None = None
        self._running = False
        self._attacking = True
        #: Peers cut off by a scenario's partition: messages to and from them are lost.
        self.blocked: set[str] = set()
        #: Peers that do not speak the model protocol (relay nodes): never neighbours.
        self.not_speaking: set[str] = set()
        #: Peers whose last send failed: skipped (not waited for) and probed with backoff.
        self.reach = Reachability()
        #: Sends skipped because their peer was unreachable.
        self.skipped_sends = 0
        #: Once finished, answer each model a neighbour sends with the final model (set
        #: by a peer that stays online after its last round: ``gossiplearn peer --linger``).
        self.serve_when_finished = False
        self._served_round: dict[str, int] = {}
        self._served_at: dict[str, float] = {}
        #: When a neighbour still training last sent us a model after we finished.
        self.last_request_at: float | None = None
        #: Where the last round's time went (seconds): training, pacing, waiting to merge.
        self._round_timing: dict[str, float] = {}
        self._trained_at: float | None = None
        #: With --min-round-seconds, no round starts before this time.
        self._next_round_at = 0.0
        #: More measures for the "round" event (e.g. a scenario's attack metrics), each
        #: ``measure(x) -> {name: value}``: of each evaluated round's model (in a worker
        #: thread, beside the accuracy), and of the core right after each merge (at once:
        #: the next merge changes it). Set ``weigh_merges`` so that gossip cores keep
        #: ``merge_shares`` (the share of each sender in the last merge).
        self.model_measures: list[Callable[[dict[str, Any]], dict[str, float]]] = []
        self.merge_measures: list[Callable[[object], dict[str, float]]] = []
        self.weigh_merges = False

    # ---- public API -------------------------------------------------------------------

    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    def on(self, event: str, listener: Listener) -> None:
        """Call ``listener(info)`` on ``event``: one of round, merged, peer_joined, peer_left,
        rejected, sent. Listeners may be plain functions or coroutine functions."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}: choose one of {', '.join(EVENTS)}")
        self._listeners[event].append(listener)

    async def start(self) -> None:
        """Start networking and round 1; CheckpointError if ``state_dir`` is unusable."""
        if self.state_dir is not None:  # before the transport: nothing to undo
            check_writable(self.state_dir)
        self.transport.set_handler(MODEL_PROTOCOL, self._on_model_bytes)
        self.transport.set_handler(PEER_EXCHANGE_PROTOCOL, self._on_exchange_bytes)
        self.transport.set_handler(GOODBYE_PROTOCOL, self._on_goodbye)
        self.transport.set_handler(SPEC_PROTOCOL, self._on_spec_bytes)
        await self.transport.start()
        await self.sybils.start()
        self.book = AddressBook(self.peer_id, clock=self.clock.time)
        params, round_ = self.learner.params(), 0
        if self.state_dir is not None:
            params, round_ = self._resume(params)
        self.bounds = ModelBounds(params)
        self.core = self._make_core(params, round_)
        self._running = True
        for address in self.bootstrap:
            self._spawn(self._dial_with_backoff(address))
        if hasattr(self.transport, "discovered"):
            self._spawn(self._discovery_loop())
        self._spawn(self._exchange_loop())
        self._spawn(self._start_when_connected())

    def set_attack(self, on: bool) -> None:
        """Switch this peer's attack (``config.attack``) on or off: off, it sends honest
        models and trains on its clean data."""
        if self.attack is None:
            raise ValueError("this peer has no attack to switch")
        self._attacking = on
        if isinstance(self.core, AttackerCore):
            self.core.active = on
        if self._data_modes:
            self.learner.x, self.learner.y = self._data_modes[on]

    async def stop(self) -> None:
        """Stop training and networking; safe to call more than once."""
        if not self._running:
            return
        self._running = False
        await self._say_goodbye()
        for handle in self._timers:
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sybils.stop()
        await self.transport.stop()

    async def finished(self) -> None:
        """Wait until the peer has run all its configured rounds; raise the error that
        stopped it early, if one did (e.g. CheckpointError)."""
        await self._finished.wait()
        if self.failure is not None:
            raise self.failure

    def status(self) -> PeerStatus:
        return PeerStatus(
            peer_id=self.peer_id,
            addresses=self.transport.addresses,
            round=self._core_round(),
            accuracy=self.accuracy,
            neighbours=list(self.neighbours),
            known_peers=len(self.book) if self.book else 0,
            bytes_in=self.traffic["bytes_in"],
            bytes_out=self.traffic["bytes_out"],
            messages_in=self.traffic["messages_in"],
            messages_out=self.traffic["messages_out"],
            rejected=self._rejected_counts(),
            finished=self._finished.is_set() and self.failure is None,
            candidates=list(self.candidates),
            dials=dict(self.dials),
            network=self._network_status(),
            discovered=dict(self.discovered),
        )

    def _network_status(self) -> dict[str, Any]:
        network_status = getattr(self.transport, "network_status", None)
        return dict(network_status()) if network_status is not None else {}

    def _rejected_counts(self) -> dict[str, int]:
        """Rejections by reason: by the decoder here, by the core (replays, bad
        signatures) and by the transport (over its stream or byte-rate limits)."""
        counts = Counter(self.rejected)
        core = self.core.inner if isinstance(self.core, AttackerCore) else self.core
        counts.update(getattr(core, "rejected", {}))
        rejected_by_transport = getattr(self.transport, "rejected_counts", None)
        if rejected_by_transport is not None:
            counts.update(rejected_by_transport())
        return dict(counts)

    # ---- core driving -----------------------------------------------------------------

    def _make_core(self, params: dict[str, Any], round_: int) -> Core | AnyCore:
        """This peer's core, from the protocol registry. An attacker runs gossip around its
        attack and merges as attackers do in the simulator."""
        c = self.config
        name = c.core_protocol if self.attack is None else "gossip"
        signer, verifier = self._signing()  # SybilWall histories, MoDeST membership
        view = None
        if name == "modest":
            # Every member must derive the same samples: the view starts as this peer and
            # the peers it bootstraps from (give each peer the whole membership).
            members: list[PeerId] = [self.peer_id, *self._bootstrap_ids()]
            view = dict.fromkeys(members, Activity(0))
        weigh = None  # merge shares, for attacker_weight (launch with an attack)
        if self.weigh_merges and self.attack is None and has_shares(c.aggregator):
            weigh = get_shares(c.aggregator, **c.aggregator_options())
        spec = CoreSpec(
            peer=self.peer_id,
            settings=c,
            rounds=c.rounds or sys.maxsize,
            steps=c.steps_per_round(self.learner.steps_per_epoch()),
            samples=self.learner.samples,
            params=params,
            rng=self._core_rng,
            round=round_,
            neighbour_cap=c.neighbours,
            data=(self.learner.x.numpy(), self.learner.y.numpy()) if name == "bristle" else None,
            signer=signer,
            verifier=verifier,
            merge=None if self.attack is None else attacker_merge(self.attack, c.beta),
            weigh=weigh,
            view=view,
            valid_id=is_peer_id if verifier else None,
        )
        core = build_core(name, spec)
        if self.attack is None:
            return core
        assert isinstance(core, GossipCore)
        attacker: AttackerCore
        if c.core_protocol == "sybilwall" and signer is not None:
            # SybilWall peers take only signed models: sign as ourselves (our Sybil
            # identities re-sign with their own keys, see SybilIdentities).
            keys = _OwnKey(signer)
            attacker = SigningAttackerCore(self.peer_id, keys, core, self.attack, self._core_rng)
        else:
            attacker = AttackerCore(core, self.attack, self._core_rng)
        attacker.reports_rounds = True  # a real attacker shows its progress
        attacker.active = self._attacking
        return attacker

    def _signing(self) -> tuple[Signer | None, Verifier | None]:
        """Sign with the transport's key, verify by peer id: on libp2p, where peer ids are
        public keys. Other transports (in-memory tests) sign nothing."""
        make_signer = getattr(self.transport, "signer", None)
        if make_signer is None:
            return None, None
        return make_signer(), PeerIdVerifier()

    def _bootstrap_ids(self) -> list[str]:
        """Peer ids at the end of the bootstrap addresses (``.../p2p/ID``)."""
        return [address.rstrip("/").rsplit("/", 1)[-1] for address in self.bootstrap]

    def _core_round(self) -> int:
        core = self.core.inner if isinstance(self.core, AttackerCore) else self.core
        if isinstance(core, ModestCore):
            return core.round_estimate
        return core.round if isinstance(core, LoopState) else 0

    def _resume(self, fresh: dict[str, Any]) -> tuple[dict[str, Any], int]:
        assert self.state_dir is not None
        try:
            saved = load_checkpoint(self.state_dir, self.spec)
        except (WireError, CheckpointError) as error:
            log.warning("ignoring checkpoint in %s: %s", self.state_dir, error)
            return fresh, 0
        if saved is None:
            return fresh, 0
        round_, params = saved
        log.info("resumed from %s at round %d", self.state_dir, round_)
        return params, round_

    def _dispatch(self, event: Event | AnyEvent) -> None:
        if not self._running or self.core is None:
            return
        if self._final_round is not None and isinstance(event, MessageReceived):
            self._serve_final(event)
            return
        # A core that speaks only model messages is given no other (see _on_model_bytes).
        effects = self.core.handle(self.clock.time(), event)  # type: ignore[arg-type]
        for effect in effects:
            self._apply(effect)

    def _apply(self, effect: Effect | AnyEffect) -> None:
        match effect:
            case Send(to=to, message=message):
                self._spawn(self._send(str(to), message))
                if self.sybils.transports and self._attacking and self.book is not None:
                    addresses = self.book.addresses(str(to))
                    self._spawn(self.sybils.relay(str(to), addresses, message))
            case StartTraining(params=params, steps=steps, token=token):
                self._spawn(self._train(params, steps, token))
            case SetTimer(delay=delay, name=name, token=token):
                timer = Timer(name, token)
                handle = self.clock.call_later(delay, self._dispatch, timer)
                self._timers = [*self._timers[-15:], handle]  # older ones have fired
            case RoundDone(round=round_, params=params, merged=merged):
                if self.bounds is not None:
                    self.bounds.update(params)
                if merged:
                    self._emit("merged", {"round": round_, "models": merged})
                timing = dict(self._round_timing)
                for measure in self.merge_measures:
                    timing |= measure(self.core)
                if self._trained_at is not None:
                    timing["wait_s"] = round(self.clock.time() - self._trained_at, 3)
                self._round_timing, self._trained_at = {}, None
                self._spawn(self._round_done(round_, params, timing))
            case Finished() if isinstance(self.core, ModestCore):
                # its last round may be reported by another peer: done once ours are recorded
                self._spawn(self._finish_after_rounds())
            case Finished():
                self._final_round = self._core_round()
            case Log(text=text, level=level):
                log.log(logging.getLevelName(level.upper()), text)

    async def _start_when_connected(self) -> None:
        """Start round 1 once ``min_neighbours`` are connected, or after ``start_timeout``."""
        deadline = self.clock.time() + self.config.start_timeout
        while len(self.neighbours) < self.config.min_neighbours and self.clock.time() < deadline:
            await self.clock.sleep(0.05)
        if len(self.neighbours) < self.config.min_neighbours:
            log.warning(
                "starting with %d neighbours after %.0f s (wanted %d)",
                len(self.neighbours), self.config.start_timeout, self.config.min_neighbours,
            )  # fmt: skip
        self._dispatch(Start())

    async def _train(self, params: dict[str, Any], steps: int, token: int) -> None:
        # A gossip period bounds rounds per second: a round starts no sooner than a period
        # after the previous one. The pause comes before training, not between training and
        # pushing, so that a model goes out as soon as it is trained and the neighbours'
        # models arrive during the pause instead of adding a network delay to every round.
        pace = self.config.min_round_seconds
        pause = 0.0 if pace is None else max(0.0, self._next_round_at - self.clock.time())
        if pause > 0:
            await self.clock.sleep(pause)
        started = self.clock.time()
        if pace is not None:
            self._next_round_at = started + pace
        trained = await self.clock.run_blocking(self.learner.train, params, steps)
        timing = {"train_s": round(self.clock.time() - started, 3)}
        if pace is not None:
            timing["pace_s"] = round(pause, 3)
        self._round_timing, self._trained_at = timing, self.clock.time()
        self._dispatch(TrainingDone(trained, token))

    async def _round_done(
        self, round_: int, params: dict[str, Any], timing: dict[str, float] | None = None
    ) -> None:
        info: dict[str, Any] = {"round": round_, "neighbours": len(self.neighbours)}
        info |= timing or {}
        async with self._round_lock:
            if self.evaluator is not None and round_ % self.config.eval_every == 0:
                self.accuracy = await self.clock.run_blocking(self.evaluator.accuracy, params)
                info["accuracy"] = self.accuracy
                for measure in self.model_measures:
                    info |= await self.clock.run_blocking(measure, params)
            if self.state_dir is not None and not await self._checkpoint(round_, params):
                return
            info |= {k: self.traffic[k] for k in ("bytes_in", "bytes_out")}
            self._emit("round", info)
            if round_ == self._final_round:  # finished once the last round is recorded
                self._finished.set()

    async def _checkpoint(self, round_: int, params: dict[str, Any]) -> bool:
        """Save the round's checkpoint; if it cannot be saved, fail the peer (a peer that
        cannot resume must not pretend to run on)."""
        assert self.state_dir is not None
        try:
            await self.clock.run_blocking(save_checkpoint, self.state_dir, round_, params)
        except (OSError, CheckpointError) as error:
            text = error.strerror if isinstance(error, OSError) and error.strerror else error
            self._fail(
                CheckpointError(
                    f"cannot write the round {round_} checkpoint to {self.state_dir}: "
                    f"{text}; make it writable (or free space) or choose another state dir"
                )
            )
            return False
        return True

    def _fail(self, error: GossiplearnError) -> None:
        """Stop taking part: ``finished()`` raises ``error``."""
        if self.failure is None:
            log.error("%s", error)
            self.failure = error
        self._finished.set()

    async def _finish_after_rounds(self) -> None:
        async with self._round_lock:  # after the RoundDone effects before it
            self._finished.set()

    # ---- network ----------------------------------------------------------------------

    async def _send(self, peer: str, message: Message) -> None:
        if peer in self.blocked:
            return
        if self.reach.skip(peer, self.clock.time()):
            self.skipped_sends += 1  # it would only wait for a timeout: its probe retries
            return
        payload = await self.clock.run_blocking(self._encode_for, peer, message)
        started = self.clock.time()
        try:
            async with asyncio.timeout(self.config.send_timeout):
                await self.transport.send(peer, MODEL_PROTOCOL, payload)
        except ReceiverBusy as error:  # alive but over its limits: skip this message only
            log.info("%s refused %s: %s", peer, type(message).__name__, error)
            self.link.forget(peer)  # it did not take it: the next model starts afresh
            return
        except ProtocolNotSpoken:  # reachable, but no peer to learn with (a relay node)
            self._not_a_learner(peer)
            return
        except (TransportError, TimeoutError) as error:
            self.link.forget(peer)
            self._unreachable(peer, f"sending {type(message).__name__}", error)
            return
        self._reachable(peer)
        self.traffic["bytes_out"] += len(payload)
        self.traffic["messages_out"] += 1
        seconds = self.clock.time() - started
        self._emit("sent", {"peer": peer, "bytes": len(payload), "seconds": seconds})

    def _encode_for(self, peer: str, message: Message) -> bytes:
        """The bytes of ``message`` for ``peer``: stamped, then compressed for it."""
        return encode(self.link.outgoing(peer, self._stamped(message)))

    def _stamped(self, message: Message) -> Message:
        return self.bristle.stamp(message) if self.bristle is not None else message

    def _unreachable(self, peer: str, what: str, error: BaseException) -> None:
        """A send to ``peer`` failed: stop waiting for it (it leaves the neighbours), skip
        sends to it, and probe it with backoff; one log line when it goes."""
        now = self.clock.time()
        if self.reach.failed(peer, now):
            text = str(error) or f"no answer within {self.config.send_timeout:.0f} s"
            log.warning(
                "%s unreachable (%s failed: %s); not waiting for its models, retrying it "
                "every %.0f s at most",
                peer, what, text, self.reach.cap,
            )  # fmt: skip
            self._spawn(self._probe(peer))
        else:
            log.debug("%s still unreachable (%s failed: %s)", peer, what, error)
        self._drop_neighbour(peer)

    def _not_a_learner(self, peer: str) -> None:
        """``peer`` does not speak the model protocol (e.g. our bootstrap is a ``gossiplearn
        relay``): not a neighbour, and not unreachable either (it still serves discovery)."""
        if peer not in self.not_speaking:
            log.info("%s does not take models (a relay or bootstrap-only node?): not a "
                     "neighbour", peer)  # fmt: skip
            if len(self.not_speaking) >= MAX_NOT_SPEAKING:
                self.not_speaking.pop()
            self.not_speaking.add(peer)
        self.candidates.pop(peer, None)
        self._drop_neighbour(peer)

    def _reachable(self, peer: str, sent_to_us: bool = False) -> None:
        """``peer`` took a message (or ``sent_to_us`` a valid one): if it was unreachable,
        it is back."""
        now = self.clock.time()
        seconds = self.reach.heard_from(peer, now) if sent_to_us else self.reach.reached(peer, now)
        if seconds is not None:
            log.warning("%s is reachable again (after %.1f s)", peer, seconds)
            self._add_neighbour(peer)

    async def _probe(self, peer: str) -> None:
        """Retry an unreachable peer with backoff until it answers or we give up: with our
        model (gossip: so it takes us back as a neighbour too) or our address."""
        while self._running and self.reach.unreachable(peer):
            await self.clock.sleep(self.reach.wait(peer, self.clock.time()))
            if not self.reach.unreachable(peer):
                return  # reached meanwhile (it sent us a model)
            if self.reach.expired(peer, self.clock.time()):
                log.warning("giving up on %s: unreachable for %.0f s", peer, self.reach.give_up)
                self.reach.forget(peer)
                if self.book is not None:
                    self.book.failed(peer)
                return
            if peer in self.blocked:
                continue
            protocol, payload = await self._probe_payload()
            # A probe is small and only asks "are you there": a short deadline, so that a
            # send caught by a partition does not hold the next try back after the heal.
            deadline = min(self.config.send_timeout, max(5.0, 2 * self.config.open_timeout))
            started = self.clock.time()
            try:
                async with asyncio.timeout(deadline):
                    await self.transport.send(peer, protocol, payload)
            except ReceiverBusy:
                pass  # alive: it answered
            except ProtocolNotSpoken:
                self.reach.forget(peer)
                self._not_a_learner(peer)
                return
            except (TransportError, TimeoutError) as error:
                # the next try is due a delay after this one *started*: a try that waits
                # out its deadline does not stretch the interval between tries
                self.reach.failed(peer, started)
                log.debug("probe of %s failed: %s", peer, error)
                continue
            self._reachable(peer)

    def _model_message(self) -> Message | None:
        """The own model as the protocol sends it (signed where it signs), for greetings
        and probes; None for a core without one (MoDeST)."""
        core = self.core
        return core.model_message() if isinstance(core, LoopState | AttackerCore) else None

    async def _probe_payload(self) -> tuple[str, bytes]:
        message = self._model_message()
        if message is not None and self._final_round is None:
            return MODEL_PROTOCOL, await self.clock.run_blocking(encode, self._stamped(message))
        return PEER_EXCHANGE_PROTOCOL, encode_exchange([(self.peer_id, self.transport.addresses)])

    def _serve_final(self, event: MessageReceived[Any]) -> None:
        """Finished: answer a neighbour's model with the final one, so that it does not
        wait for us (each answer carries a round newer than the last it got from us)."""
        core = self.core.inner if isinstance(self.core, AttackerCore) else self.core
        message = event.message
        if not self.serve_when_finished or not isinstance(core, LoopState):
            return
        if not isinstance(message, ModelMessage) or event.sender not in self.neighbours:
            return
        now = self.clock.time()
        last = self._served_round.get(event.sender, core.round)
        if message.round == last and event.sender in self._served_round:
            return  # the echo of our own answer by a finished peer: no ping-pong
        self.last_request_at = now
        # At most one answer per gossip period and sender.
        if now < self._served_at.get(event.sender, 0.0) + (self.config.min_round_seconds or 1.0):
            return
        round_ = max(message.round, last + 1)  # newer than what it has: not a replay
        self._served_round[event.sender] = round_
        self._served_at[event.sender] = now
        reply = ModelMessage(round_, core.params, core.samples)
        self._spawn(self._send(event.sender, reply))

    async def _on_model_bytes(self, sender: str, payload: bytes) -> None:
        if sender in self.blocked:
            return
        self.traffic["bytes_in"] += len(payload)
        self.traffic["messages_in"] += 1
        now = self.clock.time()
        self._tell_spec(sender)
        if self.architecture.refuses(sender):  # said once, when it was found out
            self.rejected["ModelMismatch"] += 1
            return
        if self.quarantine.holds(sender, now):
            self.rejected["Quarantined"] += 1
            return
        limit = int(self.config.max_message_mb * 2**20)
        try:
            decode = functools.partial(decode_message, max_bytes=limit)
            message = await self.clock.run_blocking(decode, payload, self.sent_spec)
            if isinstance(message, CompressedModel | ReferenceMissing):
                rebuilt, reply = await self.clock.run_blocking(self.link.incoming, sender, message)
                if reply is not None:  # not the sender's fault: no strike, just a full model
                    self.rejected["ReferenceMissing"] += 1
                    self._spawn(self._send(sender, reply))
                if rebuilt is None:
                    return
                message = rebuilt
            if self.bristle is not None:  # only heads on this peer's extractor
                message = self.bristle.check(sender, message)
            if not isinstance(message, ModelMessage) and not (
                self.core is not None and speaks_any_message(self.core)
            ):
                raise MalformedMessage(f"{type(message).__name__} is not spoken by this peer")
            params = getattr(message, "params", None)
            if params is not None and self.bounds is not None:
                self.bounds.check(params)
        except ModelMismatch as error:  # another architecture: said once, then ignored
            self.rejected["ModelMismatch"] += 1
            self._emit("rejected", {"peer": sender, "reason": "ModelMismatch", "error": str(error)})
            self._incompatible(sender, str(error))
            return
        except WireError as error:
            reason = type(error).__name__
            self.rejected[reason] += 1
            log.warning("rejected a model from %s: %s", sender, error)
            self._emit("rejected", {"peer": sender, "reason": reason, "error": str(error)})
            if self.quarantine.strike(sender, now):
                log.warning(
                    "%s sent %d rejected messages in a row: ignoring it for %.0f s",
                    sender, self.quarantine.strikes, self.quarantine.seconds,
                )  # fmt: skip
                self._drop_neighbour(sender)
            return
        self.quarantine.forgive(sender)
        self._on_useful(sender)
        self._dispatch(MessageReceived(sender, message))

    async def _on_spec_bytes(self, sender: str, payload: bytes) -> None:
        """``sender`` told us its architecture: answer with ours (once), and compare."""
        if sender in self.blocked:
            return
        try:
            theirs = decode_spec(payload)
        except WireError as error:
            self.rejected[type(error).__name__] += 1
            log.warning("rejected a model spec from %s: %s", sender, error)
            return
        self._tell_spec(sender)
        if self.architecture.heard(sender, theirs):
            self._cut_off(sender)

    def _tell_spec(self, peer: str) -> None:
        """Tell ``peer`` our architecture, the first time we deal with it."""
        if self.architecture.to_tell(peer):
            self._spawn(self._send_spec(peer))

    async def _send_spec(self, peer: str) -> None:
        with contextlib.suppress(TransportError, TimeoutError):
            async with asyncio.timeout(self.config.send_timeout):
                await self.transport.send(peer, SPEC_PROTOCOL, self.architecture.payload)

    def _incompatible(self, peer: str, difference: str) -> None:
        if self.architecture.mismatch(peer, difference):
            self._cut_off(peer)

    def _cut_off(self, peer: str) -> None:
        """``peer`` runs another model: neither a neighbour nor a candidate."""
        self.candidates.pop(peer, None)
        self._drop_neighbour(peer)

    async def _on_exchange_bytes(self, sender: str, payload: bytes) -> None:
        self._tell_spec(sender)
        try:
            entries = decode_exchange(payload)
        except WireError as error:
            self.rejected[type(error).__name__] += 1
            log.warning("rejected a peer-exchange message from %s: %s", sender, error)
            return
        assert self.book is not None
        for peer, addresses in entries:  # hearsay, even about the sender itself
            if self.book.add(peer, addresses, source=sender):
                log.debug("learned of %s from %s", peer, sender)
        if not self._probation:  # modest does not wait for neighbours: no probation
            self._add_neighbour(sender)

    async def _on_goodbye(self, sender: str, payload: bytes) -> None:
        log.info("%s is leaving", sender)
        self.reach.forget(sender)
        self._drop_neighbour(sender)
        if self.book is not None:
            self.book.forget(sender)

    async def _say_goodbye(self, timeout: float = 2.0) -> None:
        """Tell neighbours we leave, so they stop waiting for our models at once."""

        async def bye(peer: str) -> None:
            with contextlib.suppress(TransportError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.transport.send(peer, GOODBYE_PROTOCOL, b"")

        await asyncio.gather(*(bye(peer) for peer in self.neighbours))

    async def _dial_with_backoff(self, address: str) -> None:
        """Dial a bootstrap peer for the whole run: at start, and again (with backoff)
        whenever this peer has fewer neighbours than its minimum (at least one), so a peer
        whose bootstrap peer was down finds the network when it comes back."""
        delay = 0.5
        attempt = 1
        joined = False
        while self._running:
            if joined and not self._wants_neighbours():
                await self.clock.sleep(self.config.exchange_interval)
                continue
            try:
                peer = await self.transport.connect(address)
            except TransportError as error:
                # loud for the first tries, then only now and then: it retries all run long
                quiet = attempt > BOOTSTRAP_LOUD_TRIES and attempt % BOOTSTRAP_LOUD_EVERY
                log.log(
                    logging.INFO if quiet else logging.WARNING,
                    "bootstrap %s unreachable (attempt %d): %s; retrying in %.1f s",
                    address,
                    attempt,
                    error,
                    delay,
                )
                await self.clock.sleep(delay)
                delay, attempt = min(delay * 2, BOOTSTRAP_MAX_DELAY), attempt + 1
                continue
            assert self.book is not None
            self.book.add(peer, [address])
            self.book.reached(peer)
            if not joined:
                # A relay node (no model protocol) serves discovery only: round 1 waits
                # for a peer to learn with.
                if await self._speaks_models(peer) is False:
                    self._not_a_learner(peer)
                self._add_neighbour(peer)
            elif peer in self.not_speaking:
                pass  # a relay node: it serves discovery, it is no neighbour
            elif peer not in self.neighbours and peer not in self.candidates:
                log.info("re-joined through bootstrap %s", address)
                self._on_dialled(peer, FIRST_HAND)
            joined = True
            delay, attempt = 0.5, 1
            await self.clock.sleep(self.config.exchange_interval)

    async def _speaks_models(self, peer: str) -> bool | None:
        """Whether a connected ``peer`` speaks the model protocol; None if the transport
        cannot tell (a send then finds out)."""
        speaks = getattr(self.transport, "speaks", None)
        if speaks is None:
            return None
        try:
            answer = await speaks(peer, MODEL_PROTOCOL)
        except TransportError:
            return None
        return answer if isinstance(answer, bool) else None

    def _wants_neighbours(self) -> bool:
        """Fewer live neighbours (and candidates) than the minimum, at least one."""
        have = len(self.neighbours) + len(self.candidates)
        return have < max(1, self.config.min_neighbours)

    async def _discovery_loop(self) -> None:
        """Take the peers the transport's discovery found (DHT providers of the network's
        key, mDNS) into the address book, as hearsay of that source (bounded by its
        quota, forgotten if they cannot be reached), and dial while below target."""
        discovered = getattr(self.transport, "discovered", None)
        if discovered is None:
            return
        while self._running:
            await self.clock.sleep(DISCOVERY_POLL)
            assert self.book is not None
            for peer, addresses, source in discovered():
                if peer in self.blocked:
                    continue
                if self.book.add(peer, addresses, source=f"{DISCOVERY_SOURCE}{source}"):
                    self.discovered[source] += 1
                    log.info("found %s via %s", peer, source)
            if len(self.neighbours) + len(self.candidates) < self.config.neighbours:
                self._dial_more()

    async def _exchange_loop(self) -> None:
        """Tell neighbours of useful peers; drop silent ones; dial while below target."""
        while self._running:
            await self.clock.sleep(self.config.exchange_interval)
            assert self.book is not None
            own = (self.peer_id, self.transport.addresses)
            payload = encode_exchange([own, *self.book.shareable(MAX_PX_PEERS - 1)])
            for peer in list(self.neighbours):
                self._spawn(self._send_exchange(peer, payload))
            self._drop_silent()
            self.book.expire()
            self._dial_more()

    async def _send_exchange(self, peer: str, payload: bytes) -> None:
        if self.reach.skip(peer, self.clock.time()):
            return
        try:
            async with asyncio.timeout(self.config.send_timeout):
                await self.transport.send(peer, PEER_EXCHANGE_PROTOCOL, payload)
        except ReceiverBusy:
            return
        except ProtocolNotSpoken:
            self._not_a_learner(peer)
            return
        except (TransportError, TimeoutError) as error:
            self._unreachable(peer, "peer exchange", error)
            return
        self._reachable(peer)

    @property
    def _probation(self) -> bool:
        """Gossip and D-PSGD wait for their neighbours' models, so a neighbour must prove
        useful."""
        return self.config.protocol in ("gossip", "dpsgd")

    def _drop_silent(self) -> None:
        """Drop neighbours and candidates that sent no valid model for the grace period."""
        if not self._probation:
            return
        assert self.book is not None
        round_ = self._core_round()
        for peer in [*self.neighbours, *self.candidates]:
            if self.usefulness.silent(peer, round_):
                grace = self.usefulness.grace_rounds
                log.info("dropping %s: no valid model in %d rounds", peer, grace)
                self._drop_neighbour(peer)
                self.candidates.pop(peer, None)
                self.book.failed(peer)

    def _dial_more(self) -> None:
        """Dial known peers, best first, while below the neighbour target; a few at a
        time, and only a few from what one source told us."""
        assert self.book is not None
        busy = {*self.neighbours, *self.candidates, *self._dialling}
        free = self.config.neighbours - len(busy)
        per_source = Counter([*self._dialling.values(), *self.candidates.values()])
        for peer in self.book.to_dial(busy | self.blocked, self.usefulness.useful()):
            if free <= 0 or len(self._dialling) >= MAX_DIALS:
                return
            source = self.book.source_of(peer) or FIRST_HAND
            if source != FIRST_HAND and per_source[source] >= DIALS_PER_SOURCE:
                continue
            per_source[source] += 1
            free -= 1
            self._dialling[peer] = source
            self._spawn(self._dial_known(peer, self.book.addresses(peer)[0]))

    async def _dial_known(self, peer: str, address: str) -> None:
        """Dial ``peer`` at ``address``, then at its other known addresses, then through
        the relays the transport knows (a peer behind NAT may hold a slot there)."""
        assert self.book is not None
        source = self._dialling.get(peer, FIRST_HAND)
        addresses = [address, *(a for a in self.book.addresses(peer) if a != address)]
        relay_routes = getattr(self.transport, "relay_routes", None)
        if relay_routes is not None:
            addresses += [a for a in relay_routes(peer) if a not in addresses]
        reached = None
        try:
            timeout = min(self.config.send_timeout, DIAL_TIMEOUT)
            for attempt in addresses[: MAX_DIAL_ADDRESSES + 1]:
                try:
                    async with asyncio.timeout(timeout):
                        reached = await self.transport.connect(attempt)
                    break
                except (TransportError, TimeoutError) as error:
                    self.dials["timeout" if isinstance(error, TimeoutError) else "failed"] += 1
                    text = str(error) or f"no answer within {timeout:.0f} s"
                    log.info("cannot reach %s at %s: %s", peer, attempt, text)
        finally:
            self._dialling.pop(peer, None)
        if reached is None:
            self.book.failed(peer)
            return
        self.dials["ok"] += 1
        if reached != peer:  # the address leads elsewhere: a stale or false entry
            self.book.failed(peer)
            return
        self.book.reached(peer)
        self._on_dialled(peer, source)

    def _on_dialled(self, peer: str, source: str) -> None:
        """A dial reached ``peer``: a neighbour at once (modest), or a candidate on
        probation that gets our model first (gossip)."""
        if peer in self.not_speaking:
            return
        self._tell_spec(peer)
        if self.architecture.refuses(peer):
            return
        if not self._probation:
            self._add_neighbour(peer)
        elif peer not in self.neighbours:
            self.candidates[peer] = source
            self.usefulness.joined(peer, self._core_round())
            self._spawn(self._send_hello(peer))

    async def _send_hello(self, peer: str) -> None:
        """Go first with a peer we dialled: send it our model, so that an honest peer
        makes us its neighbour and answers with its own (a silent one is dropped)."""
        message = self._model_message()
        if message is not None:
            await self._send(peer, message)

    def _on_useful(self, peer: str) -> None:
        """``peer`` sent a valid message: count it, and make it a neighbour, in place of
        the least useful silent one if the neighbour set is full."""
        round_ = self._core_round()
        self._reachable(peer, sent_to_us=True)
        self.usefulness.model_from(peer, round_)
        if self.book is not None:
            self.book.useful(peer)
        self.candidates.pop(peer, None)
        if peer in self.neighbours or len(self.neighbours) < self.config.neighbours:
            self._add_neighbour(peer)
            return
        silent = self.usefulness.least_useful_silent(self.neighbours, round_)
        if silent is not None and self._probation:
            log.info("%s replaces %s, which sent no valid model lately", peer, silent)
            self._drop_neighbour(silent)
            self._add_neighbour(peer)

    def _add_neighbour(self, peer: str) -> None:
        if peer in self.neighbours or len(self.neighbours) >= self.config.neighbours:
            return
        if self.reach.unreachable(peer):  # back once it takes or sends a message
            return
        if self.quarantine.holds(peer, self.clock.time()) or peer in self.not_speaking:
            return
        if self.architecture.refuses(peer):
            return
        self.candidates.pop(peer, None)
        self.neighbours.append(peer)
        self.usefulness.joined(peer, self._core_round())
        self._emit("peer_joined", {"peer": peer})
        self._dispatch(PeerUp(peer))

    def _drop_neighbour(self, peer: str) -> None:
        if peer not in self.neighbours:
            return
        self.neighbours.remove(peer)
        self._emit("peer_left", {"peer": peer})
        self._dispatch(PeerDown(peer))

    # ---- plumbing ---------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("peer task failed", exc_info=task.exception())

    def _emit(self, event: str, info: dict[str, Any]) -> None:
        for listener in self._listeners[event]:
            try:
                result = listener(info)
                if asyncio.iscoroutine(result):
                    self._spawn(result)
            except Exception:
                log.exception("%s listener failed", event)


@dataclass(frozen=True)
class _OwnKey:
    """A real attacker's keyring: its transport's key, for every model it signs."""

    own: Signer

    def signer(self, peer: PeerId) -> Signer:
        return self.own


def _poison(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    test_data: tuple[torch.Tensor, torch.Tensor] | None,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This peer's training data under a data attack."""
    labels = [int(y.max())] + ([int(test_data[1].max())] if test_data is not None else [])
    poisoned_x, poisoned_y = poison_data(attack, x.numpy(), y.numpy(), max(labels) + 1, rng)
    return torch.from_numpy(poisoned_x), torch.from_numpy(poisoned_y)


def _clone(model: nn.Module) -> nn.Module:
    """A separate module of the same architecture for evaluation (weights are loaded)."""
    import copy

    return copy.deepcopy(model)


def _libp2p_transport(
    listen: str,
    identity: Path | None,
    max_frame_bytes: int,
    bytes_per_second: float,
    announce: Sequence[str] = (),
    open_timeout: float = 5.0,
    services: NetworkServices | None = None,
) -> Transport:
    from gossiplearn.transport.libp2p import Libp2pTransport  # heavy: imported on demand

    return Libp2pTransport(
        identity,
        listen=listen,
        announce=announce,
        open_timeout=open_timeout,
        max_frame_bytes=max_frame_bytes,
        max_bytes_per_peer_per_second=bytes_per_second,
        services=services,
    )
