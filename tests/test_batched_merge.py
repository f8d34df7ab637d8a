"""Whole-model merges and deferred results give the same models as the per-peer path."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from test_batched import _assert_same, _learners

import gossiplearn.scenarios.run as run_module
from gossiplearn import make_config, simulate
from gossiplearn.aggregation import get_aggregator
from gossiplearn.aggregation._flat import layout_of
from gossiplearn.aggregation._tensors import is_local_statistic
from gossiplearn.learning.batched import BatchedPool
from gossiplearn.learning.pool import DeferredParams, SequentialPool, deferring
from gossiplearn.learning.trainer import Learner
from gossiplearn.protocols.codec import encode, encoded_model_size
from gossiplearn.protocols.messages import ModelMessage, ModelSpec, spec_of
from gossiplearn.scenarios.late import LateEncoding, LateRejection, late_model_message
from gossiplearn.scenarios.network import NetworkModel, NetworkSettings
from gossiplearn.scenarios.simulator import Simulator
from gossiplearn.types import Params

# ------------------------------------------------------- per-tensor references, as in a loop


def _per_tensor(own: Params, merge_one: Any) -> Params:
    return {
        name: value if is_local_statistic(name, value) else merge_one(name, value)
        for name, value in own.items()
    }


def _stack(models: Sequence[Params], name: str) -> np.ndarray:
    return np.stack([np.asarray(m[name], dtype=np.float64) for m in models])


def _reference_mean(own: Params, received: list[Params], beta: float) -> Params:
    return _per_tensor(
        own,
        lambda name, value: (
            beta * value.astype(np.float64) + (1 - beta) * _stack(received, name).mean(axis=0)
        ).astype(value.dtype),
    )


def _reference_vc(own: Params, received: list[Params], beta: float, target: str) -> Params:
    def one(name: str, value: np.ndarray) -> np.ndarray:
        models = _stack(received, name)
        mixed = beta * value.astype(np.float64) + (1 - beta) * models.mean(axis=0)
        if value.size > 1:
            wanted = models.reshape(len(models), -1).var(axis=1, ddof=1).mean()
            if target == "conservative":
                wanted = beta * value.astype(np.float64).var(ddof=1) + (1 - beta) * wanted
            centre = mixed.mean()
            scale = np.sqrt((wanted + 1e-4) / (mixed.var(ddof=1) + 1e-4))
            mixed = (mixed - centre) * scale + centre
        return mixed.astype(value.dtype)

    return _per_tensor(own, one)


def _reference_trimmed(own: Params, received: list[Params], trim: int) -> Params:
    models = [own, *received]

    def one(name: str, value: np.ndarray) -> np.ndarray:
        kept = np.sort(_stack(models, name), axis=0)[trim : len(models) - trim]
        return kept.mean(axis=0).astype(value.dtype)

    return _per_tensor(own, one)


def _reference_median(own: Params, received: list[Params]) -> Params:
    models = [own, *received]
    return _per_tensor(
        own, lambda name, value: np.median(_stack(models, name), axis=0).astype(value.dtype)
    )


def _model(rng: np.random.Generator, scale: float = 1.0) -> Params:
    """A model with every kind of tensor: conv weights, a bias, a one-element tensor, an
    empty one, BN statistics and an integer buffer."""
    return {
        "conv.weight": (rng.normal(size=(4, 2, 3, 3)) * scale).astype(np.float32),
        "conv.bias": rng.normal(size=4).astype(np.float32),
        "scalar": rng.normal(size=1).astype(np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.weight": (rng.normal(size=(10, 36)) + 0.5).astype(np.float32),
    }


def _assert_equal_models(expected: Params, actual: Params) -> None:
    assert list(expected) == list(actual)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
        np.testing.assert_allclose(actual[name], value, rtol=2e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("received_count", [1, 4, 7])
def test_whole_model_rules_equal_their_per_tensor_definitions(received_count: int) -> None:
    rng = np.random.default_rng(received_count)
    own = _model(rng)
    received = [_model(rng, scale=1 + i) for i in range(received_count)]
    for beta in (0.0, 0.5, 0.9):
        merged = get_aggregator("mean", beta=beta)(own, received)
        _assert_equal_models(_reference_mean(own, received, beta), merged)
        for target in ("others", "conservative"):
            merged = get_aggregator("vc", beta=beta, target=target)(own, received)
            if received_count == 1 and target == "others":
                continue  # one received model: its variance is the target, as below
            _assert_equal_models(_reference_vc(own, received, beta, target), merged)
    _assert_equal_models(_reference_median(own, received), get_aggregator("median")(own, received))
    trim = (received_count + 1 - 1) // 2 if received_count < 4 else 1
    merged = get_aggregator("trimmed-mean", trim=trim)(own, received)
    _assert_equal_models(_reference_trimmed(own, received, trim), merged)


def test_local_statistics_and_one_element_tensors_are_kept() -> None:
    rng = np.random.default_rng(0)
    own, received = _model(rng), [_model(rng, 3.0) for _ in range(3)]
    merged = get_aggregator("vc")(own, received)
    assert merged["bn.running_mean"] is own["bn.running_mean"]
    assert merged["bn.num_batches_tracked"] is own["bn.num_batches_tracked"]
    scalar = 0.5 * own["scalar"] + 0.5 * np.mean([r["scalar"] for r in received], axis=0)
    np.testing.assert_allclose(merged["scalar"], scalar, rtol=1e-6)
    layout = layout_of(own)
    assert layout.size == 4 * 2 * 9 + 4 + 1 + 10 * 36
    assert layout_of(dict(own)) is layout  # cached per shape


# ------------------------------------------------------------------------ deferred values


def test_deferred_params_fill_once_on_any_read() -> None:
    calls: list[int] = []
    value = {"a": np.ones(2, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}

    def source() -> Params:
        calls.append(1)
        return dict(value)

    reads = [
        dict,
        lambda d: {**d},
        lambda d: list(d.items()),
        len,
        lambda d: d["a"],
        copy.deepcopy,
        lambda d: pickle.loads(pickle.dumps(d)),
    ]
    for read in reads:
        deferred = DeferredParams(source, spec_of(value))
        assert not deferred.ready and calls == []
        read(deferred)
        read(deferred)
        assert deferred.ready and calls == [1], read
        assert list(deferred) == ["a", "b"]
        calls.clear()


def test_a_message_is_sized_without_its_tensors() -> None:
    params = _model(np.random.default_rng(1))
    for round_, samples in [(0, 0), (1, 60), (200, 70_000)]:
        message = ModelMessage(round_, params, samples)
        assert encoded_model_size(round_, samples, spec_of(params)) == len(encode(message))


def _submit_rounds(pool: Any, learners: list[Learner], *, deferred: bool) -> list[Params]:
    """Three rounds of chained jobs; every other round, a merge of peer 0's and 1's result."""
    params = [learner.params() for learner in learners]
    merge = get_aggregator("vc")
    if deferred:
        merge = deferring(merge)
    for _ in range(3):
        tickets = [pool.submit(peer, params[peer], 3) for peer in range(len(learners))]
        take = pool.claim if deferred else pool.result
        params = [take(ticket) for ticket in tickets]
        params[0] = merge(params[0], [params[1]])
    return [dict(p) for p in params]


def test_deferred_results_chain_jobs_and_merges_into_one_flush() -> None:
    expected = _submit_rounds(SequentialPool(_learners("cnn")), _learners("cnn"), deferred=False)
    pool = BatchedPool(_learners("cnn"))
    actual = _submit_rounds(pool, _learners("cnn"), deferred=True)
    assert pool.flushes == 1 and pool.jobs_run == 3 * len(actual)  # nothing ran until read
    for want, got in zip(expected, actual, strict=True):
        _assert_same(want, got)


def test_a_claimed_result_survives_the_next_submit_and_an_abandoned_one_is_none() -> None:
    learners = _learners("mlp")
    pool = BatchedPool(learners)
    start = learners[0].params()
    abandoned = pool.submit(0, start, 2)
    first = pool.submit(0, start, 2)
    assert pool.claim(abandoned) is None
    deferred = pool.claim(first)
    assert isinstance(deferred, DeferredParams) and not deferred.ready
    pool.submit(0, deferred, 2)  # chained: starts from the result not yet computed
    sequential = SequentialPool(_learners("mlp"))
    sequential.submit(0, start, 2)
    _assert_same(sequential.result(sequential.submit(0, start, 2)), dict(deferred))


# ------------------------------------------------------------------------- whole simulation


def test_deferring_simulation_matches_sequential_and_batches_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base: dict[str, Any] = dict(
        peers=12, rounds=3, topology="regular:3", dataset="digits", model="mlp", seed=3,
        aggregator="vc", batch_size=16,
    )  # fmt: skip
    expected = simulate(make_config(**base, engine="sequential"))
    pools: list[BatchedPool] = []

    def capture(learners: list[Learner], **options: Any) -> BatchedPool:
        pools.append(BatchedPool(learners, **options))
        return pools[-1]

    monkeypatch.setattr(run_module, "BatchedPool", capture)
    actual = simulate(make_config(**base, engine="batched"))
    same = {"rounds", "bytes_sent", "messages_sent", "messages_rejected", "virtual_time"}
    assert {k: expected.summary[k] for k in same} == {k: actual.summary[k] for k in same}
    for peer, accuracy in expected.summary["peer_accuracy"].items():
        assert actual.summary["peer_accuracy"][peer] == pytest.approx(accuracy, abs=0.02)
    # Deferred merges let jobs of different rounds wait together: far fewer flushes than
    # jobs (a flush per TrainingDone would be one per job and peer).
    pool = pools[0]
    assert pool.jobs_run == base["peers"] * base["rounds"]
    assert pool.flushes <= base["rounds"] + 2


# ------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("model", ["cnn", "cnn-bn", "mlp"])
def test_stacked_evaluator_scores_like_one_model_at_a_time(model: str) -> None:
    from gossiplearn.learning.batched import StackedEvaluator
    from gossiplearn.learning.models import build_model
    from gossiplearn.learning.trainer import Evaluator

    rng = torch.Generator().manual_seed(0)
    x, y = torch.rand(70, 1, 8, 8, generator=rng), torch.randint(0, 10, (70,), generator=rng)
    models = [learner.params() for learner in _learners(model)]
    for params in models:  # BN statistics that differ per model: eval mode must use them
        for name in params:
            if name.endswith("running_mean"):
                params[name] = np.random.default_rng(1).normal(size=params[name].shape)
                params[name] = params[name].astype(np.float32)
    one = Evaluator(build_model(model, (1, 8, 8), 10, seed=0), x, y)
    many = StackedEvaluator(build_model(model, (1, 8, 8), 10, seed=0), x, y, batch_size=32)
    many.per_chunk = 2  # several chunks and a short last batch
    expected = [one.accuracy(params) for params in models]
    assert many.accuracies(models) == pytest.approx(expected, abs=1.5 / len(y))


@pytest.mark.parametrize("model", ["cnn", "cnn-bn", "lenet5", "mlp"])
def test_evaluator_predicts_what_the_model_predicts(model: str) -> None:
    """Channels-last batches sized by activations: the plain NCHW forward's predictions."""
    from gossiplearn.learning.models import build_model
    from gossiplearn.learning.trainer import Evaluator, params_of

    rng = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 1, 28, 28, generator=rng), torch.randint(0, 10, (300,), generator=rng)
    reference = build_model(model, (1, 28, 28), 10, seed=3).eval()
    evaluator = Evaluator(build_model(model, (1, 28, 28), 10, seed=0), x, y)
    with torch.no_grad():
        logits = reference(x)
    predicted = evaluator.predict(params_of(reference))
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # near-ties may break either way
    assert torch.equal(predicted[clear], logits.argmax(dim=1)[clear])
    assert clear.float().mean() > 0.9
    if model != "mlp":
        assert evaluator.batch_size < len(x)  # several batches


