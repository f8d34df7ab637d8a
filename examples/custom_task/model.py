"""A user's own model: any callable taking ``input_shape`` and ``num_classes`` and returning
a ``torch.nn.Module`` can be named on the command line as ``path/to/model.py:NAME``."""

import math

from torch import nn


def tabular_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small MLP for rows of standardised features."""
    features = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, 32),
        nn.Tanh(),
        nn.Linear(32, num_classes),
    )
