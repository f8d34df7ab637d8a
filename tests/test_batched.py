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
from gossiplearn.learning.datasets import load_dataset
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


@pytest.mark.parametrize("model", [m for m in MODELS if m != "charlstm"])  # an LSTM: sequential
def test_every_registered_image_model_has_a_stacked_form(model: str) -> None:
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
    sequence of a real simulated run (including abandoned jobs). Each job's disagreement is
    recorded relative to the job's own update (see :func:`_disagreement`).
    """

    def __init__(self, learners: list[Learner]) -> None:
        self.batched = BatchedPool(learners)  # copies the learners' state before any training
        self.sequential = SequentialPool(learners)
        self.tickets: dict[int, int] = {}
        self.starts: dict[int, Params] = {}
        self.disagreements: list[float] = []
        self.most_pending = 0

    def samples_per_step(self, peer: int) -> int:
        assert self.batched.samples_per_step(peer) == self.sequential.samples_per_step(peer)
        return self.sequential.samples_per_step(peer)

    def submit(self, peer: int, params: Params, steps: int) -> int:
        ticket = self.sequential.submit(peer, params, steps)
        self.tickets[ticket] = self.batched.submit(peer, params, steps)
        self.starts[ticket] = params
        return ticket

    def result(self, ticket: int) -> Params | None:
        self.most_pending = max(self.most_pending, self.batched.pending)
        expected = self.sequential.result(ticket)
        return self._compare(ticket, expected, self.batched.result(self.tickets.pop(ticket)))

    def claim(self, ticket: int) -> Params | None:
        self.most_pending = max(self.most_pending, self.batched.pending)
        expected = self.sequential.claim(ticket)
        return self._compare(ticket, expected, self.batched.claim(self.tickets.pop(ticket)))

    def _compare(
        self, ticket: int, expected: Params | None, actual: Params | None
    ) -> Params | None:
        start = self.starts.pop(ticket)
        assert (expected is None) == (actual is None)  # the same jobs are abandoned
        if expected is not None and actual is not None:
            assert list(expected) == list(actual)
            self.disagreements.append(_disagreement(start, expected, actual))
        return expected


def _disagreement(start: Params, expected: Params, actual: Params) -> float:
    """How far two results of one job are apart, relative to how far the job moved."""

    def distance(a: Params, b: Params) -> float:
        return float(np.sqrt(sum(np.sum((np.float64(a[k]) - np.float64(b[k])) ** 2) for k in a)))

    return distance(expected, actual) / max(distance(start, expected), 1e-12)


SIM: dict[str, Any] = dict(
    peers=8, rounds=4, topology="regular:3", dataset="digits", batch_size=16, seed=5
)


@pytest.mark.parametrize("model", ["mlp", "cnn-bn"])
def test_a_simulated_runs_jobs_agree(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Over a run, the pools' results for a job are not equal to float32 rounding on every
    # CPU: their steps use different kernels (grouped convolutions, batched matmuls) whose
    # summation order depends on the instruction set, and a rounding difference that tips a
    # max-pool or ReLU comparison changes one step's gradient by more than rounding. That
    # peer's momentum then carries it into its later jobs (seen with ATEN_CPU_CAPABILITY=
    # default or AVX-512: a few jobs of one or two peers at 2e-2..2e-1 of their own update,
    # all others near 1e-6). So the bounds are relative to each job's own update:
    # - most jobs agree to float rounding (a median of 1e-4 is ~100x the rounding seen);
    #   a systematic error (a wrong step count, batch order or momentum) moves every job;
    # - no job is off by half its own update: a job run from the wrong state or on the
    #   wrong peer's data differs by about a whole update.
    # One job from identical state is compared tightly in test_batched_equals_sequential.
    twins: list[_Twin] = []

    def twin(learners: list[Learner]) -> _Twin:
        twins.append(_Twin(learners))
        return twins[-1]

    config = make_config(**SIM, model=model, weight_decay=1e-4, engine="sequential")
    monkeypatch.setattr(run_module, "SequentialPool", twin)
    simulate(config)
    disagreements = np.array(twins[0].disagreements)
    assert len(disagreements) >= config.peers * config.rounds
    assert np.median(disagreements) < 1e-4, np.sort(disagreements)
    assert disagreements.max() < 0.5, np.sort(disagreements)
    assert twins[0].most_pending > 1  # jobs were deferred and batched


def test_a_simulation_on_the_batched_pool_learns_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per job the pools agree to rounding (above), so the traffic of a run is identical;
    # over a run, training amplifies rounding differences (as changing torch's thread
    # count does), so the two runs are two samples of the same training. Their accuracies
    # then agree within the sampling error of an accuracy measured on the test set:
    # 3 standard errors, sqrt(p (1 - p) / n), about 0.055 on digits' 359 test images.
    config = make_config(**(SIM | {"rounds": 6}), model="cnn-bn", engine="sequential")
    expected = simulate(config)
    monkeypatch.setattr(run_module, "SequentialPool", BatchedPool)
    actual = simulate(config)
    tested = len(load_dataset(config.dataset).test_y)
    for line, other in zip(expected.metrics, actual.metrics, strict=True):
        assert line["round"] == other["round"]
        p = line["mean_accuracy"]
        assert other["mean_accuracy"] == pytest.approx(p, abs=3 * np.sqrt(p * (1 - p) / tested))
    same = {"rounds", "bytes_sent", "messages_sent", "messages_rejected", "train_samples"}
    assert {k: expected.summary[k] for k in same} == {k: actual.summary[k] for k in same}


def test_the_pool_keeps_its_tensors_on_the_device_it_is_given() -> None:
    batched = BatchedPool(_learners("cnn"), device="cpu")
    assert batched.device == torch.device("cpu") and batched._x.device == batched.device
    sequential = SequentialPool(_learners("cnn"))
    start = _learners("cnn")[1].params()
    _assert_same(sequential.result(sequential.submit(1, start, 3)),
                 batched.result(batched.submit(1, start, 3)))  # fmt: skip
