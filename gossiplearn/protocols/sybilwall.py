"""SybilWall core: gossip learning that down-weights Sybils by the similarity of histories.

How it works (ALGORITHMS.md §3): each round the peer trains ``local_steps`` steps, pushes
its model to every neighbour and, to each neighbour q, gossips one history record chosen
among those it knows (not q's own, not one q told it), preferring near ones: record p is
picked with probability ∝ λ·exp(−λ(d_p − 1)). It then waits for one model per neighbour,
at most ``merge_timeout`` seconds, and merges: the FoolsGold weights
(:func:`~gossiplearn.aggregation.foolsgold.foolsgold_weights`) over ALL the histories it
knows, neighbours' and distant ones, weight the models that neighbours sent this round;
its own model has weight 1; distant histories only feed the similarity matrix. Identical
Sybil models have cosine 1, so they get weight 0 and are ignored by the merge.

History of a neighbour p: H[p] += Δ with Δ = model − previous model of p (the model itself
the first time), which telescopes to p's latest model; so one stored model per neighbour
is both its previous model and its history (half the memory of keeping both).

Invariants: a direct neighbour's record (distance 1) is only ever replaced by a model
from that neighbour, never by a gossiped record; a gossiped record replaces a stored one
only if it is from a newer round and the stored one is distant; at most ``max_records``
distant records are kept (oldest round first, then farthest, dropped first), so memory is
(neighbours + max_records) model-sized tensors. Models and records from peers that are
not neighbours are ignored; a neighbour that goes down loses its record (and a model it
sent this round). BN running statistics and integer buffers keep their local values.

Signed histories: given a ``signer``, the peer pushes its model as a HistoryRecord at
distance 0 signed over (itself, round, digest of the model); given a ``verifier``, a
record (relayed, or a neighbour's own push) is stored only if its origin's signature
verifies (else it is counted in ``rejected["BadSignature"]``), and only signed records are
relayed, so no peer can forge another's history. Plain ModelMessages from neighbours are
still merged but, having no signature, never relayed by a verifying peer.
After ``rounds`` rounds the core emits :class:`Finished` and ignores all input. The rounds
themselves (timer, replay check of a neighbour's own model, reporting) are the loop of
:mod:`~gossiplearn.protocols.rounds`; :class:`SybilWallPolicy` is SybilWall's part.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import flatten, flatten_all, unflatten
from gossiplearn.aggregation.chain import Merge, Restore
from gossiplearn.aggregation.foolsgold import foolsgold_weights, one_per_copy
from gossiplearn.protocols.events import Send
from gossiplearn.protocols.messages import Message, ModelMessage
from gossiplearn.protocols.rounds import LoopState, RoundLoop
from gossiplearn.protocols.signing import Signer, Verifier, history_statement, params_digest
from gossiplearn.protocols.sybilwall_messages import MAX_DISTANCE, HistoryRecord
from gossiplearn.types import Params, PeerId


@dataclass(frozen=True)
class SybilWallConfig:
    rounds: int
    local_steps: int
    merge_timeout: float = 30.0
    samples: int = 0
    #: λ of the record selection: nearer records are preferred by exp(−λ(d − 1)).
    lam: float = 0.8
    #: Most distant (gossiped) records kept; direct neighbours' records come on top.
    max_records: int = 64
    #: A chain (gossiplearn.aggregation.chain): a rule that merges the own model with the
    #: models SybilWall did not weigh to 0 (None: SybilWall's weighted mean), and the
    #: variance correction after it (None: none).
    then: Merge | None = None
    restore: Restore | None = None

    def __post_init__(self) -> None:
        if not self.lam > 0 or not math.isfinite(self.lam):
            raise ValueError(f"lam must be a finite number > 0, got {self.lam}")
        if self.max_records < 0:
            raise ValueError(f"max_records must be >= 0, got {self.max_records}")


@dataclass
class Record:
    """What the peer knows of ``origin``'s history (the key of the table holds origin)."""

    round: int
    distance: int
    received_from: PeerId
    history: Params = field(repr=False)
    #: The origin's signature over (origin, round, digest of history); b"": unsigned.
    signature: bytes = field(default=b"", repr=False)
    #: What the signature is over, kept so that relaying does not hash the history again.
    statement: bytes = field(default=b"", repr=False)


def selection_probabilities(distances: Sequence[int], lam: float) -> npt.NDArray[np.float64]:
    """P(pick record i) ∝ λ·exp(−λ(d_i − 1)), normalised to sum to 1."""
    d = np.asarray(distances, dtype=np.float64)
    # Shift by the smallest distance first: the ratios are the same, and nothing underflows.
    scores = lam * np.exp(-lam * (d - d.min(initial=1.0)))
    return np.asarray(scores / scores.sum(), dtype=np.float64)


