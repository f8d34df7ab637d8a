"""MoDeST: sampling, the core's rules event by event, a small network driven by a fake
driver, and whole simulations on the bundled digits dataset."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn import make_config, simulate
from gossiplearn.errors import (
    MalformedMessage,
    MessageTooLarge,
    ModelMismatch,
    NonFiniteModel,
    WireError,
)
from gossiplearn.protocols.codec import decode, decode_message, encode, register_wire_type
from gossiplearn.protocols.events import (
    AnyEffect,
    AnyEvent,
    Finished,
    Leave,
    MessageReceived,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    Timer,
    TrainingDone,
)
from gossiplearn.protocols.messages import ModelMessage, spec_of
from gossiplearn.protocols.modest import (
    MAX_VIEW,
    ModestConfig,
    ModestCore,
    merge_activity,
    merge_view,
    sample_order,
)
from gossiplearn.protocols.modest_messages import (
    MAX_VIEW_RECORDS,
    Activity,
    Membership,
    MembershipAdvert,
    ModelKind,
    ModestModel,
    Ping,
    Pong,
    membership_of,
)
from gossiplearn.protocols.signing import SeedKeys
from gossiplearn.types import Params, PeerId

JOIN, LEAVE = Membership.JOIN, Membership.LEAVE
TRAINED, AGGREGATED = ModelKind.TRAINED, ModelKind.AGGREGATED


def p(value: float) -> Params:
    return {"w": np.array([value], np.float32)}


def w(params: Params) -> float:
    return float(params["w"][0])


def of_type(effects: Sequence[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def view_of(peers: Sequence[PeerId], last_active: int = 0) -> dict[PeerId, Activity]:
    return {peer: Activity(last_active) for peer in peers}


def core(
    me: PeerId = 0,
    peers: Sequence[PeerId] = range(10),
    *,
    view: dict[PeerId, Activity] | None = None,
    joining: bool = False,
    **options: Any,
) -> ModestCore:
    settings: dict[str, Any] = {"rounds": 50, "local_steps": 3, "sample_size": 3}
    settings.update(options)
    view = view_of(peers) if view is None else view
    rng = np.random.default_rng(0)
    return ModestCore(me, ModestConfig(**settings), p(0.0), view, rng, joining=joining)


def trained(index: int, value: float = 1.0, samples: int = 1, view: Any = None) -> ModestModel:
    return ModestModel(TRAINED, index, p(value), samples, view if view is not None else {})


def aggregated(index: int, value: float = 0.0) -> ModestModel:
    return ModestModel(AGGREGATED, index, p(value), 0, {})


def received(sender: PeerId, message: Any) -> MessageReceived[Any]:
    return MessageReceived(sender, message)


def pings(effects: Sequence[Any]) -> dict[PeerId, int]:
    """Peer -> nonce of every Ping sent."""
    return {e.to: e.message.nonce for e in of_type(effects, Send) if isinstance(e.message, Ping)}


# ---- sampling ------------------------------------------------------------------------


def test_sample_order_sorts_by_sha256_of_peer_and_round() -> None:
    peers = [5, 1, 9, "abc", 3]
    expected = sorted(peers, key=lambda q: hashlib.sha256(f"{q}-7".encode()).digest())
    assert sample_order(peers, 7) == expected
    assert sample_order(reversed(peers), 7) == expected  # input order does not matter


def test_every_peer_with_the_same_view_derives_the_same_sample() -> None:
    peers = [f"12D3KooW{i:04d}" for i in range(40)]  # real networks: str ids
    cores = [core(me, peers) for me in peers]
    for k in (1, 2, 17, 45):
        samples = {tuple(c.sample(k)) for c in cores}
        assert len(samples) == 1
        assert len(next(iter(samples))) == 3


def test_samples_change_across_rounds() -> None:
    c = core(0, range(50))
    samples = [tuple(c.sample(k)) for k in range(1, 21)]
    assert len(set(samples)) == 20
    trainers = {peer for sample in samples for peer in sample}
    assert len(trainers) > 25  # spread over the population, not a fixed few


def test_inactive_and_left_peers_are_no_candidates_but_self_always_is() -> None:
    view = view_of(range(6), last_active=10)
    view[1] = Activity(2)  # silent since round 2
    view[2] = Activity(10, 1, LEAVE)
    view.pop(0)  # a view that does not even list ourselves
    c = core(0, view=view, inactivity_threshold=5)
    assert sorted(c.candidates(10), key=str) == [0, 3, 4, 5]
    assert 1 in c.candidates(7)  # 2 >= 7 - 5


# ---- view merge rules ----------------------------------------------------------------


def test_view_merge_adds_unknown_peers_and_keeps_the_max_last_active() -> None:
    view = {1: Activity(5), 2: Activity(9)}
    merge_view(view, {1: Activity(7), 2: Activity(3), 3: Activity(4, 2, LEAVE)})
    assert view == {1: Activity(7), 2: Activity(9), 3: Activity(4, 2, LEAVE)}


def test_view_merge_higher_membership_index_wins() -> None:
    left = Activity(10, 2, LEAVE)
    assert merge_activity(Activity(20, 1, JOIN), left) == Activity(20, 2, LEAVE)
    assert merge_activity(left, Activity(3, 3, JOIN)) == Activity(10, 3, JOIN)  # rejoined
    assert merge_activity(Activity(1, 2, JOIN), Activity(1, 2, LEAVE)).status == LEAVE


def test_view_merge_skips_records_about_ourselves() -> None:
    view = {0: Activity(3, 1, JOIN)}
    merge_view(view, {0: Activity(9, 5, LEAVE)}, me=0)
    assert view == {0: Activity(3, 1, JOIN)}


def test_model_transfer_merges_the_view_and_refreshes_the_sender() -> None:
    c = core(0, range(5))
    c.handle(0.0, received(3, trained(7, view={42: Activity(6), 1: Activity(4)})))
    assert c.view[42] == Activity(6)
    assert c.view[1].last_active == 4
    assert c.view[3].last_active == 7  # max(r̂, round of the message)
    assert c.round_estimate == 7


# ---- ping / pong ---------------------------------------------------------------------


def test_ping_is_answered_with_the_nonce_and_refreshes_the_sender() -> None:
    c = core(0, range(5))
    effects = c.handle(1.0, received(2, Ping(round=6, nonce=77)))
    (send,) = effects
    assert send.to == 2 and send.message == Pong(round=6, nonce=77)
    assert c.view[2].last_active == 6


def test_unexpected_pongs_are_ignored() -> None:
    c = core(0, range(10), aggregators=1)
    c.handle(0.0, received(4, aggregated(1)))
    effects = c.handle(1.0, TrainingDone(p(1.0), token=1))
    asked = pings(effects)
    if not asked:  # we are our own aggregator: nobody to ping
        pytest.skip("peer 0 heads O_2")
    ((target, nonce),) = asked.items()
    other = next(q for q in range(1, 10) if q != target)
    assert c.handle(1.1, received(other, Pong(1, nonce))) == []  # not whom we pinged
    assert c.handle(1.1, received(target, Pong(1, nonce + 100))) == []  # unknown nonce
    pushed = c.handle(1.2, received(target, Pong(1, nonce)))
    assert [s.to for s in of_type(pushed, Send)] == [target]
    assert c.handle(1.3, received(target, Pong(1, nonce))) == []  # answered already


# ---- training ------------------------------------------------------------------------


def test_the_first_s_of_o1_train_round_1_from_the_shared_model() -> None:
    peers = list(range(12))
    sample = core(0, peers).sample(1)
    for me in peers:
        effects = core(me, peers).handle(0.0, Start())
        training = of_type(effects, StartTraining)
        assert bool(training) == (me in sample)
        if training:
            assert training[0].token == 1 and w(training[0].params) == 0.0
        # every peer arms the stall watchdog
        assert [t.name for t in of_type(effects, SetTimer)] == ["watchdog"]


def test_trainer_pings_the_aggregator_of_the_next_sample_and_pushes_model_and_view() -> None:
    c = core(0, range(10), aggregators=1, samples=42)
    c.handle(0.0, received(5, aggregated(3)))
    effects = c.handle(1.0, TrainingDone(p(9.0), token=3))
    aggregator = c.order(4)[0]
    if aggregator == 0:
        pytest.skip("peer 0 heads O_4")
    assert pings(effects).keys() == {aggregator}
    assert [t.delay for t in of_type(effects, SetTimer)] == [5.0]
    pushed = c.handle(1.1, received(aggregator, Pong(3, pings(effects)[aggregator])))
    (send,) = of_type(pushed, Send)
    message = send.message
    assert send.to == aggregator and message.kind == TRAINED and message.round == 4
    assert w(message.params) == 9.0 and message.samples == 42
    assert set(message.view) == set(range(10))


def test_a_ping_timeout_falls_through_to_the_next_candidate() -> None:
    c = core(0, range(1, 11), aggregators=1)
    c.handle(0.0, received(5, aggregated(3)))
    first = pings(c.handle(1.0, TrainingDone(p(1.0), token=3)))
    order = [q for q in c.order(4) if q != 0]
    assert list(first) == [order[0]]
    second = pings(c.handle(6.0, Timer("ping", first[order[0]])))
    assert list(second) == [order[1]]
    assert c.handle(6.5, received(order[0], Pong(3, first[order[0]]))) == []  # too late


def test_newer_aggregated_model_cancels_training_in_progress() -> None:
    c = core(0)
    (start,) = c.handle(0.0, received(1, aggregated(3, 3.0)))
    assert start.token == 3
    (restart,) = c.handle(0.5, received(2, aggregated(4, 4.0)))
    assert restart.token == 4 and w(restart.params) == 4.0
    assert c.handle(1.0, TrainingDone(p(3.5), token=3)) == []  # the abandoned job


def test_duplicate_and_stale_aggregated_models_are_ignored() -> None:
    c = core(0)
    c.handle(0.0, received(1, aggregated(4)))
    assert c.handle(0.1, received(2, aggregated(4))) == []  # second aggregator, same round
    assert c.handle(0.2, received(2, aggregated(3))) == []  # older round
    c.handle(1.0, TrainingDone(p(4.5), token=4))
    assert not of_type(c.handle(1.1, received(2, aggregated(4))), StartTraining)


# ---- aggregation ---------------------------------------------------------------------


def test_aggregator_averages_s_sf_models_weighted_by_samples_and_reports() -> None:
    c = core(0, range(10), sample_size=4, success_fraction=0.75)  # needs ⌈3⌉ models
    assert c.config.models_needed == 3
    first = c.handle(0.0, received(1, trained(6, 1.0, samples=1)))
    assert [t.name for t in of_type(first, SetTimer)] == ["aggregate"]
    assert c.handle(0.1, received(1, trained(6, 50.0, samples=1))) == []  # one per sender
    c.handle(0.2, received(2, trained(6, 2.0, samples=1)))
    effects = c.handle(0.3, received(3, trained(6, 10.0, samples=2)))
    (done,) = of_type(effects, RoundDone)
    assert done.round == 5 and w(done.params) == pytest.approx((1 + 2 + 20) / 4)
    participants = [q for q in c.order(6)[:4] if q != 0]
    assert set(pings(effects)) == set(participants)


def test_stale_trained_models_are_ignored() -> None:
    c = core(0, range(10), sample_size=2)
    c.handle(0.0, received(1, trained(6)))
    assert c.handle(0.1, received(2, trained(5))) == []
    assert set(c.buffer) == {1}


def test_a_newer_round_replaces_the_buffer() -> None:
    c = core(0, range(10), sample_size=3)
    c.handle(0.0, received(1, trained(6)))
    c.handle(0.1, received(2, trained(7)))
    assert c.agg_round == 7 and set(c.buffer) == {2}


def test_aggregation_timeout_averages_what_arrived() -> None:
    c = core(0, range(10), sample_size=5, aggregation_timeout=3.0)
    (timer,) = of_type(c.handle(0.0, received(1, trained(6, 4.0))), SetTimer)
    c.handle(0.5, received(2, trained(6, 8.0)))
    effects = c.handle(3.0, Timer(timer.name, timer.token))
    (done,) = of_type(effects, RoundDone)
    assert w(done.params) == 6.0
    assert c.handle(3.1, Timer(timer.name, timer.token)) == []  # once


def test_aggregator_drops_its_push_when_a_newer_round_shows_up() -> None:
    c = core(0, range(1, 11), sample_size=2)
    c.handle(0.0, received(1, trained(6)))
    asked = pings(c.handle(0.1, received(2, trained(6))))
    c.handle(0.2, received(3, trained(7)))  # someone is already a round further
    effects: list[AnyEffect] = []
    for peer, nonce in asked.items():
        effects += c.handle(0.3, received(peer, Pong(7, nonce)))
    assert not [e for e in of_type(effects, Send) if isinstance(e.message, ModestModel)]


def test_aggregator_pushes_the_average_to_the_responsive_sample() -> None:
    c = core(0, range(1, 11), sample_size=2)
    c.handle(0.0, received(1, trained(6, 2.0)))
    asked = pings(c.handle(0.1, received(2, trained(6, 4.0))))
    effects: list[AnyEffect] = []
    for peer, nonce in asked.items():
        effects += c.handle(0.3, received(peer, Pong(6, nonce)))
    pushed = [e for e in of_type(effects, Send) if isinstance(e.message, ModestModel)]
    assert {e.to for e in pushed} == set(asked)
    assert all(e.message.kind == AGGREGATED and e.message.round == 6 for e in pushed)
    assert all(w(e.message.params) == 3.0 for e in pushed)


# ---- membership ----------------------------------------------------------------------


def _aggregate_and_push(c: ModestCore, index: int) -> None:
    """Make ``c`` aggregate sample ``index`` and push it (which flushes pending joins)."""
    c.handle(0.0, received(1, trained(index)))
    c.handle(0.0, received(2, trained(index)))
    effects = c.handle(0.0, received(3, trained(index)))
    for peer, nonce in pings(effects).items():
        c.handle(0.1, received(peer, Pong(index, nonce)))


def test_a_joining_peer_is_pending_and_no_candidate_until_our_next_push() -> None:
    c = core(0, range(1, 11))
    c.handle(0.0, received(99, MembershipAdvert(round=4, index=1, status=JOIN)))
    assert 99 in c.pending and 99 not in c.view
    assert all(99 not in c.candidates(k) for k in range(1, 60))
    _aggregate_and_push(c, 6)
    assert 99 not in c.pending and c.view[99] == Activity(4, 1, JOIN)
    assert 99 in c.candidates(7)


def test_a_joining_peer_advertises_join_to_s_random_active_peers() -> None:
    c = core(77, view=view_of(range(10), last_active=12), joining=True, sample_size=4)
    effects = c.handle(0.0, Start())
    adverts = [e for e in of_type(effects, Send) if isinstance(e.message, MembershipAdvert)]
    assert len(adverts) == 4 and len({e.to for e in adverts}) == 4
    assert all(e.message == MembershipAdvert(12, 1, JOIN) for e in adverts)
    assert not of_type(effects, StartTraining)  # it waits to be sampled


def test_a_leaving_peer_is_never_sampled_again() -> None:
    c = core(0, range(1, 11))
    c.handle(0.0, received(4, MembershipAdvert(round=3, index=1, status=LEAVE)))
    assert c.view[4].status == LEAVE  # applied at once
    # an older view that still lists it as active does not bring it back
    c.handle(0.1, received(5, trained(9, view={4: Activity(9, 0, JOIN)})))
    assert all(4 not in c.order(k) for k in range(1, 200))
    # a stale advert is ignored
    c.handle(0.2, received(4, MembershipAdvert(round=9, index=1, status=JOIN)))
    assert 4 not in c.pending


def test_leave_advertises_and_then_ignores_everything() -> None:
    c = core(3, range(10), sample_size=5)
    effects = c.handle(0.0, Leave())
    adverts = [e.message for e in of_type(effects, Send)]
    assert len(adverts) == 5 and all(a.status == LEAVE and a.index == 1 for a in adverts)
    assert c.handle(1.0, received(1, aggregated(5))) == []
    assert c.handle(1.0, received(1, Ping(5, 1))) == []


# ---- a small network through a fake driver -------------------------------------------


class MiniNet:
    """Drives ModestCores: fixed latency, training adds 1 to the model after
    ``train_time``, every message through the real codec, crashed peers silent."""

    def __init__(self, cores: dict[PeerId, ModestCore], latency: float = 0.01) -> None:
        self.cores = cores
        self.latency = latency
        self.train_time = 0.1
        self.queue: list[tuple[float, int, PeerId, AnyEvent]] = []
        self.order = itertools.count()
        self.now = 0.0
        self.crashed: set[PeerId] = set()
        self.reports: list[tuple[PeerId, int, float, float]] = []  # peer, round, time, w
        self.trainings: list[tuple[PeerId, int, float]] = []
        self.sent: Counter[str] = Counter()
        self.spec = spec_of(p(0.0))

    def schedule(self, delay: float, peer: PeerId, event: AnyEvent) -> None:
        heapq.heappush(self.queue, (self.now + delay, next(self.order), peer, event))

    def run(self, until: float) -> None:
        while self.queue and self.queue[0][0] <= until:
            time, _, peer, event = heapq.heappop(self.queue)
            if peer in self.crashed:
                continue
            self.now = time
            for effect in self.cores[peer].handle(time, event):
                self.apply(peer, effect)

    def apply(self, peer: PeerId, effect: AnyEffect) -> None:
        match effect:
            case Send(to=to, message=message):
                self.sent[type(message).__name__] += 1
                decoded = decode_message(encode(message), self.spec)
                self.schedule(self.latency, to, MessageReceived(peer, decoded))
            case StartTraining(params=params, token=token):
                self.trainings.append((peer, token, self.now))
                result = {name: value + 1 for name, value in params.items()}
                self.schedule(self.train_time, peer, TrainingDone(result, token))
            case SetTimer(delay=delay, name=name, token=token):
                self.schedule(delay, peer, Timer(name, token))
            case RoundDone(round=round_, params=params):
                self.reports.append((peer, round_, self.now, w(params)))

    def rounds_done(self) -> set[int]:
        return {round_ for _, round_, _, _ in self.reports}


def network(n: int, **options: Any) -> MiniNet:
    settings: dict[str, Any] = {"ping_timeout": 1.0, "aggregation_timeout": 2.0}
    settings.update(options)
    peers = list(range(n))
    return MiniNet({me: core(me, peers, **settings) for me in peers})


def start(net: MiniNet) -> None:
    for peer in net.cores:
        net.schedule(0.0, peer, Start())


def test_a_network_completes_rounds_and_reports_one_model_per_round() -> None:
    net = network(12, rounds=6)
    start(net)
    net.run(until=100.0)
    assert [r for _, r, _, _ in net.reports] == [1, 2, 3, 4, 5, 6]
    # every round trains the previous aggregate once more: the model counts the rounds
    assert [value for _, _, _, value in net.reports] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert len(net.trainings) == 6 * 3
    assert all(net.cores[peer].finished for peer, *_ in net.reports[-1:])


def test_every_peer_finishes_once_the_last_round_is_done() -> None:
    net = network(12, rounds=6)
    start(net)
    net.run(until=100.0)
    assert all(c.finished for c in net.cores.values())


def test_a_peer_does_not_finish_while_it_trains_the_last_round() -> None:
    c = core(0, range(3), rounds=2)
    effects = c.handle(0.0, received(1, aggregated(2)))
    assert of_type(effects, StartTraining) and not of_type(effects, Finished)
    effects = c.handle(1.0, TrainingDone(p(1.0), 2))  # pings the aggregators of sample 3
    assert not c.finished and not of_type(effects, Finished)
    head = c.order(3)[0]
    if head != 0:
        effects = c.handle(1.1, received(head, Pong(2, pings(effects)[head])))
    assert c.finished and len(of_type(effects, Finished)) == 1


def test_a_crashed_aggregator_is_skipped_after_a_ping_timeout() -> None:
    # a network where the head of O_2 is not a round-1 trainer
    n = next(
        n for n in range(8, 30) if core(0, range(n)).order(2)[0] not in core(0, range(n)).sample(1)
    )
    net = network(n, rounds=3)
    dead = net.cores[0].order(2)[0]
    net.crashed.add(dead)
    start(net)
    net.run(until=100.0)
    assert net.rounds_done() == {1, 2, 3}
    reporter, _, time, _ = next(r for r in net.reports if r[1] == 1)
    assert reporter == net.cores[0].order(2)[1] and time >= 1.0  # one ping timeout later


def test_the_watchdog_restarts_a_round_whose_state_died() -> None:
    net = network(12, rounds=8, stall_timeout=20.0)
    start(net)
    clock = 0.0
    while 3 not in net.rounds_done() and clock < 100:
        clock += 0.01
        net.run(until=clock)
    net.run(until=clock + 0.05)  # the trainers of round 4 are at work
    trainers = {peer for peer, round_, _ in net.trainings if round_ == 4}
    assert len(trainers) == 3
    net.crashed |= trainers | {net.cores[0].order(5)[0]}  # round 4 dies with them
    net.run(until=2000.0)
    assert net.rounds_done() == set(range(1, 9))
    restarted = min(time for _, round_, time, _ in net.reports if round_ == 4)
    assert restarted > 20.0  # after a watchdog period


def test_a_joining_peer_is_sampled_only_after_it_became_active() -> None:
    net = network(10, rounds=30, sample_size=3)
    start(net)
    net.run(until=1.0)
    joined_at = net.now
    source = net.cores[1]
    net.cores[50] = ModestCore(
        50, source.config, p(0.0), source.view_snapshot(), np.random.default_rng(1), joining=True
    )
    net.schedule(0.0, 50, Start())
    net.run(until=1000.0)
    assert net.rounds_done() == set(range(1, 31))
    rounds = [token for peer, token, _ in net.trainings if peer == 50]
    assert rounds, "the joining peer was never sampled"
    assert min(time for peer, _, time in net.trainings if peer == 50) > joined_at
    assert all(50 in c.view for c in net.cores.values())


def test_a_left_peer_is_not_asked_to_train_once_known_to_have_left() -> None:
    net = network(10, rounds=25)
    start(net)
    net.run(until=1.0)
    net.schedule(0.0, 4, Leave())
    net.run(until=1.0 + 1e-9)
    left_at = net.now
    net.run(until=1000.0)
    assert net.rounds_done() == set(range(1, 26))
    assert not [t for peer, _, t in net.trainings if peer == 4 and t > left_at]
    assert all(c.view[4].status == LEAVE for q, c in net.cores.items() if q != 4)


# ---- whole simulations ---------------------------------------------------------------

SMALL = dict(peers=20, rounds=12, dataset="digits", model="logreg", protocol="modest")


def test_modest_learns_and_reports_one_line_per_round() -> None:
    result = simulate(make_config(**SMALL, sample_size=5, seed=3))
    summary = result.summary
    assert summary["mean_accuracy"] > 0.75
    assert [m["round"] for m in result.metrics] == list(range(1, 13))
    assert all(m["peers_reporting"] == 1 for m in result.metrics)
    assert summary["messages_rejected"] == {}
    assert summary["config"]["shared_init"] is True
    assert sum(result.training_jobs.values()) == 12 * 5


def test_modest_same_seed_same_result() -> None:
    config = make_config(
        **SMALL, sample_size=4, aggregators=2, success_fraction=0.75, seed=5,
        churn=[{"kind": "crash", "at_round": 4, "amount": 0.3},
               {"kind": "join", "at_round": 5, "amount": 3},
               {"kind": "leave", "at_round": 6, "amount": 2}],
    )  # fmt: skip
    first, second = simulate(config), simulate(config)
    drop = {"wall_seconds"}
    assert {k: v for k, v in first.summary.items() if k not in drop} == {
        k: v for k, v in second.summary.items() if k not in drop
    }
    assert first.metrics == second.metrics
    assert first.training_jobs == second.training_jobs
    other = simulate(config.model_copy(update={"seed": 6}))
    assert other.summary["peer_accuracy"] != first.summary["peer_accuracy"]


# ---- wire format ---------------------------------------------------------------------

WIRE_PARAMS: Params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3)}
WIRE_SPEC = spec_of(WIRE_PARAMS)
WIRE_VIEW: dict[PeerId, Activity] = {
    0: Activity(4),
    2**63 - 1: Activity(9, 3, LEAVE),
    "12D3KooWabc": Activity(7, 1, JOIN),
    "é" * 128: Activity(0, 2, LEAVE),  # 256 UTF-8 bytes: the longest id
}
WIRE_MODEL = ModestModel(AGGREGATED, 12, WIRE_PARAMS, 600, WIRE_VIEW)
VALID_MODEL = encode(WIRE_MODEL)


def _fields(data: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(data, raw=False)
    return fields


def _pack(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def _decode_or_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_message(data, WIRE_SPEC, max_bytes=1 << 20)


@pytest.mark.parametrize(
    "message",
    [Ping(0, 0), Ping(2**63 - 1, 2**63 - 1), Pong(5, 77), MembershipAdvert(3, 1, LEAVE)],
    ids=repr,
)
def test_small_messages_round_trip(message: Any) -> None:
    assert decode_message(encode(message), WIRE_SPEC) == message


def test_model_transfer_round_trips_model_and_view() -> None:
    decoded = decode_message(VALID_MODEL, WIRE_SPEC)
    assert isinstance(decoded, ModestModel)
    assert (decoded.kind, decoded.round, decoded.samples) == (AGGREGATED, 12, 600)
    assert decoded.view == WIRE_VIEW and list(decoded.view) == list(WIRE_VIEW)
    for name, array in WIRE_PARAMS.items():
        np.testing.assert_array_equal(decoded.params[name], array)
        assert decoded.params[name].dtype == array.dtype


def test_an_empty_view_round_trips() -> None:
    decoded = decode_message(encode(trained(3, 1.0)), spec_of(p(0.0)))
    assert isinstance(decoded, ModestModel) and decoded.view == {}


def test_model_messages_decode_the_same_through_decode_message() -> None:
    data = encode(ModelMessage(4, WIRE_PARAMS, 9))
    generic, specific = decode_message(data, WIRE_SPEC), decode(data, WIRE_SPEC)
    assert isinstance(generic, ModelMessage)
    assert (generic.round, generic.samples) == (specific.round, specific.samples)
    with pytest.raises(MalformedMessage, match="unknown message type id 10"):
        decode(encode(Ping(1, 1)), WIRE_SPEC)  # decode() stays model-only


def test_unregistered_types_and_unsendable_values_are_refused_at_the_sender() -> None:
    with pytest.raises(ValueError, match="not a registered wire message type"):
        encode(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode(ModestModel(TRAINED, 1, p(0.0), 0, {1.5: Activity(0)}))  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        encode(ModestModel(TRAINED, 1, p(0.0), 0, {"x" * 257: Activity(0)}))
    with pytest.raises(ValueError):
        Ping(-1, 0)
    with pytest.raises(ValueError, match="already taken"):
        register_wire_type(type("Clash", (), {"TYPE_ID": 1, "VERSION": 1}), frozenset(), str, str)  # type: ignore[arg-type]


def _peers(*ids: Any) -> bytes:
    return b"".join(msgpack.packb(i, use_bin_type=True) for i in ids)


def _activity(*rows: tuple[int, int, int]) -> bytes:
    return np.array(rows, dtype="<i8").reshape(-1, 3).tobytes()


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"extra": 1}, MalformedMessage, "keys are"),
        ({"version": 3}, MalformedMessage, "version 3"),
        ({"kind": 2}, MalformedMessage, "model kind"),
        ({"kind": True}, MalformedMessage, "kind must be an int"),
        ({"round": -1}, MalformedMessage, "round must be >= 0"),
        ({"round": 2**63}, MalformedMessage, "below 2"),
        ({"samples": "many"}, MalformedMessage, "samples must be an int"),
        ({"peers": [1, 2]}, MalformedMessage, "must be msgpack bin"),
        ({"activity": b"\x00" * 25}, MalformedMessage, "not whole records"),
        ({"peers": _peers(1, 2, 3, 4, 5)}, MalformedMessage, "more peer ids"),
        ({"peers": _peers(1, 2)}, MalformedMessage, "whole peer ids"),
        ({"peers": _peers(1, 2, 3)[:-1] + b"\xd9"}, MalformedMessage, "peer id"),
        ({"peers": _peers(1, 1, 2, 3)}, MalformedMessage, "twice"),
        ({"peers": _peers(1, [2], 3, 4)}, MalformedMessage, "not valid"),
        ({"peers": _peers(1, {"a": 1}, 3, 4)}, MalformedMessage, "not valid"),
        ({"peers": _peers(1, 2.5, 3, 4)}, MalformedMessage, "peer id must be"),
        ({"peers": _peers(1, True, 3, 4)}, MalformedMessage, "peer id must be"),
        ({"peers": _peers(1, "", 3, 4)}, MalformedMessage, "peer id must be"),
        ({"peers": _peers(1, -4, 3, 4)}, MalformedMessage, "peer id must be"),
        ({"peers": _peers(1, b"raw", 3, 4)}, MalformedMessage, "not valid"),
        ({"peers": _peers(1, "x" * 257, 3, 4)}, MalformedMessage, "not valid"),
        (
            {"activity": _activity((1, 0, 0), (1, -1, 0), (1, 0, 0), (1, 0, 0))},
            MalformedMessage,
            "negative",
        ),
        (
            {"activity": _activity((1, 0, 0), (1, 0, 2), (1, 0, 0), (1, 0, 0))},
            MalformedMessage,
            "status",
        ),
        ({"tensors": "w"}, MalformedMessage, "'tensors' must be a list"),
    ],
)
def test_invalid_model_transfers_are_rejected(
    changes: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        decode_message(_pack(_fields(VALID_MODEL) | changes), WIRE_SPEC)


def test_model_transfers_are_checked_against_the_local_model() -> None:
    with pytest.raises(ModelMismatch):
        decode_message(VALID_MODEL, spec_of(p(0.0)))
    bad = dict(WIRE_PARAMS, w=np.full((2, 3), np.nan, np.float32))
    with pytest.raises(NonFiniteModel):
        decode_message(encode(ModestModel(TRAINED, 1, bad, 0, {})), WIRE_SPEC)
    with pytest.raises(MessageTooLarge):
        decode_message(VALID_MODEL, WIRE_SPEC, max_bytes=len(VALID_MODEL) - 1)


def test_views_over_the_record_limit_are_rejected() -> None:
    count = MAX_VIEW_RECORDS + 1
    huge = _fields(VALID_MODEL) | {
        "peers": b"\x01" * count,
        "activity": np.zeros((count, 3), "<i8").tobytes(),
    }
    with pytest.raises(MalformedMessage, match="over the limit"):
        decode_message(_pack(huge), WIRE_SPEC, max_bytes=1 << 26)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_pack({"type": 10, "version": 1, "round": 1}), "keys are"),
        (_pack({"type": 11, "version": 1, "round": 1, "nonce": -1}), "nonce must be >= 0"),
        (
            _pack(
                {"type": 13, "version": 2, "round": 1, "index": 1, "status": 3, "signature": b""}
            ),
            "status",
        ),
        (_pack({"type": 99, "version": 1}), "unknown message type id 99"),
        (_pack([10, 1, 1, 1]), "expected a msgpack map"),
    ],
)
def test_invalid_small_messages_are_rejected(data: bytes, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        decode_message(data, WIRE_SPEC)


@st.composite
def _mutated_modest(draw: st.DrawFn) -> bytes:
    source = draw(
        st.sampled_from([VALID_MODEL, encode(Ping(3, 9)), encode(MembershipAdvert(2, 1, JOIN))])
    )
    data = bytearray(source)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(_mutated_modest())
def test_mutated_modest_messages_only_raise_wire_errors(data: bytes) -> None:
    _decode_or_wire_error(data)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=48)
)
_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([10, 11, 12, 13]),
    st.dictionaries(
        st.sampled_from(["round", "nonce", "kind", "samples", "tensors", "peers", "activity",
                         "index", "status", "signatures", "signature"]),
        _values,
    ),
)  # fmt: skip
def test_arbitrary_fields_only_raise_wire_errors(type_id: int, fields: dict[str, Any]) -> None:
    version = {10: 1, 11: 1, 12: 2, 13: 2}[type_id]
    _decode_or_wire_error(_pack({"type": type_id, "version": version, **fields}))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=300))
def test_arbitrary_view_columns_only_raise_wire_errors(
    peers: bytes, activity: bytes, signatures: bytes
) -> None:
    columns = {"peers": peers, "activity": activity, "signatures": signatures}
    _decode_or_wire_error(_pack(_fields(VALID_MODEL) | columns))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 2**63 - 1) | st.text(min_size=1, max_size=20),
        st.builds(Activity, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1),
                  st.sampled_from(Membership)),
        max_size=20,
    )
)  # fmt: skip
def test_any_valid_view_round_trips(view: dict[PeerId, Activity]) -> None:
    decoded = decode_message(encode(ModestModel(TRAINED, 1, p(0.0), 0, view)), spec_of(p(0.0)))
    assert isinstance(decoded, ModestModel) and decoded.view == view


# ---- defences against a hostile peer -------------------------------------------------

KEYS = SeedKeys(11)


def guarded(me: PeerId = 0, peers: Sequence[PeerId] = range(4), **options: Any) -> ModestCore:
    """A core that verifies signatures (as on libp2p and in the simulator)."""
    settings: dict[str, Any] = {"rounds": 50, "local_steps": 3, "sample_size": 3}
    settings.update(options)
    return ModestCore(
        me, ModestConfig(**settings), p(0.0), view_of(peers), np.random.default_rng(0),
        signer=KEYS.signer(me), verifier=KEYS.verifier,
    )  # fmt: skip


def signed(peer: PeerId, record: Activity) -> Activity:
    signature = KEYS.signer(peer).sign(membership_of(peer, record))
    return dataclasses.replace(record, signature=signature)


def test_a_message_far_ahead_of_the_round_estimate_is_rejected() -> None:
    c = guarded(0, range(4))
    for message in (aggregated(2**62), trained(2**62), Ping(2**62, 1), Pong(2**62, 1)):
        assert c.handle(0.0, received(1, message)) == []
    assert c.rejected["RoundTooFar"] == 4 and c.round_estimate == 0 and c.train_round == 0
    assert c.round_limit == c.config.inactivity_threshold  # the default window
    effects = c.handle(0.0, received(1, aggregated(50)))  # just inside the window
    assert of_type(effects, StartTraining) and c.train_round == 50


def test_the_window_is_a_setting() -> None:
    c = guarded(0, range(4), round_window=3)
    assert c.handle(0.0, received(1, Ping(4, 1))) == [] and c.rejected["RoundTooFar"] == 1
    assert of_type(c.handle(0.0, received(1, Ping(3, 2))), Send)


def test_models_from_non_members_are_not_adopted() -> None:
    c = guarded(0, range(4))
    hijack = ModestModel(AGGREGATED, 1, p(1e30), 0, {99: Activity(1)})
    assert c.handle(0.0, received(99, hijack)) == []
    assert c.handle(0.0, received(99, trained(1, view={99: Activity(1)}))) == []
    assert c.rejected["NotMember"] == 2 and 99 not in c.view and c.buffer == {}
    assert c.train_round == 0 and c.agg_round == 0 and w(c.params) == 0.0


def test_a_newcomer_signed_in_by_its_own_record_is_a_member() -> None:
    c = guarded(0, range(4))
    joined = signed(77, Activity(1, 1, JOIN))
    effects = c.handle(0.0, received(77, trained(1, view={77: joined})))
    assert 77 in c.view and c.is_member(77) and 77 in c.buffer and c.rejected == {}
    assert of_type(effects, SetTimer)


def test_pings_from_strangers_are_answered_but_change_nothing() -> None:
    c = guarded(0, range(4))
    effects = c.handle(0.0, received(99, Ping(40, 5)))
    assert [e.message for e in of_type(effects, Send)] == [Pong(0, 5)]
    assert 99 not in c.view and c.round_estimate == 0


def test_unknown_peers_enter_the_view_only_with_their_own_signature() -> None:
    c = guarded(0, range(4))
    fakes = {1000 + i: Activity(0) for i in range(200)}
    genuine = signed(500, Activity(0))
    forged = dataclasses.replace(signed(501, Activity(0)), signature=KEYS.signer(1).sign(b"x"))
    c.handle(0.0, received(1, trained(1, view={**fakes, 500: genuine, 501: forged})))
    assert not fakes.keys() & c.view.keys() and 501 not in c.view
    assert c.rejected["Unsigned"] == 200 and c.rejected["BadSignature"] == 1
    assert c.view[500] == genuine and 500 in c.candidates(1)


def test_relayed_activity_never_raises_the_round_estimate() -> None:
    c = guarded(0, range(4))
    c.handle(0.0, received(1, trained(2, view={2: Activity(10**6), 3: Activity(10**6)})))
    assert c.round_estimate == 2 and c.view[2].last_active == 2 == c.view[3].last_active
    assert c.rejected["ActivityCapped"] == 2


def test_a_relay_never_puts_a_member_ahead_of_our_round() -> None:
    c = guarded(0, range(4), inactivity_threshold=5)
    for k in range(1, 12):  # member 1 relays every round that 3 is still active
        c.handle(0.0, received(1, aggregated(k)))
        c.handle(0.0, received(1, trained(k + 1, view={3: Activity(10**6)})))
    assert c.view[3].last_active <= c.round_estimate  # never ahead of what we know


def test_peer_ids_are_checked() -> None:
    c = guarded(0, range(4))
    c.handle(0.0, received(1, trained(1, view={"fake-1-0056962": Activity(0), -1: Activity(0)})))
    assert c.handle(0.0, received("fake-1-0056962", Ping(0, 1))) == []
    assert c.rejected["BadPeerId"] == 3 and set(c.view) == {0, 1, 2, 3}


def test_libp2p_peers_accept_only_libp2p_peer_ids() -> None:
    from gossiplearn.protocols.signing import is_peer_id
    from gossiplearn.transport.libp2p import Libp2pTransport

    me, other = Libp2pTransport().peer_id, Libp2pTransport().peer_id
    config = ModestConfig(rounds=5, local_steps=1)
    c = ModestCore(
        me, config, p(0.0), view_of([me, other]), np.random.default_rng(0), valid_id=is_peer_id
    )
    assert is_peer_id(me) and not is_peer_id("fake-1-0056962") and not is_peer_id(3)
    assert c.handle(0.0, received("fake-1-0056962", Ping(0, 1))) == []
    assert of_type(c.handle(0.0, received(other, Ping(0, 1))), Send)
    assert c.rejected["BadPeerId"] == 1


def test_one_relay_introduces_at_most_its_quota_of_peers() -> None:
    c = guarded(0, range(4), source_quota=5)
    newcomers = {1000 + i: signed(1000 + i, Activity(0)) for i in range(30)}
    c.handle(0.0, received(1, trained(1, view=newcomers)))
    assert len(c.view) == 4 + 5 and c.rejected["SourceQuota"] == 25
    c.handle(0.0, received(1, trained(1, view=newcomers)))  # its quota stays used up
    assert len(c.view) == 4 + 5 and c.rejected["SourceQuota"] == 50
    c.handle(0.0, received(2, trained(1, view=newcomers)))  # another source: its own quota
    assert len(c.view) == 4 + 10


class CountingVerifier:
    def __init__(self) -> None:
        self.calls = 0

    def verify(self, origin: PeerId, statement: bytes, signature: bytes) -> bool:
        self.calls += 1
        return KEYS.verifier.verify(origin, statement, signature)


def test_a_message_costs_at_most_source_quota_signature_checks() -> None:
    verifier = CountingVerifier()
    c = guarded(0, range(4), source_quota=10)  # forged: none enters nor uses the quota
    c.verifier = verifier
    garbage = {1000 + i: Activity(0, 1, JOIN, bytes(64)) for i in range(1000)}
    garbage[2] = Activity(0, 5, LEAVE, bytes(64))  # a known peer's forged change
    for _ in range(3):
        c.handle(0.0, received(1, trained(1, view=garbage)))
    assert verifier.calls == 3 * 10 and set(c.view) == {0, 1, 2, 3}
    assert c.view[2].status == JOIN


def test_the_view_is_capped_and_a_relayed_flood_evicts_nobody() -> None:
    assert MAX_VIEW >= 1000
    c = guarded(0, range(4), view_cap=8)
    flood = {1000 + i: signed(1000 + i, Activity(0)) for i in range(30)}
    c.handle(0.0, received(1, trained(1, view=flood)))
    assert len(c.view) == 8 and c.rejected["ViewFull"] == 26
    assert {1, 2, 3} <= c.view.keys()  # the configured members stay
    # a newcomer that speaks for itself replaces a peer we only heard of through a relay
    advert = MembershipAdvert(1, 1, JOIN, signed(60, Activity(1, 1, JOIN)).signature)
    c.handle(0.0, received(60, advert))
    assert 60 in c.pending and len(c.view.keys() | c.pending.keys()) == 8