# ------------------------------------------------- every protocol, late decoding, fallback

#: Small runs of every protocol the batched engine runs, push-one gossip among them.
PROTOCOL_RUNS: dict[str, dict[str, Any]] = {
    "gossip-push-all-vc": dict(aggregator="vc"),
    "gossip-push-one-mean": dict(
        push="one", buffer_size=1, beta=0.5, aggregator="mean", lr=0.1, momentum=0.0
    ),
    "gossip-push-one-no-wait": dict(push="one", buffer_size=1, wait_for_buffer=False),
    "dpsgd": dict(protocol="dpsgd"),
    "fedavg": dict(protocol="fedavg", sample_fraction=0.5),
    "modest": dict(protocol="modest"),
    "sybilwall": dict(aggregator="sybilwall"),
}
RUN_BASE: dict[str, Any] = dict(
    peers=10, rounds=4, topology="regular:3", dataset="digits", model="mlp", seed=11,
    batch_size=16,
)  # fmt: skip
SAME = ("rounds", "virtual_time", "bytes_sent", "messages_sent", "messages_rejected")


def _reported(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Params]:
    """Each peer's last reported model, captured unread (reading would flush early)."""
    last: dict[Any, Params] = {}
    on_round = run_module.RoundRecorder.on_round

    def capture(self: Any, peer: Any, round_: int, params: Params, time: float) -> None:
        last[peer] = params
        on_round(self, peer, round_, params, time)

    monkeypatch.setattr(run_module.RoundRecorder, "on_round", capture)
    return last


