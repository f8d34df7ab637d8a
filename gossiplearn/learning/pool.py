"""Training pools: how a simulator gets many peers' local training done.

A pool takes training jobs (start params, steps) and hands back results by ticket. The
result of a job depends only on what was submitted, so a pool may run a job at once
(:class:`SequentialPool`) or defer all jobs until the first result is needed and then run
them together (a batched pool): both give the same models for the same seed.

Each peer has at most one job in flight; submitting again abandons the previous one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

import torch

from gossiplearn.learning.trainer import Learner
from gossiplearn.types import Params

Ticket = int


class TrainingPool(Protocol):
    def samples_per_step(self, peer: int) -> int:
        """Training samples one step of ``peer`` processes (for the compute-time model)."""
        ...

    def submit(self, peer: int, params: Params, steps: int) -> Ticket: ...

    def result(self, ticket: Ticket) -> Params | None:
        """The trained params, or None if the job was abandoned by a later submit."""
        ...

    def set_data(self, peer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Replace ``peer``'s training data (same number of samples) for later jobs."""
        ...


class SequentialPool:
    """Trains each job at once, one peer after another, with the peers' own Learners."""

    def __init__(self, learners: Sequence[Learner]) -> None:
        self.learners = list(learners)
        self._tickets = itertools.count(1)
        self._latest: dict[int, Ticket] = {}
        self._results: dict[Ticket, Params] = {}

    def samples_per_step(self, peer: int) -> int:
        return self.learners[peer].batch_size

    def submit(self, peer: int, params: Params, steps: int) -> Ticket:
        ticket = next(self._tickets)
        self._results.pop(self._latest.get(peer, 0), None)
        self._latest[peer] = ticket
        self._results[ticket] = self.learners[peer].train(params, steps)
        return ticket

    def result(self, ticket: Ticket) -> Params | None:
        return self._results.pop(ticket, None)

    def set_data(self, peer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        learner = self.learners[peer]
        learner.x, learner.y = x, y
