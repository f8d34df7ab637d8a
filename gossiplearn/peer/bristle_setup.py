"""Bristle on real peers: the shared frozen extractor, featurised data, stamped heads.

What a real Bristle peer adds to the simulator's recipe:

- *The same extractor everywhere.* Every peer loads the file given as
  ``--aggregator-param extractor=FILE``; without one, each pretrains the same extractor
  from the run's seed (the simulator's :func:`extractor_for_run`, cached per machine).
  ``gossiplearn launch`` resolves it once and hands every peer the file.
- *Featurised data.* The peer's shard and the test set go through the extractor once;
  the head trains on features, exactly as in the simulator; its validation set is drawn
  from its own data with its core's generator.
- *A fingerprint on every head.* Peers that ended up with different extractors (another
  file, another seed, pretraining that came out differently on another machine) would
  exchange heads of the right shape that mean nothing on each other's features. So every
  head carries the fingerprint of the extractor under it (a
  :class:`~gossiplearn.protocols.bristle_messages.StampedHead`), and a receiver rejects a
  head whose fingerprint is not its own, with a log line naming the sender and both
  fingerprints. It is a field the receiver checks, not part of the model protocol id,
  because only the receiver can then say what differs: a protocol id would make the two
  peers' streams fail to negotiate, which the sender sees as an unreachable peer and the
  receiver does not see at all. The rejection counts as a bad message, so a peer that
  keeps sending foreign heads is quarantined like any other.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from gossiplearn.config import LearningConfig, RunConfig
from gossiplearn.errors import ConfigError, WireError
from gossiplearn.learning.datasets import Dataset, load_dataset
from gossiplearn.learning.models import FrozenFeatureHead, build_model, split_extractor
from gossiplearn.learning.pretrain import (
    Transfer,
    extractor_for_run,
    save_extractor,
    transfer_setup,
)
from gossiplearn.protocols.bristle_messages import FINGERPRINT_CHARS, StampedHead
from gossiplearn.protocols.messages import Message, ModelMessage

log = logging.getLogger("gossiplearn.bristle")

#: The flag that gives every peer the same extractor (named in errors).
EXTRACTOR_FLAG = "--aggregator-param extractor=FILE"


class ExtractorMismatch(WireError):
    """A head was trained on another extractor than this peer's."""


def fingerprint(extractor: nn.Module) -> str:
    """A short fingerprint of an extractor: SHA-256 over its tensors' names, dtypes,
    shapes and little-endian bytes, truncated to 64 bits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(extractor.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{name}:{array.dtype.str}:{list(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


# ---- the extractor and the peer's data --------------------------------------------------


def peer_transfer(config: LearningConfig, model: str, data: Dataset) -> Transfer:
    """The run's extractor and the data its peers split: from the file in
    ``aggregator_params`` (ConfigError naming it if unusable), else pretrained from the
    seed (ConfigError naming the flag if the model has nothing to pretrain)."""
    path = config.aggregator_params.get("extractor")
    if path is None:
        check_pretrainable(model, data)
    extractor = extractor_for_run(
        data, model, config.seed, None if path is None else str(path), log.warning
    )
    return transfer_setup(extractor, data)


def check_pretrainable(model: str, data: Dataset) -> None:
    """ConfigError unless ``model`` has layers under its output layer to pretrain: a
    model without (logreg) would leave every peer an identity 'extractor'."""
    layers, _ = split_extractor(build_model(model, data.input_shape, data.num_classes, seed=0))
    if not any(True for _ in layers.parameters()):
        raise ConfigError(
            f"bristle: --model {model} has no layers under its output layer, so there is no "
            f"feature extractor to pretrain: choose a model with hidden layers (mlp, cnn, "
            f"cnn-bn, lenet5), or give every peer the same {EXTRACTOR_FLAG} "
            "(gossiplearn pretrain)"
        )


def shared_extractor(config: RunConfig, out: Path) -> RunConfig:
    """``config`` with every peer pointed at one extractor file: the one it names (checked
    here, before any peer starts), else one pretrained here (as the simulator would) and
    written to ``out/extractor.pt``, so the peers neither pretrain it N times nor race to
    cache it."""
    if config.aggregator != "bristle":
        return config
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    transfer = peer_transfer(config, config.model, data)
    if "extractor" in config.aggregator_params:
        return config
    path = out / "extractor.pt"
    save_extractor(transfer.extractor, path)
    params = config.aggregator_params | {"extractor": str(path.resolve())}
    return config.model_copy(update={"aggregator_params": params})


# ---- the peer's side ----------------------------------------------------------------------


class BristleAdapter:
    """What a :class:`~gossiplearn.peer.Peer` with aggregator bristle adds: inputs
    featurised once, the Bristle core, and heads stamped with (and checked against) the
    extractor's fingerprint."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, FrozenFeatureHead):
            raise ConfigError(
                "aggregator bristle trains a head on a frozen extractor: give the Peer a "
                "FrozenFeatureHead (gossiplearn.learning.pretrain.Transfer.model()), "
                f"not a {type(model).__name__}"
            )
        self.model = model
        self.fingerprint = fingerprint(model.extractor)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Extractor features of images (rank 4); features (rank 2) stay as they are."""
        return self.model.features(x) if x.ndim == 4 else x

    def stamp(self, message: Message) -> Message:
        """A head to send, stamped with this peer's extractor."""
        if isinstance(message, ModelMessage):
            return StampedHead.stamp(message, self.fingerprint)
        return message

    def check(self, sender: str, message: Message) -> ModelMessage:
        """The head in ``message`` for the core; ExtractorMismatch (a rejected message,
        logged with both fingerprints) unless it was trained on this peer's extractor."""
        if not isinstance(message, StampedHead):
            raise ExtractorMismatch(
                f"{type(message).__name__} carries no extractor fingerprint (a bristle peer "
                f"takes heads stamped with its extractor {self.fingerprint})"
            )
        if message.extractor != self.fingerprint:
            raise ExtractorMismatch(
                f"extractor mismatch: {sender} trains on extractor {message.extractor}, this "
                f"peer on {self.fingerprint}; its heads are not merged. Give every peer the "
                f"same {EXTRACTOR_FLAG} (or the same --seed, dataset and model)"
            )
        return message.model()