def _assert_runs_equal(
    expected: Any, actual: Any, expected_models: dict[Any, Params], models: dict[Any, Params]
) -> None:
    assert {k: actual.summary[k] for k in SAME} == {k: expected.summary[k] for k in SAME}
    timing = ("round", "time", "bytes_sent", "peers_reporting")
    assert [{k: line[k] for k in timing} for line in actual.metrics] == [
        {k: line[k] for k in timing} for line in expected.metrics
    ]
    assert models.keys() == expected_models.keys()
    for peer, want in expected_models.items():
        got = models[peer]
        assert list(got) == list(want)
        for name, value in want.items():
            ref = np.asarray(value, dtype=np.float64)
            diff = np.abs(np.asarray(got[name], dtype=np.float64) - ref)
            assert diff.max() <= 1e-4 * max(1.0, np.abs(ref).max()), (peer, name)


@pytest.mark.parametrize("name", sorted(PROTOCOL_RUNS))
def test_every_protocol_runs_batched_as_sequential(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RUN_BASE | PROTOCOL_RUNS[name]
    expected_models = _reported(monkeypatch)
    expected = simulate(make_config(**config, engine="sequential"))
    monkeypatch.undo()
    models = _reported(monkeypatch)
    actual = simulate(make_config(**config, engine="batched"))
    assert actual.config.engine == "batched"
    _assert_runs_equal(expected, actual, expected_models, models)


def test_push_one_gossip_batches_across_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deliveries no longer force training: jobs wait until a model is read (here, the
    # evaluations every 2 rounds), so a flush holds several rounds of every peer.
    pools: list[BatchedPool] = []

    def capture(learners: list[Learner], **options: Any) -> BatchedPool:
        pools.append(BatchedPool(learners, **options))
        return pools[-1]

    monkeypatch.setattr(run_module, "BatchedPool", capture)
    config = RUN_BASE | PROTOCOL_RUNS["gossip-push-one-mean"] | {"rounds": 6, "eval_every": 3}
    simulate(make_config(**config, engine="batched"))
    pool = pools[0]
    assert pool.jobs_run == config["peers"] * config["rounds"]
    assert pool.flushes <= 3  # the evaluation of rounds 3 and 6 (and whatever is left)


def test_a_model_rejected_when_decoded_late_reruns_the_run_decoding_on_arrival(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A learning rate that makes models overflow: their messages are rejected on arrival
    # (NonFiniteModel). Decoded late, the receiver already took one; the run is repeated
    # with every message decoded on arrival, and gives what the sequential engine gives.
    config = RUN_BASE | PROTOCOL_RUNS["gossip-push-one-mean"] | {"lr": 1e20}
    expected = simulate(make_config(**config, engine="sequential"))
    assert expected.summary["messages_rejected"].get("NonFiniteModel", 0) > 0
    actual = simulate(make_config(**config, engine="batched"))
    assert "decoded on arrival" in caplog.text
    assert {k: actual.summary[k] for k in SAME} == {k: expected.summary[k] for k in SAME}


def _late_decoding_simulator(spec: ModelSpec) -> Simulator:
    return Simulator(
        NetworkModel(NetworkSettings(), np.random.default_rng(0)),
        spec,
        SequentialPool([]),
        max_message_bytes=2**20,
        on_round=lambda *_: None,
        late_decoding=True,
    )


def test_a_late_model_no_peer_read_is_decoded_when_the_run_ends() -> None:
    # A model its receiver would reject on arrival (non-finite), handed over undecoded and
    # never read afterwards: the end of the run still decodes it, and finds it.
    values = {"w": np.array([1.0, np.nan, 3.0], dtype=np.float32)}
    spec = spec_of(values)
    message = ModelMessage(1, DeferredParams(lambda: values, spec), 10)
    sent = LateEncoding(message, encoded_model_size(1, 10, spec))
    simulator = _late_decoding_simulator(spec)
    received = late_model_message(sent, spec, max_bytes=2**20)
    assert received is not None
    simulator._remember_late(received)
    with pytest.raises(LateRejection, match="rejected"):
        simulator.decode_late()
    simulator.decode_late()  # once decoded, forgotten


def test_late_models_once_decoded_are_not_kept_by_the_simulator() -> None:
    # A decoded model keeps the bytes it was decoded from alive: the simulator's list of
    # models to check at the end must forget decoded ones soon, or a large run holds a
    # round's worth of message bytes per peer (1,000 CNN peers: 2.5 GB more in use).
    values = {"w": np.arange(3, dtype=np.float32)}
    spec = spec_of(values)
    simulator = _late_decoding_simulator(spec)
    waiting, longest = [], 0
    for i in range(2000):
        message = ModelMessage(1, DeferredParams(lambda: values, spec), 10)
        sent = LateEncoding(message, encoded_model_size(1, 10, spec))
        received = late_model_message(sent, spec, max_bytes=2**20)
        assert received is not None
        simulator._remember_late(received)
        if i % 4 == 0:
            waiting.append(received.params)  # never read: must be kept
        else:
            received.params.fill()
        longest = max(longest, len(simulator._late))
    assert longest <= len(waiting) + 257
    assert all(any(p is w for p in simulator._late) for w in waiting)
