"""Local training and evaluation of one model on one peer's data.

The protocol cores see models only as :data:`~gossiplearn.types.Params`; this module is
where they meet ``torch.nn.Module``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gossiplearn.types import Params

#: ``loss(outputs, targets)`` -> a scalar tensor to minimise.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def params_of(module: nn.Module) -> Params:
    """A copy of the module's state (parameters and buffers) as numpy arrays."""
    return {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}


def load_params(module: nn.Module, params: Params) -> None:
    """Copy ``params`` into the module in place (received arrays may be read-only)."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            tensor.copy_(torch.from_numpy(np.require(params[name], requirements="W")))


class Learner:
    """One peer's local learner: its model, its data and an SGD optimiser.

    The optimiser (and its momentum) persists across rounds, as on a real peer; batches
    are drawn epoch by epoch from a generator seeded for this peer alone. ``loss`` is
    minimised (default: cross-entropy).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        lr: float,
        momentum: float,
        weight_decay: float = 0.0,
        batch_size: int,
        seed: int,
        loss: Loss | None = None,
    ) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.batch_size = min(batch_size, len(x))
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.loss: Loss = loss if loss is not None else nn.CrossEntropyLoss()
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    @property
    def samples(self) -> int:
        return len(self.x)

    def steps_per_epoch(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def params(self) -> Params:
        return params_of(self.model)

    def _next_batch(self) -> torch.Tensor:
        if self._cursor >= len(self._order):
            self._order = torch.randperm(len(self.x), generator=self._generator)
            self._cursor = 0
        batch = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return batch

    def train(self, params: Params, steps: int) -> Params:
        """Run ``steps`` SGD steps starting from ``params``; return the trained params."""
        load_params(self.model, params)
        self.model.train()
        for _ in range(steps):
            batch = self._next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(self.x[batch]), self.y[batch]).backward()
            self.optimizer.step()
        return params_of(self.model)


#: Activation bytes of one evaluation batch (see :class:`Evaluator`).
EVAL_BATCH_BYTES = 8 * 2**20


def sample_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes one sample's input and layer outputs take in ``model`` (to size batches)."""
    total = sample[:1].numel()

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple) else (output,)  # an LSTM's (out, state)
        total += sum(t.numel() for t in outputs if isinstance(t, torch.Tensor))

    probe = copy.deepcopy(model).eval()
    for module in probe.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(count)
    with torch.no_grad():
        probe(torch.zeros_like(sample[:1]))
    return 4 * total


class Evaluator:
    """Accuracy of any params on a fixed test set, using one shared module.

    Image inputs and the module run channels-last, in batches whose activations take
    about :data:`EVAL_BATCH_BYTES`: on one CPU thread the small CNN then scores 500 images
    in about half the time it takes in NCHW batches of 2,048, LeNet-5 in about 15% more,
    the MLP in the same (``benchmarks/sim_throughput.py --only kernels``).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.batch_size = 2048
        # no test data, or a user's module that fails: evaluating will say so
        with contextlib.suppress(Exception):
            self.batch_size = max(16, min(2048, EVAL_BATCH_BYTES // sample_bytes(model, x)))
        if x.dim() == 4:
            # in place, as Module.to is; torch's type stubs omit memory_format
            self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.x = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict(self, params: Params) -> torch.Tensor:
        load_params(self.model, params)
        self.model.eval()
        chunks = [
            self.model(self.x[i : i + self.batch_size]).argmax(dim=1)
            for i in range(0, len(self.x), self.batch_size)
        ]
        return torch.cat(chunks)

    def accuracy(self, params: Params) -> float:
        return float((self.predict(params) == self.y).float().mean())
