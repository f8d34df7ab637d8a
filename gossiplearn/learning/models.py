"""Model architectures, built by name for a dataset's input shape and class count.

Adding a model is one builder function and one line in :data:`MODELS`. A user's own model
is named ``MODULE:CALLABLE`` or ``path/to/file.py:CALLABLE`` instead of a registry name:
the callable is called with the keyword arguments ``input_shape`` (a tuple, without the
batch dimension) and ``num_classes`` and returns a ``torch.nn.Module``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gossiplearn.errors import ModelError
from gossiplearn.learning.charmodels import charlstm
from gossiplearn.learning.plugins import call_user, is_plugin, load_callable

Shape = tuple[int, ...]


def _image(shape: Shape, model: str) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)``, or a ModelError saying the model needs images."""
    if len(shape) != 3:
        raise ModelError(
            f"{model} needs image inputs [C, H, W], got inputs of shape {shape}: use --model "
            "mlp or logreg for features, charlstm for text, or a model of your own"
        )
    return shape[0], shape[1], shape[2]


def logreg(shape: Shape, classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))


def mlp(shape: Shape, classes: int) -> nn.Module:
    """Two hidden ReLU layers (128, 64)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(shape), 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def _conv_stack(channels: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for cin, cout in ((channels, 16), (16, 32)):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return layers


def _cnn(shape: Shape, classes: int, batchnorm: bool) -> nn.Module:
    channels, height, width = _image(shape, "cnn")
    if height < 4 or width < 4:
        raise ModelError(f"cnn needs inputs of at least 4x4, got {height}x{width}")
    flat = 32 * (height // 4) * (width // 4)
    return nn.Sequential(
        *_conv_stack(channels, batchnorm),
        nn.Flatten(),
        nn.Linear(flat, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def cnn(shape: Shape, classes: int) -> nn.Module:
    """A small CNN (~100k parameters on 28x28): two conv+pool blocks, two linear layers."""
    return _cnn(shape, classes, batchnorm=False)


def cnn_bn(shape: Shape, classes: int) -> nn.Module:
    """:func:`cnn` with BatchNorm after each convolution (its running stats stay local)."""
    return _cnn(shape, classes, batchnorm=True)


def lenet5(shape: Shape, classes: int) -> nn.Module:
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for 28x28 or larger inputs."""
    channels, height, width = _image(shape, "lenet5")
    if height < 28 or width < 28:
        raise ModelError(
            f"lenet5 needs inputs of at least 28x28, got {height}x{width}: "
            "use --model mlp or --model cnn for this dataset"
        )
    flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, classes),
    )


MODELS: dict[str, Callable[[Shape, int], nn.Module]] = {
    "logreg": logreg,
    "mlp": mlp,
    "cnn": cnn,
    "cnn-bn": cnn_bn,
    "lenet5": lenet5,
    "charlstm": charlstm,
}


class FrozenFeatureHead(nn.Module):
    """A frozen, pretrained feature extractor under a trainable linear head (transfer
    learning, as Bristle uses it).

    Only the head is state: the extractor is held outside the module's registry, so
    ``state_dict()``, ``parameters()`` and therefore every message carry the head alone
    (:data:`HEAD_WEIGHT`, :data:`HEAD_BIAS`), and the head starts at 0. Inputs of rank 4
    are images, run through the extractor (in eval mode, without gradients); inputs of
    rank 2 are features computed beforehand with :meth:`features`, which is how training
    stays cheap: the extractor runs once per sample, not once per step.
    """

    def __init__(self, extractor: nn.Module, features: int, classes: int) -> None:
        super().__init__()
        extractor.eval()
        extractor.requires_grad_(False)
        # A tuple is not registered as a submodule: the extractor stays out of state_dict.
        self._frozen: tuple[nn.Module] = (extractor,)
        self.head = nn.Linear(features, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_features(self) -> int:
        return self.head.in_features

    @property
    def extractor(self) -> nn.Module:
        """The frozen layers under the head."""
        return self._frozen[0]

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The extractor's output [N, features] for images [N, C, H, W]."""
        extractor = self._frozen[0]
        chunks = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return torch.cat(chunks) if chunks else images.new_zeros((0, self.num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return self.head(x)
        return self.head(self.features(x))


#: Names of the head's tensors in a :class:`FrozenFeatureHead`'s params.
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"


def split_extractor(model: nn.Module) -> tuple[nn.Sequential, int]:
    """A sequential model without its output layer, and that layer's input width."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ModelError(
            f"a feature extractor needs a model ending in a linear layer, got {type(model)}"
        )
    return nn.Sequential(*list(model)[:-1]), int(model[-1].in_features)


def build_transfer_model(
    name: str, shape: Shape, classes: int, trained: dict[str, torch.Tensor]
) -> FrozenFeatureHead:
    """Model ``name`` with the weights of a pretrained one (``trained``, its state_dict),
    its output layer replaced by a zero head on top of the frozen rest."""
    model = build_model(name, shape, classes, seed=0)
    try:
        model.load_state_dict(trained)
    except RuntimeError as error:
        raise ModelError(
            f"the pretrained weights do not fit model {name!r} on inputs {shape}: {error}"
        ) from None
    extractor, features = split_extractor(model)
    return FrozenFeatureHead(extractor, features, classes)


def check_model_name(name: str) -> str:
    """``name`` if it is a registry model or names a callable; else a ModelError."""
    if name not in MODELS and not is_plugin(name):
        raise ModelError(
            f"unknown model {name!r}: choose one of {', '.join(MODELS)}, or name your own "
            "as MODULE:CALLABLE or path/to/file.py:CALLABLE"
        )
    return name


def build_model(name: str, shape: Shape, classes: int, *, seed: int) -> nn.Module:
    """Build model ``name`` (a registry name or a user's callable, see the module
    docstring) with weights initialised from ``seed`` alone.

    PyTorch's initialisers draw from the global generator, so it is forked and seeded
    here: the caller's global RNG state is left untouched and every seed gives one model.
    """
    check_model_name(name)
    user = load_callable(name, "--model", ModelError) if name not in MODELS else None
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed also queues a seed for every lazy
        # accelerator backend, with a stack trace each (a third of building 10,000 models).
        torch.default_generator.manual_seed(seed)
        if user is None:
            return MODELS[name](tuple(shape), classes)
        model = call_user(
            user, name, "--model", ModelError, input_shape=tuple(shape), num_classes=classes
        )
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"--model {name!r} returned a {type(model).__name__}: expected a torch.nn.Module"
        )
    return model


def check_model_fits(model: nn.Module, name: str, sample: torch.Tensor, classes: int) -> None:
    """One forward pass on one sample, so a model that cannot take the dataset's inputs,
    or gives other than one score per class, fails here with both named, not mid-run."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(sample[:1])
    except Exception as error:
        raise ModelError(
            f"--model {name!r} cannot take this dataset's inputs (one sample: shape "
            f"{tuple(sample.shape[1:])}, {sample.dtype}): {type(error).__name__}: {error}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"--model {name!r} gives {got} for one sample: expected one score per class, "
            f"shape (1, {classes})"
        )
