"""MoDeST (de Vos et al., 2023): federated learning's sampling without a server.

How it works: every peer keeps a view, peer id -> (last active round, membership index,
JOIN|LEAVE). The candidates of round k are the peers of the view that have not left and
were active in the last ``inactivity_threshold`` rounds, plus the peer itself; sorted by
sha256(f"{peer}-{k}") they give the order O_k, the same on every peer with the same view.
The first ``sample_size`` peers of O_1 train round 1 from the shared initial model. A
trainer of round k pings O_{k+1} from the top until ``aggregators`` peers answered (a ping
timeout falls through to the next candidate) and pushes its model and its view to them.
An aggregator of sample k+1 collects ⌈s·sf⌉ trained models, averages them weighted by
samples (reported as RoundDone(k)), finds ``sample_size`` responsive peers of O_{k+1} in
the same way and pushes them the average, unless it saw a newer round meanwhile. A peer
given an aggregated model of a newer round drops any training in progress and trains it.
Views are merged on every transfer; every ping, pong or model refreshes its sender.

Churn: a joining peer advertises JOIN to ``sample_size`` random active peers, which keep it
pending until their next push, so it is not sampled at once; a leaving peer advertises
LEAVE, applied at once; a crashed peer says nothing: ping timeouts skip it and it ages out
after ``inactivity_threshold`` rounds.

Liveness additions. As in the authors' later code (Plexus), an aggregator that waited
``aggregation_timeout`` since the first model of its round averages what it has (crashed
trainers never send). And a stall watchdog of ours: a peer whose r̂ has not grown for
``stall_timeout`` pings the aggregators of sample r̂+1; if none of them knows a later round
either, the round's state died with crashed peers, so it pushes its own model to them as a
trained model of sample r̂+1 -- at first only if its model is recent (trained in round
r̂-1 or later), allowing 2 more rounds of staleness at each further stalled check, so the
freshest survivors restart the rounds. It gives up after 8 checks without progress, and
once r̂ is past the last round.

Signed membership: given a ``signer``, a peer signs each membership change it announces
(peer, index, status); given a ``verifier``, adverts and view records carrying a change
other than the configured initial JOIN are taken only with a valid signature of the peer
they describe (others are dropped and counted in ``rejected["BadSignature"]``), so no
peer can make another leave, rejoin or vanish. ``last_active`` is observed, not signed
(a subject could sign any round for itself anyway): it is bounded instead, see below.

Defences (anyone can start a peer; a new identity costs nothing; DESIGN.md's threat model):
- ids are checked (``valid_id``: libp2p peer ids on libp2p, ints in the simulator);
- a message whose round is more than ``window`` rounds ahead of r̂ is dropped
  (``rejected["RoundTooFar"]``): an honest member samples us only for rounds in which we
  are active in its view, i.e. at most ``inactivity_threshold`` (the default window)
  after the last round we know of;
- models (trained or aggregated) count only from members: the sender is in the view (not
  only pending, not left) or its own record in the message is signed by it (a peer that
  joined through others); anything else is ``rejected["NotMember"]``. A stranger's ping
  is answered but changes nothing;
- given a ``verifier``, a peer unknown to us enters the view only through a record signed
  by itself (the initial JOIN too) or its own signed advert;
- no relayed record raises a ``last_active`` above r̂ or the message's round (counted in
  ``rejected["ActivityCapped"]``), so relays never move r̂ nor keep a peer ahead of us;
- the view (with pending joins) holds at most ``view_cap`` peers, at most
  ``source_quota`` of them introduced by one relaying peer. When full, a newcomer replaces
  the left or least recently heard-of entry only if it was heard of first-hand more
  recently, so a flood of relayed records evicts nobody.
A member may still claim rounds within the window, once per message, and as a sampled
aggregator push a bad model: that needs robust aggregation, not membership rules.

Finishing: a peer emits Finished once the run is over for it and it owes nothing more: it
trained round ``rounds`` and pushed it, or it aggregated sample ``rounds``+1, or it learnt
that r̂ passed ``rounds``; not while it trains, pings or holds an unfinished aggregation.

Invariants: a message's round is the sample its receivers act in (trained model k+1 ->
aggregators of k+1; aggregated model k -> trainers of k); stale trained models, duplicate
aggregated models and unexpected pongs are ignored; pending joins are never candidates;
the round estimate r̂ never decreases; a peer that left ignores everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from gossiplearn.protocols.events import (
    AnyEffect,
    AnyEvent,
    Finished,
    Leave,
    Log,
    MessageReceived,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    Timer,
    TrainingDone,
)
from gossiplearn.protocols.fedavg import weighted_average
from gossiplearn.protocols.messages import Message
from gossiplearn.protocols.modest_messages import (
    MAX_PEER_ID_BYTES,
    MAX_PEER_ID_INT,
    Activity,
    Membership,
    MembershipAdvert,
    ModelKind,
    ModestModel,
    Ping,
    Pong,
    View,
    membership_of,
)
from gossiplearn.protocols.signing import Signer, Verifier
from gossiplearn.types import Params, PeerId

#: The stall watchdog gives up after this many checks in a row without progress.
MAX_STALLED_CHECKS = 8
#: Most peers a view holds (with pending joins): far more than any sample needs, few
#: enough that a flood of records costs bounded memory and time per message.
MAX_VIEW = 4096
#: Most view entries that one relaying peer may have introduced at a time.
SOURCE_QUOTA = 256

#: Tells whether a value may be a peer id of this network.
IdCheck = Callable[[object], bool]


@runtime_checkable
class SharesView(Protocol):
    """A peer whose membership view a joining peer may copy."""

    def view_snapshot(self) -> View: ...


@dataclass(frozen=True)
class ModestConfig:
    rounds: int
    local_steps: int
    sample_size: int = 10
    aggregators: int = 1
    success_fraction: float = 1.0
    #: Seconds to wait for a pong before trying the next candidate.
    ping_timeout: float = 5.0
    #: Rounds without news after which a peer is no longer a candidate.
    inactivity_threshold: int = 50
    #: Seconds after its first model of a round that an aggregator averages what it has.
    aggregation_timeout: float = 10.0
    #: Seconds without a new round before the watchdog checks; None: 12 ping timeouts.
    stall_timeout: float | None = None
    samples: int = 0
    #: Rounds a message may be ahead of r̂; None: ``inactivity_threshold``.
    round_window: int | None = None
    view_cap: int = MAX_VIEW
    source_quota: int = SOURCE_QUOTA

    @property
    def models_needed(self) -> int:
        """⌈s·sf⌉ trained models make an aggregation (rounded first: 10·0.3 is 3, not 4)."""
        return max(1, math.ceil(round(self.sample_size * self.success_fraction, 9)))

    @property
    def stall_after(self) -> float:
        return self.stall_timeout if self.stall_timeout is not None else 12 * self.ping_timeout

    @property
    def window(self) -> int:
        return self.round_window if self.round_window is not None else self.inactivity_threshold


def ids_like(me: PeerId) -> IdCheck:
    """The id check of a network whose ids look like ``me``: ints (the simulator) or
    strings (other transports; libp2p peers pass a stricter check)."""
    if isinstance(me, int):
        return lambda p: type(p) is int and 0 <= p < MAX_PEER_ID_INT
    return lambda p: isinstance(p, str) and 0 < len(p.encode()) <= MAX_PEER_ID_BYTES


# ---- views -------------------------------------------------------------------------


def sample_order(peers: Iterable[PeerId], k: int) -> list[PeerId]:
    """O_k: ``peers`` sorted by sha256(f"{peer}-{k}"), the same on every peer."""
    return sorted(peers, key=lambda p: (hashlib.sha256(f"{p}-{k}".encode()).digest(), str(p)))


def merge_activity(mine: Activity, theirs: Activity) -> Activity:
    """last_active is the max; the higher membership index decides the status (on a tie,
    LEAVE wins: one change number cannot mean both)."""
    if mine.index != theirs.index:
        newer = mine if mine.index > theirs.index else theirs
    else:
        newer = mine if mine.status >= theirs.status else theirs
    return dataclasses.replace(newer, last_active=max(mine.last_active, theirs.last_active))


def merge_view(view: dict[PeerId, Activity], incoming: View, me: PeerId | None = None) -> None:
    """Merge ``incoming`` into ``view`` in place: unknown peers are added, known ones merged
    with :func:`merge_activity`. Records about ``me`` are skipped: a peer is the authority
    on its own membership."""
    for peer, theirs in incoming.items():
        if peer == me:
            continue
        mine = view.get(peer)
        view[peer] = theirs if mine is None else merge_activity(mine, theirs)


# ---- determine_available -----------------------------------------------------------

Purpose = Literal["aggregators", "participants", "probe"]


@dataclass(eq=False)
class _Lookup:
    """determine_available(round, count) in progress: ping O_round in order, at most
    ``count`` outstanding, until ``count`` peers answered or the candidates run out."""

    purpose: Purpose
    round: int
    count: int
    candidates: list[PeerId]
    model: Params = field(repr=False)
    samples: int = 0
    #: r̂ when a probe started: a later round learnt from the pongs means no stall.
    since: int = 0
    next: int = 0
    found: list[PeerId] = field(default_factory=list)
    waiting: dict[int, PeerId] = field(default_factory=dict)  # nonce -> peer


class ModestCore:
    """Sans-I/O MoDeST for one peer (see the module docstring)."""

    reports_rounds = True
    accepts_any_message = True

    def __init__(
        self,
        me: PeerId,
        config: ModestConfig,
        params: Params,
        view: View,
        rng: np.random.Generator,
        *,
        joining: bool = False,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        valid_id: IdCheck | None = None,
    ) -> None:
        self.me = me
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.valid_id = valid_id or ids_like(me)
        #: Messages or records ignored, by reason (read by drivers for their metrics).
        self.rejected: Counter[str] = Counter()
        self.params = params
        self.rng = rng
        self.joining = joining
        self.view: dict[PeerId, Activity] = {}
        self.pending: dict[PeerId, Activity] = {}
        #: Peer -> last round it was heard of first-hand or by configuration (-1: only
        #: relayed); eviction keeps the most recently heard.
        self._heard: dict[PeerId, int] = {}
        #: Peer -> the relaying peer that introduced it, and how many each introduced.
        self._source: dict[PeerId, PeerId] = {}
        self._quota: Counter[PeerId] = Counter()
        self._seen = 0  # highest last_active ever in the view
        for peer, record in view.items():  # given by configuration: trusted
            if peer != me and not self.valid_id(peer):
                self.rejected["BadPeerId"] += 1
                continue
            self._set(peer, record)
            self._heard[peer] = record.last_active
        own = self.view.get(me, Activity(self._seen if joining else 0))
        self._set(me, own)
        self.train_round = 0  # sample whose aggregated model we last adopted
        self.agg_round = 0  # sample whose trained models we last collected
        self.training = False
        self.trained = False  # finished training train_round
        self.aggregated = False  # finished aggregating agg_round
        self.buffer: dict[PeerId, tuple[Params, int]] = {}
        self.left = False
        self.finished = False
        self._nonces = itertools.count(1)
        self._pings: dict[int, tuple[_Lookup, PeerId]] = {}
        self._watch_round = 0  # r̂ at the last watchdog check
        self._stalled = 0  # watchdog checks in a row without progress

    # ---- the view ----------------------------------------------------------------------

    @property
    def round_estimate(self) -> int:
        """r̂ = max(train round, aggregation round, highest round seen in the view)."""
        return max(self.train_round, self.agg_round, self._seen)

    @property
    def round_limit(self) -> int:
        """The highest round a message may carry: r̂ plus the window."""
        return self.round_estimate + self.config.window

    def is_member(self, peer: PeerId) -> bool:
        """In the view (not only pending) and not left: its models and rounds count."""
        record = self.view.get(peer)
        return peer != self.me and record is not None and record.status == Membership.JOIN

    def candidates(self, k: int) -> list[PeerId]:
        """Peers that may be sampled in round ``k``: not left, recently active, and self."""
        floor = k - self.config.inactivity_threshold
        peers = [
            p
            for p, a in self.view.items()
            if a.status == Membership.JOIN and a.last_active >= floor and p != self.me
        ]
        return [*peers, self.me]

    def order(self, k: int) -> list[PeerId]:
        return sample_order(self.candidates(k), k)

    def sample(self, k: int) -> list[PeerId]:
        """The first ``sample_size`` candidates of O_k (before any ping)."""
        return self.order(k)[: self.config.sample_size]

    def view_snapshot(self) -> dict[PeerId, Activity]:
        """The view as sent with models (own record refreshed to r̂)."""
        own = self.view[self.me]
        active = max(own.last_active, self.round_estimate)
        self._set(self.me, dataclasses.replace(own, last_active=active))
        return dict(self.view)

    def _set(self, peer: PeerId, record: Activity) -> None:
        self.view[peer] = record
        self._seen = max(self._seen, record.last_active)

    def _refresh(self, peer: PeerId, round_: int) -> None:
        """A ping, pong or model from ``peer``: it was active in max(r̂, round_)."""
        record = self.view.get(peer)
        if record is not None and peer != self.me:
            active = max(record.last_active, self.round_estimate, round_)
            self._set(peer, dataclasses.replace(record, last_active=active))
            self._heard[peer] = active

    def _flush_pending(self) -> None:
        pending, self.pending = self.pending, {}
        merged = dict(self.view)
        merge_view(merged, pending, self.me)
        for peer in pending:
            self._set(peer, merged[peer])

    # ---- events ------------------------------------------------------------------------

    def handle(self, now: float, event: AnyEvent) -> list[AnyEffect]:
        if self.left:
            return []
        effects = self._handle(event)
        if not self.finished and self._done():
            self.finished = True
            effects.append(Finished())
        return effects

    def _handle(self, event: AnyEvent) -> list[AnyEffect]:
        match event:
            case Start():
                return self._start()
            case Leave():
                return self._leave()
            case TrainingDone(params=params, token=token):
                return self._trained(params, token)
            case Timer(name="ping", token=nonce):
                return self._ping_answered(nonce, None)
            case Timer(name="aggregate", token=index):
                if index == self.agg_round and not self.aggregated and self.buffer:
                    return [
                        Log(f"aggregation timeout in sample {index}", "debug"),
                        *self._aggregate(),
                    ]
            case Timer(name="watchdog"):
                return self._watchdog()
            case MessageReceived(sender=sender, message=message):
                return self._receive(sender, message)
        return []

    def _done(self) -> bool:
        """The run is over for us and we owe nothing: no training, lookup or aggregation
        in progress, and we trained the last round, or learnt that r̂ passed it."""
        rounds = self.config.rounds
        if self.training or self._pings or (self.buffer and not self.aggregated):
            return False
        return self.round_estimate > rounds or (self.train_round >= rounds and self.trained)

    def _receive(self, sender: PeerId, message: Message) -> list[AnyEffect]:
        round_ = getattr(message, "round", 0)
        if sender == self.me or not self.valid_id(sender):
            self.rejected["BadPeerId"] += 1
            return []
        if round_ > self.round_limit:
            self.rejected["RoundTooFar"] += 1  # nobody can sample us that far ahead
            return []
        match message:
            case Ping(nonce=nonce):
                self._refresh(sender, round_)  # a stranger is answered but changes nothing
                return [Send(sender, Pong(self.round_estimate, nonce))]
            case Pong(nonce=nonce):
                self._refresh(sender, round_)
                return self._ping_answered(nonce, sender)
            case ModestModel(kind=kind, params=params, samples=samples):
                if not self._admits(sender, message.view):
                    self.rejected["NotMember"] += 1
                    return []
                self._merge(sender, message.view, max(self.round_estimate, round_))
                self._refresh(sender, round_)
                if kind == ModelKind.TRAINED:
                    return self._on_trained(sender, round_, params, samples)
                return self._on_aggregated(round_, params)
            case MembershipAdvert():
                self._advert(sender, message)
        return []

    def _start(self) -> list[AnyEffect]:
        watch: list[AnyEffect] = [SetTimer(self.config.stall_after, "watchdog", 0)]
        if self.joining:
            return watch + self._announce(Membership.JOIN)
        if self.me in self.sample(1):
            return watch + self._on_aggregated(1, self.params)
        return watch

    def _leave(self) -> list[AnyEffect]:
        effects = self._announce(Membership.LEAVE)
        self.left = True
        return effects

    def _announce(self, status: Membership) -> list[AnyEffect]:
        """Advertise a membership change to min(s, |active|) random active peers."""
        own = self.view[self.me]
        index, estimate = own.index + 1, self.round_estimate
        advert = MembershipAdvert(estimate, index, status)
        if self.signer is not None:
            signature = self.signer.sign(membership_of(self.me, advert))
            advert = dataclasses.replace(advert, signature=signature)
        record = Activity(max(own.last_active, estimate), index, status, advert.signature)
        self._set(self.me, record)
        active = [p for p in self.candidates(estimate) if p != self.me]
        count = min(self.config.sample_size, len(active))
        chosen = sorted(self.rng.choice(len(active), size=count, replace=False)) if count else []
        return [Send(active[i], advert) for i in chosen]

    def _advert(self, sender: PeerId, advert: MembershipAdvert) -> None:
        known = [r.index for r in (self.view.get(sender), self.pending.get(sender)) if r]
        if advert.index <= max(known, default=-1):
            return  # stale or repeated
        active = max(advert.round, self.round_estimate)
        record = Activity(active, advert.index, advert.status, advert.signature)
        if not self._signed_by(sender, record):
            self.rejected["BadSignature"] += 1
            return
        if not known and not self._make_room(active):
            return
        self._heard[sender] = active  # its own word, first-hand
        if advert.status == Membership.JOIN:
            self.pending[sender] = record  # not a candidate before our next push
        else:
            self.pending.pop(sender, None)
            self._set(sender, record)

    def _signed_by(self, peer: PeerId, record: Activity, *, always: bool = False) -> bool:
        """True if ``record``'s membership change is ``peer``'s word (or needs none, or
        this peer verifies nothing). ``always``: even the initial JOIN must be signed."""
        if self.verifier is None or not (always or record.needs_signature):
            return True
        statement = membership_of(peer, record)
        return bool(record.signature) and self.verifier.verify(peer, statement, record.signature)

    def _admits(self, sender: PeerId, view: View) -> bool:
        """Whether a model from ``sender`` counts: a member, or a newcomer whose own record
        in its view is signed by it (a peer that joined through someone else)."""
        if self.is_member(sender):
            return True
        own = view.get(sender)
        if sender in self.view or own is None or own.status != Membership.JOIN:
            return False  # it left, or says nothing of itself
        return self._signed_by(sender, own, always=True)

    def _merge(self, sender: PeerId, view: View, cap: int) -> None:
        """Merge the view that ``sender`` sent: known peers are merged (a newer membership
        change must be signed by its peer); unknown peers enter only with their own
        signature, within the cap and ``sender``'s quota. No record may raise a
        ``last_active`` above ``cap`` (r̂, or the message's round if later). At most
        ``source_quota`` signatures are checked per message: each costs real time."""
        checks = self.config.source_quota
        for peer, theirs in view.items():
            if peer == self.me:  # a peer is the authority on its own membership
                self._seen = max(self._seen, min(theirs.last_active, cap))
                continue
            if not self.valid_id(peer):
                self.rejected["BadPeerId"] += 1
                continue
            if theirs.last_active > cap:
                self.rejected["ActivityCapped"] += 1
                theirs = dataclasses.replace(theirs, last_active=cap)
            mine = self.view.get(peer) or self.pending.get(peer)
            if mine is None and peer != sender and self._quota[sender] >= self.config.source_quota:
                self.rejected["SourceQuota"] += 1
                continue
            news = mine is None or (theirs.index, theirs.status) > (mine.index, mine.status)
            if news and self.verifier is not None and theirs.signature:
                if checks == 0:
                    self.rejected["TooManySignatures"] += 1
                    continue
                checks -= 1
            if mine is None:
                self._introduce(sender, peer, theirs)
            elif news and not self._signed_by(peer, theirs):
                self.rejected["BadSignature"] += 1
            else:
                current = self.view.get(peer)
                self._set(peer, theirs if current is None else merge_activity(current, theirs))

    def _introduce(self, sender: PeerId, peer: PeerId, record: Activity) -> None:
        """A peer unknown to us, in ``sender``'s view (within ``sender``'s quota)."""
        first_hand = peer == sender
        if not self._signed_by(peer, record, always=True):
            self.rejected["Unsigned" if not record.signature else "BadSignature"] += 1
            return
        heard = record.last_active if first_hand else -1
        if not self._make_room(heard):
            return
        self._set(peer, record)
        self._heard[peer] = heard
        if not first_hand:
            self._source[peer] = sender
            self._quota[sender] += 1

    def _make_room(self, heard: int) -> bool:
        """Room for one more peer, heard of in round ``heard`` (-1: only relayed): evict
        the left or least recently heard-of entry if the newcomer was heard of later."""
        if len(self.view.keys() | self.pending.keys()) < self.config.view_cap:
            return True
        victim = min(
            (p for p in self.view if p != self.me and p not in self.pending),
            key=lambda p: (self.view[p].status == Membership.JOIN, self._heard.get(p, -1)),
            default=None,
        )
        if victim is None or (
            self.view[victim].status == Membership.JOIN and self._heard.get(victim, -1) >= heard
        ):
            self.rejected["ViewFull"] += 1
            return False
        self._forget(victim)
        return True

    def _forget(self, peer: PeerId) -> None:
        del self.view[peer]
        self._heard.pop(peer, None)
        source = self._source.pop(peer, None)
        if source is not None:
            self._quota[source] -= 1

    # ---- training ----------------------------------------------------------------------

    def _on_aggregated(self, index: int, params: Params) -> list[AnyEffect]:
        if index > self.train_round:
            self.train_round = index
            self.training = False  # a job in flight is abandoned: its token is stale now
            self.trained = False
        if index != self.train_round or self.training or self.trained:
            return []  # a duplicate from another aggregator, or an old round
        self.params = params
        self.training = True
        return [StartTraining(params, self.config.local_steps, token=index)]

    def _trained(self, params: Params, token: int) -> list[AnyEffect]:
        if not self.training or token != self.train_round:
            return []
        self.training, self.trained, self.params = False, True, params
        index = self.train_round + 1
        lookup = _Lookup("aggregators", index, self.config.aggregators, self.order(index), params)
        lookup.samples = self.config.samples
        return self._advance(lookup)

    def _push_trained(
        self, index: int, targets: list[PeerId], model: Params, samples: int
    ) -> list[AnyEffect]:
        message = ModestModel(ModelKind.TRAINED, index, model, samples, self.view_snapshot())
        effects: list[AnyEffect] = [Send(p, message) for p in targets if p != self.me]
        self._flush_pending()
        if self.me in targets:
            effects += self._on_trained(self.me, index, model, samples)
        return effects

    def _watchdog(self) -> list[AnyEffect]:
        """No new round for ``stall_after`` seconds? Probe the aggregators of r̂+1."""
        estimate = self.round_estimate
        if estimate > self.config.rounds or self._stalled >= MAX_STALLED_CHECKS:
            return []  # the run is over, or we tried long enough
        again: list[AnyEffect] = [SetTimer(self.config.stall_after, "watchdog", 0)]
        if estimate > self._watch_round:
            self._watch_round, self._stalled = estimate, 0
            return again
        if self.training or self._pings:
            return again  # busy: the round goes on through us
        self._stalled += 1
        index = estimate + 1
        probe = _Lookup("probe", index, self.config.aggregators, self.order(index), self.params)
        probe.samples, probe.since = self.config.samples, estimate
        return again + self._advance(probe)

    def _probed(self, probe: _Lookup) -> list[AnyEffect]:
        """Nobody probed knows a later round: restart it with our model if it is fresh."""
        staleness = probe.since - self.train_round
        if self.round_estimate > probe.since:
            return []
        if staleness > 2 * self._stalled - 1:
            return []  # a fresher survivor should restart the round; wait for it
        message = f"stalled at round {probe.since}: restarting sample {probe.round}"
        return [
            Log(message),
            *self._push_trained(probe.round, probe.found, probe.model, probe.samples),
        ]

    # ---- aggregation -------------------------------------------------------------------

    def _on_trained(
        self, sender: PeerId, index: int, params: Params, samples: int
    ) -> list[AnyEffect]:
        effects: list[AnyEffect] = []
        if index > self.agg_round:
            self.agg_round, self.buffer, self.aggregated = index, {}, False
            effects.append(SetTimer(self.config.aggregation_timeout, "aggregate", index))
        elif index < self.agg_round:
            return []  # stale
        elif self.aggregated:
            return []  # late: the round is done without it
        if sender not in self.buffer:
            self.buffer[sender] = (params, samples)
            if len(self.buffer) >= self.config.models_needed:
                effects += self._aggregate()
        return effects

    def _aggregate(self) -> list[AnyEffect]:
        index, buffer = self.agg_round, self.buffer
        self.aggregated, self.buffer = True, {}
        models = [model for model, _ in buffer.values()]
        average = weighted_average(models, [n for _, n in buffer.values()], models[0])
        effects: list[AnyEffect] = [RoundDone(index - 1, average)]
        if index - 1 >= self.config.rounds:
            self.finished = True
            return [*effects, Finished()]
        candidates = self.order(index)
        lookup = _Lookup("participants", index, self.config.sample_size, candidates, average)
        return effects + self._advance(lookup)

    def _push_aggregated(self, lookup: _Lookup) -> list[AnyEffect]:
        index = lookup.round
        if self.agg_round > index:
            return [Log(f"aggregate of sample {index} dropped: sample {self.agg_round} seen")]
        message = ModestModel(ModelKind.AGGREGATED, index, lookup.model, 0, self.view_snapshot())
        effects: list[AnyEffect] = [Send(p, message) for p in lookup.found if p != self.me]
        self._flush_pending()
        if self.me in lookup.found:
            effects += self._on_aggregated(index, lookup.model)
        return effects

    # ---- determine_available -----------------------------------------------------------

    def _advance(self, lookup: _Lookup) -> list[AnyEffect]:
        """Ping more candidates while fewer than ``count`` answered or are being asked."""
        effects: list[AnyEffect] = []
        while len(lookup.found) + len(lookup.waiting) < lookup.count and lookup.next < len(
            lookup.candidates
        ):
            peer = lookup.candidates[lookup.next]
            lookup.next += 1
            if peer == self.me:
                lookup.found.append(peer)  # no need to ping ourselves
                continue
            nonce = next(self._nonces)
            self._pings[nonce] = (lookup, peer)
            lookup.waiting[nonce] = peer
            effects.append(Send(peer, Ping(self.round_estimate, nonce)))
            effects.append(SetTimer(self.config.ping_timeout, "ping", nonce))
        if len(lookup.found) >= lookup.count or not lookup.waiting:
            for nonce in lookup.waiting:
                del self._pings[nonce]
            lookup.waiting.clear()
            effects += self._lookup_done(lookup)
        return effects

    def _ping_answered(self, nonce: int, sender: PeerId | None) -> list[AnyEffect]:
        """A pong (``sender`` set) or a ping timeout (``sender`` None) for ``nonce``."""
        entry = self._pings.get(nonce)
        if entry is None or (sender is not None and entry[1] != sender):
            return []  # unknown, already settled, or from someone we did not ping
        lookup, peer = self._pings.pop(nonce)
        del lookup.waiting[nonce]
        if sender is not None:
            lookup.found.append(peer)
        return self._advance(lookup)

    def _lookup_done(self, lookup: _Lookup) -> list[AnyEffect]:
        if lookup.purpose == "participants":
            return self._push_aggregated(lookup)
        if lookup.purpose == "aggregators":
            return self._push_trained(lookup.round, lookup.found, lookup.model, lookup.samples)
        return self._probed(lookup)
