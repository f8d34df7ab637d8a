"""Tests for the sans-I/O protocol cores (gossip, D-PSGD, FedAvg), driven event by event."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import pytest

from gossiplearn.protocols.dpsgd import (
    MAX_ROUNDS_AHEAD,
    DPSGDConfig,
    DPSGDCore,
    metropolis_hastings_weights,
    weighted_merge,
)
from gossiplearn.protocols.events import (
    Effect,
    Finished,
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
)
from gossiplearn.protocols.fedavg import (
    SERVER,
    FedAvgClient,
    FedAvgConfig,
    FedAvgServer,
    weighted_average,
)
from gossiplearn.protocols.gossip import GossipConfig, GossipCore
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.types import Params, PeerId


def p(value: float) -> Params:
    return {"w": np.array([value], np.float32)}


def w(params: Params) -> float:
    return float(params["w"][0])


def of_type(effects: Sequence[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def msg(round_: int, value: float, samples: int = 0) -> ModelMessage:
    return ModelMessage(round_, p(value), samples)


class RecordingMerge:
    """A merge rule that records what it was given and returns a recognisable model."""

    def __init__(self) -> None:
        self.calls: list[tuple[Params, list[Params]]] = []

    def __call__(self, own: Params, received: Sequence[Params]) -> Params:
        self.calls.append((own, list(received)))
        return p(1000.0 + len(self.calls))


def gossip(
    neighbours: Sequence[PeerId] = (1, 2, 3),
    seed: int = 0,
    **options: object,
) -> tuple[GossipCore, RecordingMerge]:
    settings: dict[str, object] = {"rounds": 5, "local_steps": 7}
    settings.update(options)
    merge = RecordingMerge()
    config = GossipConfig(**settings)  # type: ignore[arg-type]
    core = GossipCore(config, neighbours, p(0.0), merge, np.random.default_rng(seed))
    return core, merge


# ---- gossip ----------------------------------------------------------------------------


def test_gossip_start_trains_from_initial_params() -> None:
    core, _ = gossip()
    effects = core.handle(0.0, Start())
    assert len(effects) == 1
    (train,) = effects
    assert isinstance(train, StartTraining)
    assert train.steps == 7 and w(train.params) == 0.0


def test_gossip_push_all_sends_trained_model_to_every_neighbour() -> None:
    core, _ = gossip(samples=42)
    core.handle(0.0, Start())
    trained = p(5.0)
    effects = core.handle(1.0, TrainingDone(trained))
    sends = of_type(effects, Send)
    assert sorted(s.to for s in sends) == [1, 2, 3]
    for send in sends:
        assert send.message.round == 1
        assert send.message.params is trained
        assert send.message.samples == 42
    # Buffer empty, wait_for_buffer: a timer, no training, no report yet.
    timers = of_type(effects, SetTimer)
    assert len(timers) == 1 and timers[0].delay == 30.0 and timers[0].name == "merge"
    assert not of_type(effects, StartTraining)
    assert not of_type(effects, RoundDone)


def test_gossip_round_number_increments_each_round() -> None:
    core, _ = gossip(neighbours=[1], wait_for_buffer=False)
    core.handle(0.0, Start())
    for round_ in range(1, 4):
        effects = core.handle(float(round_), TrainingDone(p(round_)))
        assert [s.message.round for s in of_type(effects, Send)] == [round_]
        assert [r.round for r in of_type(effects, RoundDone)] == [round_]


def test_gossip_merges_when_buffer_fills() -> None:
    core, merge = gossip()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    assert core.handle(2.0, MessageReceived(1, msg(1, 10.0))) == []
    assert core.handle(2.5, MessageReceived(2, msg(1, 20.0))) == []
    assert merge.calls == []
    effects = core.handle(3.0, MessageReceived(3, msg(1, 30.0)))
    assert len(merge.calls) == 1
    own, received = merge.calls[0]
    assert w(own) == 5.0
    assert [w(m) for m in received] == [10.0, 20.0, 30.0]
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert effects[0].round == 1 and w(effects[0].params) == 1001.0
    assert w(effects[1].params) == 1001.0 and effects[1].steps == 7


def test_gossip_buffer_counts_senders_and_keeps_the_newest_model_of_each() -> None:
    core, merge = gossip(neighbours=[1, 2])
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    assert core.handle(2.0, MessageReceived(1, msg(1, 10.0))) == []
    assert core.handle(3.0, MessageReceived(1, msg(2, 11.0))) == []  # still one sender
    effects = core.handle(4.0, MessageReceived(2, msg(1, 20.0)))
    assert [w(m) for m in merge.calls[0][1]] == [11.0, 20.0]
    assert of_type(effects, RoundDone)


def test_gossip_ignores_models_from_peers_that_are_not_neighbours() -> None:
    core, merge = gossip(neighbours=[1])
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    assert core.handle(2.0, MessageReceived(7, msg(1, 1e6))) == []
    assert core.rejected["NotNeighbour"] == 1 and not core.buffer
    core.handle(3.0, PeerUp(7))  # a neighbour now: taken
    core.handle(4.0, MessageReceived(7, msg(2, 70.0)))
    core.handle(5.0, MessageReceived(1, msg(1, 10.0)))
    assert [w(m) for m in merge.calls[0][1]] == [70.0, 10.0]


def test_gossip_models_received_while_training_are_merged_at_round_end() -> None:
    core, merge = gossip(neighbours=[1, 2])
    core.handle(0.0, Start())
    core.handle(0.5, MessageReceived(1, msg(1, 10.0)))
    core.handle(0.6, MessageReceived(2, msg(1, 20.0)))
    effects = core.handle(1.0, TrainingDone(p(5.0)))
    assert len(of_type(effects, Send)) == 2
    assert not of_type(effects, SetTimer)
    assert [w(m) for m in merge.calls[0][1]] == [10.0, 20.0]
    assert [type(e) for e in effects[2:]] == [RoundDone, StartTraining]


def test_gossip_timer_merges_what_arrived() -> None:
    core, merge = gossip()
    core.handle(0.0, Start())
    timer = of_type(core.handle(1.0, TrainingDone(p(5.0))), SetTimer)[0]
    core.handle(2.0, MessageReceived(2, msg(1, 20.0)))
    effects = core.handle(31.0, Timer(timer.name, timer.token))
    assert len(merge.calls) == 1
    assert [w(m) for m in merge.calls[0][1]] == [20.0]
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert w(effects[0].params) == 1001.0


def test_gossip_timer_with_empty_buffer_goes_on_without_merging() -> None:
    core, merge = gossip()
    core.handle(0.0, Start())
    timer = of_type(core.handle(1.0, TrainingDone(p(5.0))), SetTimer)[0]
    effects = core.handle(31.0, Timer(timer.name, timer.token))
    assert merge.calls == []
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert effects[0].round == 1 and w(effects[0].params) == 5.0
    assert w(effects[1].params) == 5.0


def test_gossip_stale_timer_is_ignored() -> None:
    core, merge = gossip(neighbours=[1])
    core.handle(0.0, Start())
    first = of_type(core.handle(1.0, TrainingDone(p(5.0))), SetTimer)[0]
    core.handle(2.0, MessageReceived(1, msg(1, 10.0)))  # completes round 1
    # The round-1 timer fires late: ignored, both while training and while waiting again.
    assert core.handle(3.0, Timer(first.name, first.token)) == []
    second = of_type(core.handle(4.0, TrainingDone(p(6.0))), SetTimer)[0]
    assert second.token != first.token
    assert core.handle(31.0, Timer(first.name, first.token)) == []
    assert len(merge.calls) == 1
    assert of_type(core.handle(34.0, Timer(second.name, second.token)), RoundDone)


def test_gossip_finishes_after_rounds_and_ignores_everything_after() -> None:
    core, _ = gossip(neighbours=[1], rounds=2)
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(1.0)))
    effects = core.handle(2.0, MessageReceived(1, msg(1, 10.0)))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    timer = of_type(core.handle(3.0, TrainingDone(p(2.0))), SetTimer)[0]
    effects = core.handle(4.0, MessageReceived(1, msg(2, 20.0)))
    assert [type(e) for e in effects] == [RoundDone, Finished]
    assert effects[0].round == 2
    for event in (
        Start(),
        TrainingDone(p(3.0)),
        MessageReceived(1, msg(3, 30.0)),
        Timer(timer.name, timer.token),
        PeerUp(9),
        PeerDown(1),
    ):
        assert core.handle(5.0, event) == []


def _push_one_targets(seed: int, rounds: int = 12) -> list[PeerId]:
    core, _ = gossip(neighbours=[1, 2, 3, 4, 5], seed=seed, push="one", rounds=rounds)
    core.handle(0.0, Start())
    targets: list[PeerId] = []
    for round_ in range(rounds):
        effects = core.handle(float(round_), TrainingDone(p(round_)))
        sends = of_type(effects, Send)
        assert len(sends) == 1
        targets.append(sends[0].to)
        if core.waiting:  # buffer_size defaults to 1 for push "one"
            effects = core.handle(float(round_) + 0.5, MessageReceived(1, msg(round_, 0.0)))
            assert of_type(effects, RoundDone)
    return targets


def test_gossip_push_one_is_deterministic_per_seed_and_varies() -> None:
    first = _push_one_targets(seed=1)
    assert first == _push_one_targets(seed=1)
    assert set(first) <= {1, 2, 3, 4, 5}
    assert len(set(first)) > 1  # varies across rounds
    assert any(_push_one_targets(seed=s) != first for s in (2, 3, 4))


def test_gossip_push_one_default_buffer_is_one() -> None:
    core, merge = gossip(push="one")
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    effects = core.handle(2.0, MessageReceived(3, msg(1, 30.0)))
    assert [w(m) for m in merge.calls[0][1]] == [30.0]
    assert of_type(effects, RoundDone)


def test_gossip_explicit_buffer_size() -> None:
    core, merge = gossip(buffer_size=2)
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    core.handle(2.0, MessageReceived(1, msg(1, 10.0)))
    effects = core.handle(3.0, MessageReceived(2, msg(1, 20.0)))
    assert len(merge.calls[0][1]) == 2
    assert of_type(effects, RoundDone)


def test_gossip_without_wait_trains_on_at_once() -> None:
    core, merge = gossip(wait_for_buffer=False)
    core.handle(0.0, Start())
    effects = core.handle(1.0, TrainingDone(p(5.0)))
    assert len(of_type(effects, Send)) == 3
    assert not of_type(effects, SetTimer)
    assert merge.calls == []  # buffer not full: no merge
    assert [type(e) for e in effects[3:]] == [RoundDone, StartTraining]
    assert w(effects[-1].params) == 5.0
    # Models arriving while training do not interrupt it...
    for sender in (1, 2, 3):
        assert core.handle(2.0, MessageReceived(sender, msg(1, 10.0 * sender))) == []
    # ...they are merged at the next round boundary.
    effects = core.handle(3.0, TrainingDone(p(6.0)))
    assert [w(m) for m in merge.calls[0][1]] == [10.0, 20.0, 30.0]
    assert w(merge.calls[0][0]) == 6.0
    assert w(of_type(effects, StartTraining)[0].params) == 1001.0


def test_gossip_peer_down_shrinks_buffer_and_completes_waiting_round() -> None:
    core, merge = gossip()
    assert core.buffer_size == 3
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(5.0)))
    core.handle(2.0, MessageReceived(1, msg(1, 10.0)))
    core.handle(2.0, MessageReceived(2, msg(1, 20.0)))
    effects = core.handle(3.0, PeerDown(3))
    assert core.buffer_size == 2
    assert [w(m) for m in merge.calls[0][1]] == [10.0, 20.0]
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    # The downed peer is not pushed to any more.
    sends = of_type(core.handle(4.0, TrainingDone(p(6.0))), Send)
    assert sorted(s.to for s in sends) == [1, 2]


def test_gossip_peer_down_of_unknown_peer_and_peer_up() -> None:
    core, _ = gossip(neighbours=[1, 2])
    assert core.handle(0.0, PeerDown(99)) == []
    assert core.buffer_size == 2
    assert core.handle(0.0, PeerUp(3)) == []
    assert core.handle(0.0, PeerUp(3)) == []
    assert core.buffer_size == 3
    core.handle(0.0, Start())
    sends = of_type(core.handle(1.0, TrainingDone(p(5.0))), Send)
    assert sorted(s.to for s in sends) == [1, 2, 3]


def test_gossip_a_flooding_sender_weighs_as_one_model() -> None:
    core, merge = gossip(neighbours=[1, 2], wait_for_buffer=False)
    core.handle(0.0, Start())
    for i in range(3 * core.max_buffer):
        core.handle(0.5, MessageReceived(1, msg(i + 1, float(i))))  # rising rounds: no replay
        assert len(core.buffer) == 1
    core.handle(0.6, MessageReceived(2, msg(1, -1.0)))
    core.handle(1.0, TrainingDone(p(5.0)))
    assert [w(m) for m in merge.calls[0][1]] == [3 * core.max_buffer - 1.0, -1.0]


def test_gossip_buffer_respects_max_after_peer_down() -> None:
    core, _ = gossip(neighbours=[1, 2, 3, 4], wait_for_buffer=False)
    assert core.max_buffer == 16  # fixed at start, whatever neighbours come and go
    for peer in (2, 3, 4):
        core.handle(0.0, PeerDown(peer))
    core.handle(0.0, Start())
    for i in range(40):
        core.handle(0.5, MessageReceived(1, msg(i + 1, float(i))))  # rising rounds: no replay
    assert len(core.buffer) <= core.max_buffer


# ---- D-PSGD --------------------------------------------------------------------------


def test_metropolis_hastings_weights_path() -> None:
    graph = nx.path_graph(3)
    assert metropolis_hastings_weights(graph, 0) == pytest.approx({1: 1 / 3})
    assert metropolis_hastings_weights(graph, 1) == pytest.approx({0: 1 / 3, 2: 1 / 3})
    assert metropolis_hastings_weights(graph, 2) == pytest.approx({1: 1 / 3})


def test_metropolis_hastings_weights_star() -> None:
    graph = nx.star_graph(3)  # centre 0, leaves 1..3
    assert metropolis_hastings_weights(graph, 0) == pytest.approx({1: 0.25, 2: 0.25, 3: 0.25})
    for leaf in (1, 2, 3):
        assert metropolis_hastings_weights(graph, leaf) == pytest.approx({0: 0.25})


@pytest.mark.parametrize(
    "graph",
    [nx.path_graph(3), nx.star_graph(4), nx.cycle_graph(5), nx.barbell_graph(3, 1)],
    ids=["path", "star", "cycle", "barbell"],
)
def test_metropolis_hastings_matrix_is_symmetric_and_stochastic(graph: nx.Graph) -> None:
    nodes = sorted(graph.nodes)
    matrix = np.zeros((len(nodes), len(nodes)))
    for i in nodes:
        weights = metropolis_hastings_weights(graph, i)
        assert set(weights) == set(graph.neighbors(i))
        for j, value in weights.items():
            matrix[i, j] = value
        matrix[i, i] = 1.0 - sum(weights.values())
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    np.testing.assert_allclose(matrix, matrix.T)
    assert np.all(matrix >= 0)


def test_weighted_merge_hand_checked_and_keeps_local_statistics() -> None:
    own = {"w": np.array([3.0, 0.0], np.float32), "bn.num_batches_tracked": np.array(5)}
    others = {
        0: {"w": np.array([6.0, 3.0], np.float32), "bn.num_batches_tracked": np.array(9)},
        2: {"w": np.array([12.0, 6.0], np.float32), "bn.num_batches_tracked": np.array(9)},
    }
    merged = weighted_merge(own, others, {0: 1 / 3, 2: 1 / 3})
    np.testing.assert_allclose(merged["w"], [7.0, 3.0], rtol=1e-6)
    assert merged["w"].dtype == np.float32
    assert int(merged["bn.num_batches_tracked"]) == 5


def dpsgd(rounds: int = 3) -> DPSGDCore:
    # Node 1 of the path 0-1-2: weight 1/3 for each neighbour, 1/3 for itself.
    weights = metropolis_hastings_weights(nx.path_graph(3), 1)
    return DPSGDCore(DPSGDConfig(rounds=rounds, local_steps=4), weights, p(0.0))


def test_dpsgd_waits_for_every_neighbour_then_merges() -> None:
    core = dpsgd()
    (train,) = core.handle(0.0, Start())
    assert isinstance(train, StartTraining) and train.steps == 4
    effects = core.handle(1.0, TrainingDone(p(3.0)))
    sends = of_type(effects, Send)
    assert sorted(s.to for s in sends) == [0, 2]
    assert all(s.message.round == 1 and w(s.message.params) == 3.0 for s in sends)
    assert len(of_type(effects, SetTimer)) == 1
    assert not of_type(effects, RoundDone)
    assert core.handle(2.0, MessageReceived(0, msg(1, 6.0))) == []
    effects = core.handle(3.0, MessageReceived(2, msg(1, 12.0)))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert effects[0].round == 1
    # 1/3·3 + 1/3·6 + 1/3·12 = 7
    assert w(effects[0].params) == pytest.approx(7.0)
    assert w(effects[1].params) == pytest.approx(7.0)


def test_dpsgd_ignores_non_neighbours_and_old_rounds() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    core.handle(2.0, MessageReceived(2, msg(1, 12.0)))  # round 1 merged
    core.handle(3.0, TrainingDone(p(9.0)))  # round 2
    assert core.handle(4.0, MessageReceived(99, msg(2, 500.0))) == []  # not a neighbour
    assert core.handle(4.0, MessageReceived(0, msg(1, 600.0))) == []  # old round
    assert core.handle(4.0, MessageReceived(2, msg(2, 0.0))) == []  # still missing 0
    effects = core.handle(5.0, MessageReceived(0, msg(2, 3.0)))
    # 1/3·9 + 1/3·3 + 1/3·0 = 4
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(4.0)
    assert of_type(effects, RoundDone)[0].round == 2


def test_dpsgd_keeps_models_of_a_future_round() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    # Both neighbours are faster: their round-1 models arrive while we train.
    assert core.handle(0.5, MessageReceived(0, msg(1, 6.0))) == []
    assert core.handle(0.6, MessageReceived(2, msg(1, 12.0))) == []
    effects = core.handle(1.0, TrainingDone(p(3.0)))
    assert len(of_type(effects, Send)) == 2
    assert [type(e) for e in effects[-2:]] == [RoundDone, StartTraining]
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(7.0)


def test_dpsgd_keeps_next_round_models_while_waiting() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))
    core.handle(1.5, MessageReceived(0, msg(1, 6.0)))
    assert core.handle(1.6, MessageReceived(0, msg(2, 30.0))) == []  # round 2, early
    core.handle(2.0, MessageReceived(2, msg(1, 12.0)))  # round 1 done (7)
    core.handle(2.5, MessageReceived(2, msg(2, 60.0)))
    effects = core.handle(3.0, TrainingDone(p(0.0)))
    # 1/3·0 + 1/3·30 + 1/3·60 = 30
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(30.0)


def test_dpsgd_timeout_merges_what_arrived() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    timer = of_type(core.handle(1.0, TrainingDone(p(3.0))), SetTimer)[0]
    assert timer.delay == 30.0
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    effects = core.handle(31.0, Timer(timer.name, timer.token))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    # Missing neighbour's weight goes to self: 2/3·3 + 1/3·6 = 4
    assert w(effects[0].params) == pytest.approx(4.0)
    # The timer again, or a late model of the merged round, changes nothing.
    assert core.handle(32.0, Timer(timer.name, timer.token)) == []
    assert core.handle(33.0, MessageReceived(2, msg(1, 12.0))) == []


def test_dpsgd_timeout_with_nothing_arrived_keeps_own_model() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    timer = of_type(core.handle(1.0, TrainingDone(p(3.0))), SetTimer)[0]
    effects = core.handle(31.0, Timer(timer.name, timer.token))
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(3.0)


def test_dpsgd_stale_timer_is_ignored() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    first = of_type(core.handle(1.0, TrainingDone(p(3.0))), SetTimer)[0]
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    core.handle(2.0, MessageReceived(2, msg(1, 12.0)))
    core.handle(3.0, TrainingDone(p(3.0)))
    assert core.handle(31.0, Timer(first.name, first.token)) == []


def test_dpsgd_peer_down_stops_waiting_for_it() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    effects = core.handle(3.0, PeerDown(2))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert w(effects[0].params) == pytest.approx(4.0)  # 2/3·3 + 1/3·6
    sends = of_type(core.handle(4.0, TrainingDone(p(3.0))), Send)
    assert [s.to for s in sends] == [0]
    assert core.handle(5.0, PeerDown(99)) == []


def test_dpsgd_peer_down_after_its_model_arrived() -> None:
    core = dpsgd()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))
    core.handle(2.0, MessageReceived(2, msg(1, 12.0)))
    effects = core.handle(3.0, PeerDown(2))  # still waiting for 0
    assert effects == []
    effects = core.handle(4.0, MessageReceived(0, msg(1, 6.0)))
    (done,) = of_type(effects, RoundDone)
    # Peer 2's weight moved to self: 2/3·3 + 1/3·6.
    assert w(done.params) == pytest.approx(4.0)


def test_dpsgd_finishes_after_rounds() -> None:
    core = dpsgd(rounds=1)
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    effects = core.handle(3.0, MessageReceived(2, msg(1, 12.0)))
    assert [type(e) for e in effects] == [RoundDone, Finished]
    assert core.handle(4.0, Start()) == []
    assert core.handle(4.0, TrainingDone(p(1.0))) == []


def dynamic_dpsgd(
    cap: int = 2, neighbours: Sequence[PeerId] = (0, 2), rounds: int = 3
) -> DPSGDCore:
    core = DPSGDCore.dynamic(DPSGDConfig(rounds=3, local_steps=4), cap, p(0.0))
    for peer in neighbours:
        core.handle(0.0, PeerUp(peer))
    return core


def test_fixed_dpsgd_takes_no_peer_that_comes_up() -> None:
    core = dpsgd()
    core.handle(0.0, PeerUp(7))
    assert sorted(core.weights) == [0, 2] and 7 not in core.loop.neighbours


def test_dynamic_dpsgd_takes_peers_up_to_the_cap_with_max_degree_weights() -> None:
    core = dynamic_dpsgd(cap=3, neighbours=(5, 6, 7, 8))  # 8 is over the cap
    assert core.weights == {5: 0.25, 6: 0.25, 7: 0.25}
    assert core.loop.neighbours == [5, 6, 7]
    assert 1.0 - sum(core.weights.values()) == pytest.approx(0.25)  # the self weight
    core.handle(1.0, PeerDown(6))
    core.handle(1.0, PeerUp(8))  # room again
    assert core.weights == {5: 0.25, 7: 0.25, 8: 0.25}
    with pytest.raises(ValueError, match="cap"):
        DPSGDCore.dynamic(DPSGDConfig(rounds=1, local_steps=1), 0, p(0.0))


def test_dynamic_dpsgd_mixing_matrix_is_symmetric_and_doubly_stochastic() -> None:
    # Any graph whose degrees stay within the shared cap, neighbours taken in any order.
    cap = 4
    graph = nx.random_regular_graph(3, 12, seed=1)
    graph.remove_edges_from(list(graph.edges)[:5])
    matrix = np.zeros((12, 12))
    for i in graph.nodes:
        core = dynamic_dpsgd(cap, neighbours=sorted(graph.neighbors(i), reverse=i % 2 == 1))
        assert set(core.weights) == set(graph.neighbors(i))
        for j, value in core.weights.items():
            matrix[i, j] = value
        matrix[i, i] = 1.0 - sum(core.weights.values())
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    np.testing.assert_allclose(matrix, matrix.T)
    assert np.all(matrix >= 0)


def test_dynamic_dpsgd_merges_with_one_over_one_plus_cap() -> None:
    core = dynamic_dpsgd(cap=2)
    core.handle(0.0, Start())
    sends = of_type(core.handle(1.0, TrainingDone(p(3.0))), Send)
    assert sorted(s.to for s in sends) == [0, 2]
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    effects = core.handle(3.0, MessageReceived(2, msg(1, 12.0)))
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(7.0)  # thirds


def test_dynamic_dpsgd_peer_down_gives_its_weight_to_self() -> None:
    core = dynamic_dpsgd(cap=3)  # weights 1/4; two neighbours held, one slot free
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(4.0)))
    core.handle(2.0, MessageReceived(2, msg(1, 100.0)))
    assert core.handle(3.0, PeerDown(2)) == []  # still waiting for 0
    (done,) = of_type(core.handle(4.0, MessageReceived(0, msg(1, 8.0))), RoundDone)
    assert w(done.params) == pytest.approx(0.75 * 4.0 + 0.25 * 8.0)
    assert core.weights == {0: 0.25}


def test_dynamic_dpsgd_does_not_wait_for_a_neighbour_already_past_the_round() -> None:
    core = dynamic_dpsgd(cap=2)
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(3.0)))  # waiting for round 1
    core.handle(2.0, MessageReceived(0, msg(1, 6.0)))
    # 2 joined late, or its round-1 model was lost: it is at round 2 already.
    effects = core.handle(3.0, MessageReceived(2, msg(2, 30.0)))
    (done,) = of_type(effects, RoundDone)
    assert done.round == 1 and w(done.params) == pytest.approx(2 / 3 * 3.0 + 1 / 3 * 6.0)
    assert 2 in core.inbox[2]  # kept for round 2
    assert core.handle(3.5, MessageReceived(2, msg(1, 12.0))) == []  # too late: a replay
    assert core.rejected["Replay"] == 1


def test_dynamic_dpsgd_keeps_no_model_far_ahead_and_still_progresses() -> None:
    core = dynamic_dpsgd(cap=2)
    core.handle(0.0, Start())
    far = 1 + MAX_ROUNDS_AHEAD + 1
    assert core.handle(0.5, MessageReceived(2, msg(far, 99.0))) == []
    assert far not in core.inbox  # bounded memory
    timer = of_type(core.handle(1.0, TrainingDone(p(3.0))), SetTimer)[0]
    # 2 is past round 1; 0 is behind and silent: the timer ends the round with what came.
    effects = core.handle(11.0, Timer(timer.name, timer.token))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert w(effects[0].params) == pytest.approx(3.0)


def test_dynamic_dpsgd_resumes_at_its_checkpointed_round() -> None:
    core = DPSGDCore.dynamic(DPSGDConfig(rounds=9, local_steps=1), 2, p(0.0), round=5)
    core.handle(0.0, PeerUp(1))
    core.handle(0.0, Start())
    (send,) = of_type(core.handle(1.0, TrainingDone(p(1.0))), Send)
    assert send.message.round == 6


# ---- FedAvg --------------------------------------------------------------------------

CLIENTS: list[PeerId] = [f"c{i}" for i in range(10)]


def server(seed: int = 0, rounds: int = 3, per_round: int = 3) -> FedAvgServer:
    config = FedAvgConfig(rounds=rounds, clients_per_round=per_round, round_timeout=60.0)
    return FedAvgServer(config, CLIENTS, p(0.0), np.random.default_rng(seed))


def sampled(effects: Sequence[Effect]) -> list[PeerId]:
    return [s.to for s in of_type(effects, Send)]


def test_fedavg_server_samples_distinct_clients_and_sends_global_model() -> None:
    srv = server()
    effects = srv.handle(0.0, Start())
    clients = sampled(effects)
    assert len(clients) == 3 and len(set(clients)) == 3
    assert set(clients) <= set(CLIENTS)
    for send in of_type(effects, Send):
        assert send.message.round == 1
        assert w(send.message.params) == 0.0
    timers = of_type(effects, SetTimer)
    assert len(timers) == 1 and timers[0].delay == 60.0 and timers[0].token == 1


def test_fedavg_server_sampling_deterministic_in_seed() -> None:
    first = sampled(server(seed=5).handle(0.0, Start()))
    assert first == sampled(server(seed=5).handle(0.0, Start()))
    others = [sampled(server(seed=s).handle(0.0, Start())) for s in (6, 7, 8)]
    assert any(set(o) != set(first) for o in others)


def test_fedavg_server_samples_at_most_all_clients() -> None:
    srv = server(per_round=50)
    assert sorted(sampled(srv.handle(0.0, Start()))) == sorted(CLIENTS)


def test_fedavg_server_weighted_average_and_rounds() -> None:
    srv = server(rounds=2)
    a, b, c = sampled(srv.handle(0.0, Start()))
    assert srv.handle(1.0, MessageReceived(a, msg(1, 0.0, samples=1))) == []
    assert srv.handle(1.0, MessageReceived("stranger", msg(1, 99.0, samples=100))) == []
    assert srv.handle(1.0, MessageReceived(b, msg(2, 99.0, samples=100))) == []  # wrong round
    assert srv.handle(1.0, MessageReceived(b, msg(1, 4.0, samples=3))) == []
    effects = srv.handle(2.0, MessageReceived(c, msg(1, 8.0, samples=4)))
    done = of_type(effects, RoundDone)
    assert len(done) == 1 and done[0].round == 1
    # (0·1 + 4·3 + 8·4) / 8 = 5.5
    assert w(done[0].params) == pytest.approx(5.5)
    sends = of_type(effects, Send)
    assert len(sends) == 3
    assert all(s.message.round == 2 and w(s.message.params) == pytest.approx(5.5) for s in sends)
    # Round 2: a late round-1 reply is ignored.
    late = sends[0].to
    assert srv.handle(3.0, MessageReceived(late, msg(1, 99.0, samples=1))) == []
    for s in sends[:-1]:
        assert srv.handle(4.0, MessageReceived(s.to, msg(2, 1.0, samples=1))) == []
    effects = srv.handle(5.0, MessageReceived(sends[-1].to, msg(2, 4.0, samples=2)))
    assert [type(e) for e in effects] == [RoundDone, Finished]
    # (1 + 1 + 4·2) / 4 = 2.5
    assert effects[0].round == 2 and w(effects[0].params) == pytest.approx(2.5)
    assert srv.handle(6.0, Start()) == []
    assert srv.handle(6.0, Timer("round", 2)) == []


def test_fedavg_server_round_timeout_aggregates_what_arrived() -> None:
    srv = server()
    a, _, _ = sampled(srv.handle(0.0, Start()))
    srv.handle(1.0, MessageReceived(a, msg(1, 6.0, samples=10)))
    assert srv.handle(30.0, Timer("round", 7)) == []  # not this round's timer
    effects = srv.handle(60.0, Timer("round", 1))
    done = of_type(effects, RoundDone)
    assert done[0].round == 1 and w(done[0].params) == pytest.approx(6.0)
    assert all(s.message.round == 2 for s in of_type(effects, Send))
    # Round 2 times out with no reply at all: the global model stays.
    effects = srv.handle(120.0, Timer("round", 2))
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(6.0)
    assert srv.handle(121.0, Timer("round", 1)) == []  # stale


def test_fedavg_server_zero_samples_means_unweighted() -> None:
    srv = server(per_round=2)
    a, b = sampled(srv.handle(0.0, Start()))
    srv.handle(1.0, MessageReceived(a, msg(1, 2.0)))
    effects = srv.handle(1.0, MessageReceived(b, msg(1, 6.0)))
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(4.0)


def test_fedavg_client_trains_and_replies() -> None:
    client = FedAvgClient(local_steps=5, samples=123)
    assert client.handle(0.0, MessageReceived("other", msg(1, 1.0))) == []
    (train,) = client.handle(0.0, MessageReceived(SERVER, msg(4, 2.0)))
    assert isinstance(train, StartTraining)
    assert train.steps == 5 and w(train.params) == 2.0
    effects = client.handle(1.0, TrainingDone(p(3.0), token=train.token))
    assert len(effects) == 1
    (send,) = effects
    assert isinstance(send, Send) and send.to == SERVER
    assert send.message.round == 4 and send.message.samples == 123
    assert w(send.message.params) == 3.0


def test_fedavg_client_ignores_training_for_an_older_round() -> None:
    client = FedAvgClient(local_steps=5, samples=10, server="srv")
    (old,) = client.handle(0.0, MessageReceived("srv", msg(1, 1.0)))
    (new,) = client.handle(1.0, MessageReceived("srv", msg(2, 2.0)))
    assert client.handle(2.0, TrainingDone(p(9.0), token=old.token)) == []
    (send,) = client.handle(3.0, TrainingDone(p(8.0), token=new.token))
    assert send.to == "srv" and send.message.round == 2


def test_weighted_average_averages_bn_stats_keeps_integer_buffers() -> None:
    like = {
        "w": np.array([0.0, 0.0], np.float32),
        "bn.running_mean": np.array([0.0], np.float32),
        "bn.running_var": np.array([1.0], np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    models = [
        {
            "w": np.array([1.0, 2.0], np.float32),
            "bn.running_mean": np.array([1.0], np.float32),
            "bn.running_var": np.array([2.0], np.float32),
            "bn.num_batches_tracked": np.array(100, np.int64),
        },
        {
            "w": np.array([4.0, 8.0], np.float32),
            "bn.running_mean": np.array([4.0], np.float32),
            "bn.running_var": np.array([6.0], np.float32),
            "bn.num_batches_tracked": np.array(200, np.int64),
        },
    ]
    merged = weighted_average(models, [1.0, 2.0], like)
    np.testing.assert_allclose(merged["w"], [3.0, 6.0])
    np.testing.assert_allclose(merged["bn.running_mean"], [3.0])
    np.testing.assert_allclose(merged["bn.running_var"], [14.0 / 3.0], rtol=1e-6)
    assert merged["w"].dtype == np.float32
    assert int(merged["bn.num_batches_tracked"]) == 7
    assert merged["bn.num_batches_tracked"].dtype == np.int64
    uniform = weighted_average(models, [0.0, 0.0], like)
    np.testing.assert_allclose(uniform["w"], [2.5, 5.0])
