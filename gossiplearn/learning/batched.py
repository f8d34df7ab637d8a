"""Batched local training: many peers' SGD steps as one stacked computation.

How it works
------------
:class:`BatchedPool` is a :class:`~gossiplearn.learning.pool.TrainingPool` that defers
work: ``submit`` only records a job, and the first ``result`` of a job not yet run trains
every pending job. Pending jobs run in *waves*: a job runs in the wave after its peer's
previous pending job and after every pending job whose result its start params need (they
may be :class:`~gossiplearn.learning.pool.DeferredParams` of a merge with models other
peers sent; see ``DeferredParams.waits_for``). So each peer's jobs run in submit order,
every job's inputs exist when it runs, and an abandoned job still advances the peer's batch
sampler and momentum, exactly as in :class:`~gossiplearn.learning.pool.SequentialPool`,
which trains at submit. At most ``max_pending`` jobs (about 2 GiB of models) wait: a
submit beyond that runs them.

Within a wave, jobs are grouped by batch size and SGD settings, sorted by step count
(longest first) and cut into chunks of a bounded activation size. A chunk's params are
stacked into ``[P, ...]`` tensors; each step gathers every peer's own minibatch into one
``[P, B, ...]`` batch, computes the P losses and their gradients in one forward/backward
pass, and applies torch.optim.SGD's update (weight decay, momentum with dampening 0, no
nesterov) in place. Jobs with fewer steps drop out as a suffix, so the active peers are
always a prefix and every step works on views. A batch shorter than B (the end of an
epoch) is padded and masked out of the loss (and of BatchNorm's statistics).

Two engines compute a step:

* ``stacked`` (used when the model is an ``nn.Sequential`` of Conv2d, BatchNorm2d, ReLU,
  MaxPool2d, Flatten and Linear): convolutions become one grouped convolution over
  ``[B, P*C, H, W]`` in channels-last layout, BatchNorm treats the P*C channels as
  independent (which is exactly per-peer BatchNorm), linears become ``baddbmm``, and a
  ReLU followed by a max-pool is computed as pool-then-ReLU (equal values and gradients,
  4x less elementwise work). This is the fast path.
* ``vmap``: any buffer-free model through ``torch.func.functional_call`` + ``vmap`` over
  the peers, with autograd over the stacked params.

Invariant: the same submits in the same order give the same models as SequentialPool up
to float rounding (kernels sum in a different order), because each peer draws its batches
from a copy of its Learner's generator with the same ``randperm`` calls and cursor, and
keeps its own momentum buffers across jobs.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gossiplearn.errors import ModelError
from gossiplearn.learning.pool import DeferredParams, Ticket
from gossiplearn.learning.trainer import Evaluator, Learner, sample_bytes
from gossiplearn.protocols.messages import ModelSpec
from gossiplearn.types import Params

__all__ = ["BatchedPool", "Engine", "StackedEvaluator"]

Engine = Literal["auto", "stacked", "vmap"]

#: Default bound on one chunk's activations per step (bytes): small enough to stay near
#: the CPU caches, large enough that per-step Python overhead is negligible (measured in
#: benchmarks/sim_throughput.py).
DEFAULT_CHUNK_BYTES = 32 * 2**20

#: Bound on the models that pending jobs wait with (start params, results, messages): the
#: pool runs its jobs when more are pending than this many bytes of models (at least one
#: job per peer).
PENDING_BYTES = 2 * 2**30


# ------------------------------------------------------------------------ one training step


@dataclass
class _Step:
    """What one layer sees in one step: the k active peers' tensors and the batch mask."""

    params: dict[str, Tensor]  # autograd leaves [k, ...]
    buffers: dict[str, Tensor]  # views [k, ...] of the chunk's state, updated in place
    valid: Tensor | None  # [k, B] 1/0 mask when some batch is padded, else None
    training: bool = True  # False: BatchNorm uses (and keeps) its running statistics


_Layer = Callable[[Tensor, _Step], Tensor]


