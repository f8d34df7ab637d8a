"""BatchedPool trains exactly the models SequentialPool trains, for the same submits."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gossiplearn.scenarios.run as run_module
from gossiplearn import make_config, simulate
from gossiplearn.errors import ModelError
from gossiplearn.learning.batched import BatchedPool, Engine
from gossiplearn.learning.models import MODELS, build_model
from gossiplearn.learning.pool import SequentialPool
from gossiplearn.learning.trainer import Learner
from gossiplearn.types import Params

SHAPE = (1, 8, 8)
SIZES = [45, 20, 7, 33, 64]  # unequal shards; 7 is smaller than the batch size
BATCH = 16


def _learners(
    model: str | nn.Module,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    sizes: list[int] = SIZES,
) -> list[Learner]:
    """Fresh learners; every call with the same arguments gives identical ones."""
    data = torch.Generator().manual_seed(0)
    learners = []
    for i, n in enumerate(sizes):
        x = torch.rand(n, *SHAPE, generator=data)
        y = torch.randint(0, 10, (n,), generator=data)
        net = build_model(model, SHAPE, 10, seed=i) if isinstance(model, str) else _fresh(model, i)
        learners.append(
            Learner(
                net, x, y, lr=0.05, momentum=momentum, weight_decay=weight_decay,
                batch_size=BATCH, seed=100 + i,
            )
        )  # fmt: skip
    return learners


def _fresh(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with weights initialised from ``seed`` alone."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                module.reset_parameters()
    return fresh


def _assert_same(expected: Params | None, actual: Params | None) -> None:
    assert (expected is None) == (actual is None)
    if expected is None or actual is None:
        return
    assert list(expected) == list(actual)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape
        np.testing.assert_allclose(
            np.asarray(actual[name], dtype=np.float64),
            np.asarray(value, dtype=np.float64),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )


def _drive(sequential: SequentialPool, batched: BatchedPool, rounds: int = 4) -> int:
    """Same submits to both pools, some peers submitting twice; compare every result."""
    rng = np.random.default_rng(0)
    peers = len(sequential.learners)
    params = [learner.params() for learner in sequential.learners]
    compared = 0
    for round_ in range(rounds):
        tickets = []
        for peer in range(peers):
            steps = int(rng.integers(0, 7))  # 0..6 steps: several epochs for small shards
            for _ in range(2 if (peer + round_) % 3 == 0 else 1):  # a second submit abandons
                seq_ticket = sequential.submit(peer, params[peer], steps)
                tickets.append((peer, seq_ticket, batched.submit(peer, params[peer], steps)))
                steps += 1
        rng.shuffle(tickets)  # results are read in any order
        for peer, seq_ticket, bat_ticket in tickets:
            expected, actual = sequential.result(seq_ticket), batched.result(bat_ticket)
            _assert_same(expected, actual)
            assert batched.result(bat_ticket) is None  # a result is handed out once
            if expected is not None:
                params[peer] = expected
                compared += 1
    return compared


CASES = [
    (model, engine)
    for model in ("logreg", "mlp", "cnn", "cnn-bn")
    for engine in ("stacked", "vmap")
    if not (model == "cnn-bn" and engine == "vmap")
]


@pytest.mark.parametrize(("model", "engine"), CASES)
@pytest.mark.parametrize("chunk_bytes", [1, 2**24], ids=["chunk1", "chunk-all"])
def test_batched_equals_sequential(model: str, engine: Engine, chunk_bytes: int) -> None:
    batched = BatchedPool.from_learners(_learners(model), engine=engine, chunk_bytes=chunk_bytes)
    assert batched.engine == engine
    assert _drive(SequentialPool(_learners(model)), batched) > 10


def test_plain_sgd_without_momentum_or_weight_decay() -> None:
    batched = BatchedPool(_learners("mlp", momentum=0.0, weight_decay=0.0))
    assert _drive(SequentialPool(_learners("mlp", momentum=0.0, weight_decay=0.0)), batched) > 10


def test_peers_with_different_sgd_settings() -> None:
    def mixed() -> list[Learner]:
        learners = _learners("cnn")
        for learner in learners[1::2]:
            learner.optimizer.param_groups[0].update(lr=0.1, momentum=0.0, weight_decay=0.0)
        return learners

    assert _drive(SequentialPool(mixed()), BatchedPool(mixed()), rounds=2) > 5


def test_state_carries_on_from_learners_that_already_trained() -> None:
    def trained() -> list[Learner]:
        learners = _learners("cnn")
        for learner in learners:
            learner.train(learner.params(), 5)  # momentum and a part-used epoch
        return learners

    assert _drive(SequentialPool(trained()), BatchedPool(trained()), rounds=2) > 5


def test_a_model_without_a_stacked_form_goes_through_vmap() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    batched = BatchedPool(_learners(model))
    assert batched.engine == "vmap"
    assert _drive(SequentialPool(_learners(model)), batched, rounds=2) > 5


def test_unsupported_model_with_buffers_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    with pytest.raises(ModelError, match="sequential engine"):
        BatchedPool(_learners(model))


def test_jobs_wait_until_a_live_result_is_needed() -> None:
    batched = BatchedPool(_learners("logreg"))
    params = [learner.params() for learner in _learners("logreg")]
    abandoned = batched.submit(0, params[0], 2)
    tickets = [batched.submit(peer, params[peer], 3) for peer in range(len(SIZES))]
    assert batched.result(abandoned) is None  # nothing needed it: nothing ran
    assert (batched.pending, batched.flushes) == (len(SIZES) + 1, 0)
    assert batched.result(tickets[3]) is not None
    assert (batched.pending, batched.flushes, batched.jobs_run) == (0, 1, len(SIZES) + 1)
    assert all(batched.result(ticket) is not None for ticket in tickets[:3])


@pytest.mark.parametrize("model", list(MODELS))
def test_every_registered_model_has_a_stacked_form(model: str) -> None:
    learners = [
        Learner(build_model(model, (1, 28, 28), 10, seed=i), torch.zeros(4, 1, 28, 28),
                torch.arange(4), lr=0.1, momentum=0.9, batch_size=2, seed=i)
        for i in range(2)
    ]  # fmt: skip
    assert BatchedPool(learners).engine == "stacked"


def test_samples_per_step_and_unknown_tickets() -> None:
    batched = BatchedPool(_learners("logreg"))
    assert [batched.samples_per_step(p) for p in range(len(SIZES))] == [16, 16, 7, 16, 16]
    assert batched.result(12345) is None
    ticket = batched.submit(0, _learners("logreg")[0].params(), 3)
    assert batched.result(ticket) is not None
    assert batched.result(ticket) is None


class _Twin:
    """A pool that gives every job to both pools and checks that their results agree.

    It hands the simulation SequentialPool's results, so both pools see exactly the submit
    sequence of a real simulated run (including abandoned jobs).
    """

    def __init__(self, learners: list[Learner]) -> None:
        self.batched = BatchedPool(learners)  # copies the learners' state before any training
        self.sequential = SequentialPool(learners)
        self.tickets: dict[int, int] = {}
        self.compared = 0
        self.most_pending = 0

    def samples_per_step(self, peer: int) -> int:
        assert self.batched.samples_per_step(peer) == self.sequential.samples_per_step(peer)
        return self.sequential.samples_per_step(peer)

    def submit(self, peer: int, params: Params, steps: int) -> int:
        ticket = self.sequential.submit(peer, params, steps)
        self.tickets[ticket] = self.batched.submit(peer, params, steps)
        return ticket

    def result(self, ticket: int) -> Params | None:
        self.most_pending = max(self.most_pending, self.batched.pending)
        expected = self.sequential.result(ticket)
        _assert_same(expected, self.batched.result(self.tickets.pop(ticket)))
        self.compared += expected is not None
        return expected

    def claim(self, ticket: int) -> Params | None:
        self.most_pending = max(self.most_pending, self.batched.pending)
        expected = self.sequential.claim(ticket)
        _assert_same(expected, self.batched.claim(self.tickets.pop(ticket)))
        self.compared += expected is not None
        return expected


SIM: dict[str, Any] = dict(
    peers=8, rounds=4, topology="regular:3", dataset="digits", batch_size=16, seed=5
)


@pytest.mark.parametrize("model", ["mlp", "cnn-bn"])
def test_a_simulated_runs_jobs_agree(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # run.py builds SequentialPool(learners); a pool taking the same argument slots in.
    twins: list[_Twin] = []

    def twin(learners: list[Learner]) -> _Twin:
        twins.append(_Twin(learners))
        return twins[-1]

    config = make_config(**SIM, model=model, weight_decay=1e-4)
    monkeypatch.setattr(run_module, "SequentialPool", twin)
    simulate(config)
    assert twins[0].compared >= config.peers * config.rounds
    assert twins[0].most_pending > 1  # jobs were deferred and batched


def test_a_simulation_on_the_batched_pool_learns_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per job the pools agree to ~1e-6 (above); over a run, training amplifies rounding
    # differences (as changing torch's thread count does), so compare loosely here.
    config = make_config(**(SIM | {"rounds": 6}), model="cnn-bn")
    expected = simulate(config)
    monkeypatch.setattr(run_module, "SequentialPool", BatchedPool)
    actual = simulate(config)
    for line, other in zip(expected.metrics, actual.metrics, strict=True):
        assert line["round"] == other["round"]
        assert line["mean_accuracy"] == pytest.approx(other["mean_accuracy"], abs=0.03)
    same = {"rounds", "bytes_sent", "messages_sent", "messages_rejected", "train_samples"}
    assert {k: expected.summary[k] for k in same} == {k: actual.summary[k] for k in same}
