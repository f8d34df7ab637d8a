"""Training pools: how a simulator gets many peers' local training done.

A pool takes training jobs (start params, steps) and hands back results by ticket. The
result of a job depends only on what was submitted, so a pool may run a job at once
(:class:`SequentialPool`) or defer all jobs until the first result is needed and then run
them together (a batched pool): both give the same models for the same seed.

Each peer has at most one job in flight; submitting again abandons the previous one.

A deferring pool goes further: :meth:`TrainingPool.claim` may hand back
:class:`DeferredParams`, a dict that runs the pending jobs only when it is first read. A
simulator that passes such results along unread (into messages whose size it knows from
the model's shape, into merges that are themselves deferred, into the next job) lets far
more jobs pile up before anything runs, with the same models in the end.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from gossiplearn.learning.trainer import Learner
from gossiplearn.protocols.messages import ModelSpec
from gossiplearn.types import Params

Ticket = int


class DeferredParams(Params):
    """Params computed on first use: a dict that fills itself from ``source`` when read.

    Every read or write of the dict (items, indexing, ``dict(x)``, ``len`` ...) fills it
    first, so code that takes :data:`Params` cannot tell the difference. ``spec`` (names,
    dtypes and shapes, in order) is known without filling, which is what the simulator
    needs to size a message.
    """

    __slots__ = ("_source", "inputs", "spec", "ticket")

    def __init__(
        self,
        source: Callable[[], Params],
        spec: ModelSpec,
        *,
        inputs: Sequence[Params] = (),
        ticket: Ticket | None = None,
    ) -> None:
        super().__init__()
        self._source: Callable[[], Params] | None = source
        self.spec = spec
        #: The deferred values ``source`` reads (kept until filled, so that a pool can
        #: order jobs that start from this value after the jobs it waits for).
        self.inputs: tuple[DeferredParams, ...] = tuple(
            p for p in inputs if isinstance(p, DeferredParams) and not p.ready
        )
        #: The training job whose result this is (None: computed from ``inputs``).
        self.ticket = ticket

    @property
    def ready(self) -> bool:
        return self._source is None

    def fill(self) -> None:
        """Compute the values now (once); a no-op when they are there."""
        source = self._source
        if source is None:
            return
        values = source()
        if self._source is not None:  # else the source provided them itself (a pool's flush)
            self.provide(values)

    def provide(self, values: Params) -> None:
        """Set the values (the source is dropped with what it holds)."""
        self._source = None
        self.inputs = ()
        dict.update(self, values)

    def waits_for(self) -> set[Ticket]:
        """The training jobs whose results this value needs, while it is not filled."""
        tickets: set[Ticket] = set()
        stack: list[DeferredParams] = [self]
        seen: set[int] = set()
        while stack:
            value = stack.pop()
            if value.ready or id(value) in seen:
                continue
            seen.add(id(value))
            if value.ticket is not None:
                tickets.add(value.ticket)
            else:
                stack.extend(value.inputs)
        return tickets

    def __copy__(self) -> Params:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> Params:
        return {name: value.copy() for name, value in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.copy(),))


def _filling(name: str) -> Callable[..., Any]:
    method = getattr(dict, name)

    def call(self: DeferredParams, *args: Any, **kwargs: Any) -> Any:
        self.fill()
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


# Overriding __iter__ also takes dict(x) and {**x} off CPython's fast path that reads the
# storage directly: they go through keys() and __getitem__, which fill first.
for _name in (
    "__getitem__", "__iter__", "__len__", "__contains__", "__repr__", "__eq__", "__ne__",
    "__or__", "__ror__", "__ior__", "__reversed__", "__setitem__", "__delitem__", "keys",
    "values", "items", "get", "pop", "popitem", "setdefault", "update", "clear", "copy",
):  # fmt: skip
    setattr(DeferredParams, _name, _filling(_name))


class TrainingPool(Protocol):
    def samples_per_step(self, peer: int) -> int:
        """Training samples one step of ``peer`` processes (for the compute-time model)."""
        ...

    def submit(self, peer: int, params: Params, steps: int) -> Ticket: ...

    def result(self, ticket: Ticket) -> Params | None:
        """The trained params, or None if the job was abandoned by a later submit."""
        ...

    def claim(self, ticket: Ticket) -> Params | None:
        """Like :meth:`result`, but the params may be :class:`DeferredParams`."""
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

    def claim(self, ticket: Ticket) -> Params | None:
        return self.result(ticket)

    def set_data(self, peer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        learner = self.learners[peer]
        learner.x, learner.y = x, y


Merge = Callable[[Params, Sequence[Params]], Params]


def deferring(merge: Merge) -> Merge:
    """``merge``, run when its result is first read if one of its inputs (the own model, or a
    received one whose decoding waits) is not computed yet.

    The merged model then goes on unread into the peer's next training job, so a pool that
    defers (see :class:`DeferredParams`) keeps collecting jobs. Merge rules are pure
    functions of their inputs, so running one later gives the same model.
    """

    def merge_when_read(own: Params, received: Sequence[Params]) -> Params:
        models = list(received)  # the caller clears its buffer after the call
        waiting = [p for p in (own, *models) if isinstance(p, DeferredParams) and not p.ready]
        if waiting:
            return DeferredParams(
                functools.partial(merge, own, models), waiting[0].spec, inputs=waiting
            )
        return merge(own, models)

    return merge_when_read