class _Net:
    """Computes the summed loss of k peers, each on its own batch."""

    def prepare(self, x: Tensor) -> Tensor:
        """The training images ``[N, C, H, W]`` in the layout :meth:`gather` reads."""
        raise NotImplementedError

    def gather(self, data: Tensor, index: Tensor) -> Tensor:
        """The input for batch rows ``index`` ``[k, B]``."""
        raise NotImplementedError

    def loss(self, step: _Step, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """Sum over peers of their sample-weighted cross-entropy (weight 1/L or 0)."""
        raise NotImplementedError


def _weighted_ce(logits: Tensor, y: Tensor, weight: Tensor) -> Tensor:
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    return torch.dot(ce, weight.reshape(-1))


class _StackedNet(_Net):
    """An ``nn.Sequential`` compiled to grouped / batched kernels over the stacked peers."""

    def __init__(self, layers: list[_Layer], flat_input: bool, entry: _Layer | None = None) -> None:
        self.layers = layers
        self.flat_input = flat_input
        #: The first layer computed for k models on one shared batch ``[B, ...]`` (each
        #: model's input would be the same rows): one matmul or convolution for all.
        self.entry = entry

    def prepare(self, x: Tensor) -> Tensor:
        # Flat: rows of features. Images: NHWC, so that a gather plus one transpose gives
        # the channels-last [B, H, W, P*C] layout grouped convolutions are fastest in.
        return x.reshape(len(x), -1) if self.flat_input else x.permute(0, 2, 3, 1).contiguous()

    def gather(self, data: Tensor, index: Tensor) -> Tensor:
        if self.flat_input:
            return data[index]
        k, b = index.shape
        _, h, w, c = data.shape
        # .contiguous(), not reshape: with C == 1 reshape returns a strided NCHW view.
        x = data[index.t()].permute(0, 2, 3, 1, 4).contiguous().view(b, h, w, k * c)
        return x.permute(0, 3, 1, 2)  # logical [B, k*C, H, W], channels-last in memory

    def loss(self, step: _Step, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        return _weighted_ce(self.logits(step, x), y, weight)

    def logits(self, step: _Step, x: Tensor) -> Tensor:
        """``[k, B, classes]`` for the gathered input of k peers."""
        for layer in self.layers:
            x = layer(x, step)
        return x

    def shared_logits(self, step: _Step, data: Tensor, rows: Tensor) -> Tensor:
        """``[k, B, classes]`` of k models that all see the prepared rows ``rows``."""
        k = next(iter(step.params.values())).shape[0]
        if self.entry is None:
            return self.logits(step, self.gather(data, rows.expand(k, -1)))
        x = data[rows]
        if not self.flat_input:
            x = x.permute(0, 3, 1, 2)  # [B, C, H, W], channels-last in memory
        x = self.entry(x, step)
        for layer in self.layers[1:]:
            x = layer(x, step)
        return x

    @classmethod
    def compile(cls, model: nn.Module) -> _StackedNet | None:
        """The stacked form of ``model``, or None if it uses a layer we do not translate."""
        if not isinstance(model, nn.Sequential) or len(model) == 0:
            return None
        modules = list(model.named_children())
        flat_input = isinstance(modules[0][1], nn.Flatten)
        if flat_input:
            modules = modules[1:]
        layers: list[_Layer] = []
        flat = flat_input
        i = 0
        while i < len(modules):
            name, module = modules[i]
            nxt = modules[i + 1][1] if i + 1 < len(modules) else None
            if isinstance(module, nn.ReLU) and not flat and isinstance(nxt, nn.MaxPool2d):
                # max(relu(x)) == relu(max(x)), gradients included (ties break alike).
                layers += [_maxpool(nxt), _relu]
                i += 2
                continue
            layer = _translate(name, module, flat)
            if layer is None:
                return None
            layers.append(layer)
            flat = flat or isinstance(module, nn.Flatten)
            i += 1
        if not flat:
            return None
        first = modules[0][1] if modules else None
        entry = None
        if isinstance(first, nn.Linear) and flat_input:
            entry = _shared_linear(modules[0][0])
        elif isinstance(first, nn.Conv2d) and first.groups == 1:
            entry = _shared_conv(modules[0][0], first)
        return cls(layers, flat_input, entry)


def _translate(name: str, module: nn.Module, flat: bool) -> _Layer | None:
    """One layer in stacked form, given whether activations are flat ``[k, B, F]``."""
    if isinstance(module, nn.ReLU):
        return _relu
    if isinstance(module, nn.Linear) and flat:
        return _linear(name)
    if flat:
        return None
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        return _conv(name, module)
    if isinstance(module, nn.MaxPool2d):
        return _maxpool(module)
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return _flatten
    if (
        isinstance(module, nn.BatchNorm2d)
        and module.affine
        and module.track_running_stats
        and module.momentum is not None
    ):
        return _batchnorm(name, module.momentum, module.eps)
    return None


def _relu(x: Tensor, step: _Step) -> Tensor:
    return F.relu(x)


def _flatten(x: Tensor, step: _Step) -> Tensor:
    # [B, k*C, H, W] -> [k, B, C*H*W], each sample flattened in PyTorch's (C, H, W) order.
    b, _, h, w = x.shape
    k = next(iter(step.params.values())).shape[0]
    return x.reshape(b, k, -1, h, w).transpose(0, 1).reshape(k, b, -1)


def _linear(name: str) -> _Layer:
    def linear(x: Tensor, step: _Step) -> Tensor:
        # (W xᵀ)ᵀ rather than x Wᵀ: the weight's gradient then comes out contiguous in the
        # weight's own [k, H, F] layout, which makes the SGD step a fast streaming add.
        weight, x_t = step.params[f"{name}.weight"], x.transpose(1, 2)
        bias = step.params.get(f"{name}.bias")
        if bias is None:
            return torch.bmm(weight, x_t).transpose(1, 2)
        return torch.baddbmm(bias[..., None], weight, x_t).transpose(1, 2)

    return linear


def _shared_linear(name: str) -> _Layer:
    """A linear layer of k models on one input ``[B, F]``: one ``[B, F] x [F, k*H]``."""

    def linear(x: Tensor, step: _Step) -> Tensor:
        weight = step.params[f"{name}.weight"]  # [k, H, F]
        k, h, _ = weight.shape
        out = (x @ weight.reshape(k * h, -1).t()).view(len(x), k, h).transpose(0, 1)
        bias = step.params.get(f"{name}.bias")
        return out if bias is None else out + bias[:, None]

    return linear


def _shared_conv(name: str, conv: nn.Conv2d) -> _Layer:
    """A convolution of k models on one input ``[B, C, H, W]``: one convolution with k
    times the output channels, in the ``[B, k*O, H, W]`` layout the grouped one gives."""
    return _conv(name, conv, shared_input=True)


def _conv(name: str, conv: nn.Conv2d, shared_input: bool = False) -> _Layer:
    def convolve(x: Tensor, step: _Step) -> Tensor:
        weight = step.params[f"{name}.weight"]
        bias = step.params.get(f"{name}.bias")
        return F.conv2d(
            x,
            weight.reshape(-1, *weight.shape[2:]),
            None if bias is None else bias.reshape(-1),
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups * (1 if shared_input else weight.shape[0]),
        )

    return convolve


def _maxpool(pool: nn.MaxPool2d) -> _Layer:
    def maxpool(x: Tensor, step: _Step) -> Tensor:
        return F.max_pool2d(
            x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode
        )

    return maxpool


def _batchnorm(name: str, momentum: float, eps: float) -> _Layer:
    def batchnorm(x: Tensor, step: _Step) -> Tensor:
        mean, var = step.buffers[f"{name}.running_mean"], step.buffers[f"{name}.running_var"]
        weight, bias = step.params[f"{name}.weight"], step.params[f"{name}.bias"]
        if not step.training:
            return F.batch_norm(
                x, mean.view(-1), var.view(-1), weight.reshape(-1), bias.reshape(-1),
                False, 0.0, eps,
            )  # fmt: skip
        step.buffers[f"{name}.num_batches_tracked"].add_(1)
        if step.valid is None:  # P*C independent channels == per-peer BatchNorm
            return F.batch_norm(
                x, mean.view(-1), var.view(-1), weight.reshape(-1), bias.reshape(-1),
                True, momentum, eps,
            )  # fmt: skip
        return _masked_batchnorm(x, step.valid, mean, var, weight, bias, momentum, eps)

    return batchnorm


def _masked_batchnorm(
    x: Tensor,
    valid: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    momentum: float,
    eps: float,
) -> Tensor:
    """Training-mode BatchNorm over ``[B, k*C, H, W]`` counting only the valid samples."""
    b, kc, h, w = x.shape
    channels = kc // valid.shape[0]
    mask = valid.t().repeat_interleave(channels, dim=1).view(b, kc, 1, 1)
    count = valid.sum(dim=1).repeat_interleave(channels) * (h * w)
    mean = (x * mask).sum(dim=(0, 2, 3)) / count
    centred = x - mean.view(1, kc, 1, 1)
    var = (centred.square() * mask).sum(dim=(0, 2, 3)) / count
    with torch.no_grad():
        running_mean.view(-1).mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.view(-1).mul_(1 - momentum).add_(var * count / (count - 1), alpha=momentum)
    scale = torch.rsqrt(var + eps) * weight.reshape(-1)
    return centred * scale.view(1, kc, 1, 1) + bias.reshape(1, kc, 1, 1)


class _VmapNet(_Net):
    """Any buffer-free model, vmapped over the peers with ``torch.func``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).train()

    def prepare(self, x: Tensor) -> Tensor:
        return x

    def gather(self, data: Tensor, index: Tensor) -> Tensor:
        return data[index]

    def loss(self, step: _Step, x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        def one(params: dict[str, Tensor], x: Tensor, y: Tensor, weight: Tensor) -> Tensor:
            return _weighted_ce(functional_call(self.model, params, (x,)), y, weight)

        losses: Tensor = vmap(one)(step.params, x, y, weight)
        return losses.sum()

    def probe(self, x: Tensor, y: Tensor) -> None:
        """One vmapped forward and backward pass of two peers on one sample: raises
        what ``torch.func`` raises for a model it cannot vmap."""
        params = {
            name: p.detach().unsqueeze(0).repeat(2, *([1] * p.ndim)).requires_grad_()
            for name, p in self.model.named_parameters()
        }
        xs = x[:1].unsqueeze(0).expand(2, 1, *x.shape[1:])  # [peers, batch, ...]
        ys = y[:1].unsqueeze(0).expand(2, 1)
        self.loss(_Step(params, {}, None), xs, ys, torch.ones(2, 1)).backward()


# -------------------------------------------------------------------------------- the pool


class _Sampler:
    """A peer's epoch-by-epoch batch order, continuing a Learner's exactly."""

    def __init__(self, learner: Learner) -> None:
        # The Learner keeps its sampler private; copy its state so the pool owns its own.
        self.size = len(learner.x)
        self.batch_size = learner.batch_size
        self.generator = torch.Generator()
        self.generator.set_state(learner._generator.get_state())
        self.order = learner._order.clone()
        self.cursor = learner._cursor

    def next(self) -> Tensor:
        """The next batch: same ``randperm`` calls and cursor as ``Learner._next_batch``."""
        if self.cursor >= len(self.order):
            self.order = torch.randperm(self.size, generator=self.generator)
            self.cursor = 0
        batch = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch


@dataclass(frozen=True)
class _Sgd:
    lr: float
    momentum: float
    weight_decay: float


@dataclass
class _Job:
    ticket: Ticket
    peer: int
    params: Params
    steps: int
    #: The wave it runs in: after the peer's earlier jobs and the jobs its params need.
    wave: int = 0


class BatchedPool:
    """Trains all pending jobs together, vmapped over the peers; same models as sequential.

    Built from the peers' :class:`Learner` objects (as :class:`SequentialPool` is), whose
    model architecture, data, SGD settings, momentum and batch generators it copies: the
    learners themselves are not used or changed afterwards.

    ``engine`` picks how a step is computed (see the module docstring); ``"auto"`` takes
    ``"stacked"`` when the model allows it. ``chunk_bytes`` bounds the activations of one
    chunk of peers per step.
    """

    def __init__(
        self,
        learners: Sequence[Learner],
        *,
        engine: Engine = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        device: torch.device | str = "cpu",
    ) -> None:
        if not learners:
            raise ValueError("BatchedPool needs at least one learner")
        template = learners[0].model
        self._state_spec = {k: (v.shape, v.dtype) for k, v in template.state_dict().items()}
        self._trainable = [name for name, _ in template.named_parameters()]
        self.net = _pick_engine(template, engine)
        self._sgd = [_sgd_of(learner) for learner in learners]
        self._samplers = [_Sampler(learner) for learner in learners]
        for i, learner in enumerate(learners):
            _check_like(template, learner, i)
        sizes = [len(learner.x) for learner in learners]
        self._offsets = [0, *itertools.accumulate(sizes)][:-1]
        #: Where the training data, stacked models and momentum live and steps run.
        self.device = torch.device(device)
        with torch.no_grad():
            # inputs keep their dtype: integer tokens feed an embedding as they are
            x = torch.cat([learner.x for learner in learners]).to(self.device)
            self._x = self.net.prepare(x)
        self._y = torch.cat([learner.y for learner in learners]).long().to(self.device)
        uses_momentum = any(sgd.momentum != 0 for sgd in self._sgd)
        self._momentum = {  # [peers, ...] per parameter, between jobs
            name: torch.stack([_momentum_of(learner, name) for learner in learners]).to(self.device)
            for name in (self._trainable if uses_momentum else [])
        }
        self._sample_bytes = sample_bytes(template, learners[0].x)
        self.chunk_bytes = chunk_bytes
        self._tickets = itertools.count(1)
        self._latest: dict[int, Ticket] = {}
        self._pending: list[_Job] = []
        self._pending_peer: dict[Ticket, int] = {}
        self._results: dict[Ticket, Params] = {}
        #: Jobs handed out as DeferredParams, which get their results when they run.
        self._claimed: dict[Ticket, DeferredParams] = {}
        #: Pending jobs: each one's wave, and each peer's last one.
        self._wave_of: dict[Ticket, int] = {}
        self._peer_last: dict[int, Ticket] = {}
        #: Pending jobs at most: a submit beyond runs them (bounds the models they hold).
        self.max_pending = max(len(learners), PENDING_BYTES // max(1, self._model_bytes()))
        self._flushing = False
        self._result_spec: ModelSpec = {
            name: (torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<").str, tuple(shape))
            for name, (shape, dtype) in self._state_spec.items()
        }
        #: Flushes so far and the jobs they ran: jobs per flush is the batching achieved.
        self.flushes = 0
        self.jobs_run = 0

    @classmethod
    def from_learners(
        cls,
        learners: Sequence[Learner],
        *,
        engine: Engine = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        device: torch.device | str = "cpu",
    ) -> BatchedPool:
        """Same as the constructor; reads as what it does at call sites."""
        return cls(learners, engine=engine, chunk_bytes=chunk_bytes, device=device)

    @property
    def engine(self) -> Literal["stacked", "vmap"]:
        return "stacked" if isinstance(self.net, _StackedNet) else "vmap"

    def _model_bytes(self) -> int:
        """Bytes of one model's state (a job holds a few: start, result, messages)."""
        itemsize = {
            name: torch.empty(0, dtype=dtype).element_size()
            for name, (_, dtype) in self._state_spec.items()
        }
        return 4 * sum(
            math.prod(shape) * itemsize[name] for name, (shape, _) in self._state_spec.items()
        )

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet run."""
        return len(self._pending)

    def samples_per_step(self, peer: int) -> int:
        return self._samplers[peer].batch_size

    def submit(self, peer: int, params: Params, steps: int) -> Ticket:
        if len(self._pending) >= self.max_pending:
            self.flush()  # bounds the models held by jobs waiting to run
        ticket = next(self._tickets)
        self._results.pop(self._latest.get(peer, 0), None)
        self._latest[peer] = ticket
        wave = self._wave_of.get(self._peer_last.get(peer, 0), -1) + 1
        if isinstance(params, DeferredParams):
            for needed in params.waits_for():
                wave = max(wave, self._wave_of.get(needed, -1) + 1)
        self._pending.append(_Job(ticket, peer, params, steps, wave))
        self._pending_peer[ticket] = peer
        self._peer_last[peer] = ticket
        self._wave_of[ticket] = wave
        return ticket

    def set_data(self, peer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Give ``peer`` new training data of the same size (an attack switching on or
        off); jobs submitted before train on the old data."""
        offset, size = self._offsets[peer], self._samplers[peer].size
        if len(x) != size or len(y) != size:
            raise ValueError(f"peer {peer}: new data must keep its {size} samples")
        self.flush()
        with torch.no_grad():
            self._x[offset : offset + size] = self.net.prepare(x.float().to(self.device))
        self._y[offset : offset + size] = y.long().to(self.device)

    def result(self, ticket: Ticket) -> Params | None:
        peer = self._pending_peer.get(ticket)
        if peer is not None and self._latest[peer] == ticket:  # abandoned jobs can wait
            self.flush()
        return self._results.pop(ticket, None)

    def claim(self, ticket: Ticket) -> Params | None:
        """The job's trained params as :class:`DeferredParams`: nothing runs until they
        are first read, and then every pending job runs. None if the job was abandoned."""
        if ticket in self._results:
            return self._results.pop(ticket)
        peer = self._pending_peer.get(ticket)
        if peer is None or self._latest[peer] != ticket:
            return None
        deferred = DeferredParams(
            functools.partial(self._run_for, ticket), self._result_spec, ticket=ticket
        )
        self._claimed[ticket] = deferred
        return deferred

    def _run_for(self, ticket: Ticket) -> Params:
        """Flush for a claimed job (which provides its DeferredParams with the values)."""
        if self._flushing:  # a job's start params need a job of the same flush
            raise RuntimeError(f"training job {ticket} is read before it has run")
        self.flush()
        if ticket in self._claimed:
            raise RuntimeError(f"training job {ticket} did not run")
        return {}  # ignored: the DeferredParams already has its values

    def flush(self) -> None:
        """Run every pending job now, each peer's jobs in submit order.

        A job's start params may be DeferredParams that need other pending jobs' results
        (its own peer's last result, a deferred merge of it with models other peers sent):
        those jobs run in earlier waves, so the params fill from their results.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_peer.clear()
        self._peer_last.clear()
        self._wave_of.clear()
        self.flushes += 1
        self.jobs_run += len(pending)
        waves: list[list[_Job]] = [[] for _ in range(1 + max(job.wave for job in pending))]
        for job in pending:
            waves[job.wave].append(job)
        self._flushing = True
        try:
            with torch.enable_grad():  # a read under no_grad (an evaluation) may flush
                for wave in waves:
                    self._run_wave(wave)
        finally:
            self._flushing = False

    def _run_wave(self, wave: list[_Job]) -> None:
        groups: dict[tuple[int, _Sgd], list[_Job]] = {}
        for job in wave:
            key = (self._samplers[job.peer].batch_size, self._sgd[job.peer])
            groups.setdefault(key, []).append(job)
        for (batch_size, sgd), jobs in groups.items():
            jobs.sort(key=lambda job: -job.steps)  # stable: ties keep submit order
            per_chunk = max(1, self.chunk_bytes // (batch_size * self._sample_bytes))
            chunks = math.ceil(len(jobs) / per_chunk)
            size = math.ceil(len(jobs) / chunks)
            for start in range(0, len(jobs), size):
                self._run_chunk(jobs[start : start + size], batch_size, sgd)

    def _run_chunk(self, jobs: list[_Job], batch: int, sgd: _Sgd) -> None:
        """Train ``jobs`` (distinct peers, sorted by steps, longest first) together."""
        device = self.device
        peers = torch.tensor([job.peer for job in jobs], device=device)
        state = {
            name: torch.from_numpy(np.stack([job.params[name] for job in jobs])).to(device, dtype)
            for name, (_, dtype) in self._state_spec.items()
        }
        momentum = {name: buf[peers] for name, buf in self._momentum.items() if sgd.momentum}
        index, weight, padded = self._batches(jobs, batch)
        index, weight = index.to(device), weight.to(device)
        buffer_names = [name for name in state if name not in self._trainable]
        active = np.searchsorted(-np.array([job.steps for job in jobs]), -np.arange(len(index)))
        for s, k in enumerate(active.tolist()):  # jobs[:k] have more than s steps
            leaves = [state[name][:k].detach().requires_grad_() for name in self._trainable]
            step = _Step(
                dict(zip(self._trainable, leaves, strict=True)),
                {name: state[name][:k] for name in buffer_names},
                (weight[s, :k] > 0).float() if padded[s] else None,
            )
            rows = index[s, :k]
            loss = self.net.loss(step, self.net.gather(self._x, rows), self._y[rows], weight[s, :k])
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                _sgd_step(
                    [state[name][:k] for name in self._trainable],
                    list(grads),
                    [buf[:k] for buf in momentum.values()],
                    sgd,
                )
        for name, buf in momentum.items():
            self._momentum[name][peers] = buf
        host = {name: t.cpu().numpy() for name, t in state.items()}
        for i, job in enumerate(jobs):
            claimed = self._claimed.pop(job.ticket, None)
            if claimed is None and self._latest[job.peer] != job.ticket:
                continue  # abandoned: the peer's sampler and momentum advanced only
            trained = {name: t[i].copy() for name, t in host.items()}
            if claimed is None:
                self._results[job.ticket] = trained
            else:
                claimed.provide(trained)

    def _batches(self, jobs: list[_Job], batch: int) -> tuple[Tensor, Tensor, list[bool]]:
        """Data rows ``[S, P, B]``, loss weights ``[S, P, B]`` and which steps are padded.

        A short batch is padded with its peer's first row and weight 0; weight 1/L makes
        each peer's loss the mean over its L samples, as ``CrossEntropyLoss`` computes.
        """
        steps = jobs[0].steps if jobs else 0
        index = np.zeros((steps, len(jobs), batch), dtype=np.int64)
        weight = np.zeros((steps, len(jobs), batch), dtype=np.float32)
        padded = [False] * steps
        for j, job in enumerate(jobs):
            sampler, offset = self._samplers[job.peer], self._offsets[job.peer]
            index[:, j] = offset
            for s in range(job.steps):
                rows = sampler.next().numpy()
                index[s, j, : len(rows)] += rows
                weight[s, j, : len(rows)] = 1.0 / len(rows)
                padded[s] = padded[s] or len(rows) < batch
        return torch.from_numpy(index), torch.from_numpy(weight), padded


def _sgd_step(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], sgd: _Sgd) -> None:
    """torch.optim.SGD's update (dampening 0, no nesterov), op for op, on every tensor.

    A zero buffer makes the first step ``buf = grad`` exactly, as SGD's clone does.
    """
    if sgd.weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=sgd.weight_decay))
    if sgd.momentum != 0:
        torch._foreach_mul_(bufs, sgd.momentum)
        torch._foreach_add_(bufs, grads)
        grads = bufs
    torch._foreach_add_(params, grads, alpha=-sgd.lr)


def batched_problem(learner: Learner) -> str | None:
    """Why the batched engine cannot train ``learner``'s model and settings, or None."""
    try:
        net = _pick_engine(learner.model, "auto")
        _sgd_of(learner)
        if isinstance(net, _VmapNet):
            net.probe(learner.x, learner.y)
    except (ModelError, ValueError) as error:
        return str(error)
    except Exception as error:  # torch.func has no batching rule for some layer
        name = type(learner.model).__name__
        return f"torch.func cannot vmap {name} ({type(error).__name__}: {error})"
    return None


def _pick_engine(model: nn.Module, engine: Engine) -> _Net:
    if engine in ("auto", "stacked"):
        stacked = _StackedNet.compile(model)
        if stacked is not None:
            return stacked
        if engine == "stacked":
            raise ModelError(f"model {type(model).__name__} has layers the stacked engine lacks")
    if any(True for _ in model.buffers()):
        raise ModelError(
            "the batched engine trains models with buffers (BatchNorm) only when they are an "
            "nn.Sequential of Conv2d/BatchNorm2d/ReLU/MaxPool2d/Flatten/Linear: "
            "use the sequential engine for this model"
        )
    return _VmapNet(model)


def _sgd_of(learner: Learner) -> _Sgd:
    group = learner.optimizer.param_groups[0]
    if group["dampening"] != 0 or group["nesterov"] or group.get("maximize", False):
        raise ValueError("BatchedPool supports SGD without dampening, nesterov or maximize")
    loss = learner.loss
    if not isinstance(loss, nn.CrossEntropyLoss) or loss.reduction != "mean":
        raise ValueError("BatchedPool supports the mean cross-entropy loss only")
    if loss.weight is not None or loss.label_smoothing != 0:
        raise ValueError("BatchedPool supports an unweighted, unsmoothed cross-entropy only")
    return _Sgd(float(group["lr"]), float(group["momentum"]), float(group["weight_decay"]))


def _momentum_of(learner: Learner, name: str) -> Tensor:
    """The learner's momentum buffer for parameter ``name`` (zeros if it has none yet)."""
    param = dict(learner.model.named_parameters())[name]
    buf = learner.optimizer.state.get(param, {}).get("momentum_buffer")
    return torch.zeros_like(param.detach()) if buf is None else buf.detach().clone()


def _check_like(template: nn.Module, learner: Learner, peer: int) -> None:
    mine = {k: (v.shape, v.dtype) for k, v in learner.model.state_dict().items()}
    theirs = {k: (v.shape, v.dtype) for k, v in template.state_dict().items()}
    if mine != theirs:
        raise ModelError(f"peer {peer}'s model differs from peer 0's: BatchedPool needs one")


# ------------------------------------------------------------------------------ evaluation


class StackedEvaluator(Evaluator):
    """An :class:`Evaluator` that also scores many models at once, stacked like training.

    :meth:`accuracies` runs chunks of models through the stacked form of the model (each
    model sees every test sample; BatchNorm in eval mode), so the same predictions come out
    as from :meth:`Evaluator.accuracy` one model at a time, up to float rounding.
    Models without a stacked form are scored one by one.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int = 256,
        chunk_bytes: int = 8 * DEFAULT_CHUNK_BYTES,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(model, x, y)
        self.device = torch.device(device)
        self.net = _StackedNet.compile(model)
        self.stacked_batch_size = batch_size
        self.names = list(model.state_dict())
        self._trainable = {name for name, _ in model.named_parameters()}
        self.per_chunk = max(1, chunk_bytes // (min(batch_size, len(x)) * sample_bytes(model, x)))
        with torch.no_grad():
            self._data = None if self.net is None else self.net.prepare(x.float().to(self.device))
        self._labels = y.to(self.device)

    @torch.no_grad()
    def accuracies(self, models: Sequence[Params]) -> list[float]:
        """The accuracy of each model on the test set, in order."""
        if self.net is None or self._data is None:
            return [self.accuracy(params) for params in models]
        scores: list[float] = []
        for start in range(0, len(models), self.per_chunk):
            scores += self._chunk(self.net, self._data, models[start : start + self.per_chunk])
        return scores

    def _chunk(self, net: _StackedNet, data: Tensor, models: Sequence[Params]) -> list[float]:
        state = {
            name: torch.from_numpy(np.stack([np.asarray(m[name]) for m in models])).to(self.device)
            for name in self.names
        }
        step = _Step(
            {name: t.float() for name, t in state.items() if name in self._trainable},
            {name: t for name, t in state.items() if name not in self._trainable},
            None,
            training=False,
        )
        correct = torch.zeros(len(models), dtype=torch.long, device=self.device)
        for start in range(0, len(self.y), self.stacked_batch_size):
            rows = torch.arange(
                start, min(start + self.stacked_batch_size, len(self.y)), device=self.device
            )
            logits = net.shared_logits(step, data, rows)
            correct += (logits.argmax(dim=-1) == self._labels[rows]).sum(dim=1)
        return (correct.double() / len(self.y)).tolist()