def sybilwall_merge(
    own: Params,
    received: dict[PeerId, Params],
    histories: dict[PeerId, Params],
    then: Merge | None = None,
    restore: Restore | None = None,
) -> tuple[Params, dict[PeerId, float]]:
    """Weighted mean of the own model (weight 1) and ``received`` (FoolsGold weights).

    The weights come from :func:`foolsgold_weights` over every history in ``histories``
    (which must hold one for each sender in ``received``); histories of peers that sent no
    model shape the weights but get none, and do not take part in the rescale to a top
    weight of 1 (an old distant record, far from today's models, would otherwise take the
    top and leave every sender near 0). Returns the merged model and each sender's weight.

    In a chain, ``then`` merges the own model with one model of each group of senders
    whose histories are near-copies (:func:`~gossiplearn.aggregation.foolsgold.one_per_copy`:
    the same similarities, judged against a typical sender rather than the most unusual
    one) in place of the weighted mean, and each sender's weight is 1 if its model reached
    ``then``, else 0; ``restore`` corrects the variance after the merge (from the models
    merged).
    """
    if not received:
        return dict(own), {}
    senders = list(received)
    distant = [p for p in histories if p not in received]
    rows = flatten_all([histories[p] for p in senders + distant], own)
    if then is not None:
        keep = one_per_copy(rows, candidates=len(senders))
        weights = keep.astype(np.float64)
    else:
        weights = foolsgold_weights(rows, candidates=len(senders))
    shares = dict(zip(senders, (float(w) for w in weights), strict=True))
    kept = [received[p] for p in senders if shares[p] > 0.0]
    if then is not None:
        merged = then(own, kept)
    else:
        models = flatten_all([received[p] for p in senders], own)
        merged = unflatten((flatten(own, own) + weights @ models) / (1.0 + weights.sum()), own)
    if restore is not None:
        merged = restore(merged, own, kept)
    return merged, shares


Loop = RoundLoop[Message]


class SybilWallPolicy:
    """SybilWall's part of the round loop: the history table, the records it gossips, one
    model per neighbour per round, and the FoolsGold-weighted merge."""

    waits = True
    accepts_any_message = True

    def __init__(
        self,
        peer_id: PeerId,
        config: SybilWallConfig,
        rng: np.random.Generator,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.config = config
        self.rng = rng
        self.signer = signer
        self.verifier = verifier
        self.records: dict[PeerId, Record] = {}
        #: Latest model of each neighbour that sent one since the last merge.
        self.pending: dict[PeerId, Params] = {}
        #: Weight each sender got in the last merge (for inspection and tests).
        self.last_weights: dict[PeerId, float] = {}

    def model_round(self, message: Message) -> int | None:
        """A neighbour's own model (plain, or signed at distance 0) is replay-checked; a
        relayed record carries its origin's round, not the sender's."""
        if isinstance(message, ModelMessage):
            return message.round
        if isinstance(message, HistoryRecord) and message.distance == 0:
            return message.round
        return None

    def take(self, loop: Loop, sender: PeerId, message: Message) -> bool:
        match message:
            case ModelMessage() if self.verifier is not None:
                # Where models are signed, an unsigned one could never be relayed, and its
                # sender would stay unseen by distant peers (a Sybil's way around the wall).
                loop.rejected["Unsigned"] += 1
                return False
            case ModelMessage():
                self.on_model(sender, message)
                return True
            case HistoryRecord(distance=0):
                return self.on_signed_model(sender, message, loop.rejected)
            case HistoryRecord():
                return self.on_record(sender, message, loop.rejected)
        return False

    def ready(self, loop: Loop) -> bool:
        return all(peer in self.pending for peer in loop.neighbours)

    def trained(self, loop: Loop, params: Params) -> Params:
        return params

    def merge(self, loop: Loop, waited: bool) -> tuple[Params, int]:
        """Merge whatever neighbours sent (all of them, or what came before the timeout)."""
        merged, params = len(self.pending), loop.params
        self.last_weights = {}
        if self.pending:
            histories = {p: r.history for p, r in self.records.items()}
            params, self.last_weights = sybilwall_merge(
                params, self.pending, histories, self.config.then, self.config.restore
            )
            self.pending = {}
        return params, merged

    def peer_up(self, loop: Loop, peer: PeerId) -> bool:
        return True

    def peer_down(self, loop: Loop, peer: PeerId) -> None:
        self.pending.pop(peer, None)
        known = self.records.get(peer)
        if known is not None and known.distance == 1:
            del self.records[peer]

    # ---- history table -----------------------------------------------------------------

    def on_model(self, sender: PeerId, message: ModelMessage) -> None:
        """Step 3: the history of a direct neighbour telescopes to its latest model."""
        self.records[sender] = Record(message.round, 1, sender, message.params)
        self.pending[sender] = message.params

    def on_signed_model(
        self, sender: PeerId, message: HistoryRecord, rejected: Counter[str]
    ) -> bool:
        """A neighbour's own model, signed (distance 0); False if rejected."""
        if message.origin != sender or not self._verified(message):
            rejected["BadSignature"] += 1
            return False
        self.on_model(sender, ModelMessage(message.round, message.params))
        stored = self.records[sender]
        stored.signature = message.signature
        stored.statement = message.statement if self.verifier is not None else b""
        return True

    def on_record(self, sender: PeerId, message: HistoryRecord, rejected: Counter[str]) -> bool:
        """Step 4: one hop farther; store if unknown, else replace only a distant record
        with one from a newer round. Records whose signature fails are rejected."""
        origin = message.origin
        if origin == self.peer_id or message.distance >= MAX_DISTANCE:
            return False
        stored = self.records.get(origin)
        if stored is not None and not (stored.distance > 1 and message.round > stored.round):
            return False  # would not be stored: no need to verify it
        if not self._verified(message):
            rejected["BadSignature"] += 1
            return False
        statement = message.statement if self.verifier is not None else b""
        record = Record(
            message.round,
            message.distance + 1,
            sender,
            message.params,
            message.signature,
            statement,
        )
        self.records[origin] = record
        if stored is None:
            self._bound_distant()
        return True

    def _verified(self, message: HistoryRecord) -> bool:
        """True when no verifier is set, or the record carries its origin's signature."""
        if self.verifier is None:
            return True
        if not message.signature:
            return False
        return self.verifier.verify(message.origin, message.statement, message.signature)

    def _bound_distant(self) -> None:
        distant = [p for p, r in self.records.items() if r.distance > 1]
        excess = len(distant) - self.config.max_records
        if excess <= 0:
            return
        # Oldest round first, then farthest; sorted() is stable, so ties go by arrival.
        distant.sort(key=lambda p: (self.records[p].round, -self.records[p].distance))
        for peer in distant[:excess]:
            del self.records[peer]

    def pick_record(self, to: PeerId) -> PeerId | None:
        """Step 2: the record to gossip to ``to``, or None if there is none to send."""
        candidates = [
            p
            for p, r in self.records.items()
            if p != to
            and p != self.peer_id
            and r.received_from != to
            and (r.signature or self.verifier is None)  # unsigned: receivers would reject
        ]
        if not candidates:
            return None
        probabilities = selection_probabilities(
            [self.records[p].distance for p in candidates], self.config.lam
        )
        return candidates[int(self.rng.choice(len(candidates), p=probabilities))]

    # ---- pushes ------------------------------------------------------------------------

    def pushes(self, loop: Loop) -> list[Send[Message]]:
        """The own model to every neighbour, and to each one record gossiped to it."""
        message = self.own_model(loop.round, loop.params)
        effects: list[Send[Message]] = [Send(peer, message) for peer in loop.neighbours]
        for peer in loop.neighbours:
            origin = self.pick_record(peer)
            if origin is not None:
                r = self.records[origin]
                record = HistoryRecord(r.round, origin, r.distance, r.history, r.signature)
                effects.append(
                    Send(peer, record.knowing_statement(r.statement) if r.statement else record)
                )
        return effects

    def own_model(self, round_: int, params: Params) -> Message:
        """The model push: signed (a HistoryRecord at distance 0) when there is a signer."""
        if self.signer is None:
            return ModelMessage(round_, params, self.config.samples)
        statement = history_statement(self.peer_id, round_, params_digest(params))
        record = HistoryRecord(round_, self.peer_id, 0, params, self.signer.sign(statement))
        return record.knowing_statement(statement)


class SybilWallCore(LoopState[Message]):
    """Sans-I/O SybilWall for one peer (``peer_id`` is its own id, to drop its own records)."""

    accepts_any_message = True

    def __init__(
        self,
        peer_id: PeerId,
        config: SybilWallConfig,
        neighbours: Sequence[PeerId],
        params: Params,
        rng: np.random.Generator,
        *,
        round: int = 0,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.rng = rng
        self.policy = SybilWallPolicy(peer_id, config, rng, signer, verifier)
        self.loop = RoundLoop(config, neighbours, params, self.policy, round=round)

    def model_message(self) -> Message:
        """The own current model as pushed: signed when there is a signer."""
        return self.policy.own_model(self.loop.round, self.loop.params)

    def pick_record(self, to: PeerId) -> PeerId | None:
        """Step 2: the record to gossip to ``to``, or None if there is none to send."""
        return self.policy.pick_record(to)

    @property
    def merge_shares(self) -> dict[PeerId, float]:
        """The share of the last merge's result that came from each sender (own share left
        out; empty when the round merged nothing): w_p / (1 + Σ w) (in a chain, w is 1 for
        the models its rule merged, so each of those counts as much as the own model)."""
        total = 1.0 + sum(self.last_weights.values())
        return {peer: weight / total for peer, weight in self.last_weights.items()}

    @property
    def neighbours(self) -> list[PeerId]:
        return self.loop.neighbours

    @property
    def records(self) -> dict[PeerId, Record]:
        return self.policy.records

    @records.setter
    def records(self, records: dict[PeerId, Record]) -> None:
        self.policy.records = records

    @property
    def pending(self) -> dict[PeerId, Params]:
        return self.policy.pending

    @property
    def last_weights(self) -> dict[PeerId, float]:
        return self.policy.last_weights
