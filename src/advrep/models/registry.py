"""The model registry (timm-like), the in-model input normalisation and the wrappers every model is returned in.

Conventions shared by every model of the zoo:

* Inputs are images (or flat vectors for ``mlp``) with values in [0, 1]; shape ``(B, *in_shape)``.
* The normalisation is part of the model: :func:`create_model` returns a :class:`NormalizedModel` whose first child
  is ``.normalize`` (a :class:`Normalize` with ``mean``/``std`` buffers, a :class:`PerImageStandardization`, or
  ``nn.Identity`` for ``"none"``) followed by ``.core`` (the architecture proper).  Attacks can therefore work in
  [0, 1] input space and never see the normalisation.
* ``normalization=`` picks it: a key of :data:`DATASET_STATS`, ``"per_image"`` (TensorFlow's
  ``per_image_standardization``, used by Madry's CIFAR-10 model), ``"auto"`` (by channel count: 1 -> ``mnist``,
  3 -> ``cifar10``, flat inputs -> ``none``), an explicit ``(mean, std)`` pair, or ``None`` for the model's own
  default (``"auto"`` for every model except ``madry_cifar_wrn``, whose default is ``"per_image"`` because that
  standardisation is part of Madry's model graph, and ``mlp``, whose default is ``"none"``).
* ``width=`` is the model's size knob (its meaning is per model and stated in :func:`list_models` /
  ``model_info(name).width_doc``); ``width="tiny"`` gives the smoke-scale setting and ``width=None`` the published one.
* ``seed=`` builds the weights under ``torch.manual_seed(seed)`` inside a forked RNG, so the same seed gives identical
  weights and the caller's global RNG state is left untouched.

Dataset statistics (``DATASET_STATS``; per-channel mean and standard deviation of the *training* split, pixels
scaled to [0, 1], std over all pixels with ddof 0):

* ``mnist``: (0.1307,), (0.3081,) -- the values used by the PyTorch MNIST example and most MNIST code.
* ``fashion_mnist``: (0.2860,), (0.3530,) -- checked in ``tests/test_models.py`` against Debian's Fashion-MNIST copy
  (0.286041, 0.353024) when those files are installed.
* ``cifar10``: (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616) -- the true per-channel pixel std.  The often
  copied (0.2023, 0.1994, 0.2010) is *not* the pixel std (it is the std of per-image means) and is not used here.
* ``cifar100``: (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762).
* ``digits28`` / ``digits32``: computed here from :func:`advrep.data.synthetic.make_digits` (train split of 1347
  images): 28x28x1 mean 0.305283, std 0.324511; 32x32x3 (grey replicated) mean 0.305275, std 0.323446 per channel.
  Rounded to 4 decimals; ``tests/test_models.py`` recomputes them.
* ``fashion28`` / ``fashion32``: the Fashion-MNIST stand-ins (:mod:`advrep.data.standins`), statistics of the whole
  Fashion-MNIST training split as the stand-in shows it (not of the configured subset, so they do not move with
  ``data.standins``): 28x28x1 those of ``fashion_mnist``; zero-padded to 32x32 mean 0.219000, std 0.331811 per
  channel.  ``tests/test_standins.py`` recomputes them from Debian's copy when it is installed.
* ``none``: no normalisation (``nn.Identity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

# (mean, std) per channel, or None for identity.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "digits28": ((0.3053,), (0.3245,)),
    "digits32": ((0.3053, 0.3053, 0.3053), (0.3234, 0.3234, 0.3234)),
    "fashion28": ((0.2860,), (0.3530,)),
    "fashion32": ((0.2190, 0.2190, 0.2190), (0.3318, 0.3318, 0.3318)),
    "none": None,
}

#: Normalisation names accepted besides the keys of DATASET_STATS.
SPECIAL_NORMALIZATIONS = ("auto", "per_image")


# ------------------------------------------------------------------------------------------------ normalisation

class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with ``mean``/``std`` stored as buffers (so they travel with the
    state dict and the device).  Same maths as ``torchvision.transforms.Normalize`` applied to a batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        # validated as Python floats, so that building under ``torch.device("meta")`` works too
        mean_l = [float(v) for v in torch.as_tensor(mean, device="cpu").flatten()]
        std_l = [float(v) for v in torch.as_tensor(std, device="cpu").flatten()]
        if len(mean_l) != len(std_l) or not mean_l:
            raise ValueError(f"mean and std must have the same non-zero length, got {len(mean_l)} and {len(std_l)}")
        if not all(v > 0 for v in std_l):
            raise ValueError(f"std must be positive, got {std_l}")
        self.register_buffer("mean", torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Normalize expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return (f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, "
                f"std={[round(v, 4) for v in self.std.flatten().tolist()]}")


class PerImageStandardization(nn.Module):
    """TensorFlow's ``tf.image.per_image_standardization`` on ``input_scale * x``: each image is shifted by its own
    mean and divided by ``max(stddev, 1/sqrt(num_elements))`` (population std over all pixels and channels).

    Madry's CIFAR-10 model feeds raw pixel values 0..255 to it (MadryLab/cifar10_challenge ``model.py`` line 40;
    ``cifar10_input.py`` line 157 casts uint8 pixels to float32), so ``input_scale=255`` reproduces that graph
    exactly for [0, 1] inputs (the scale only matters where the 1/sqrt(N) floor binds)."""

    def __init__(self, input_scale: float = 255.0):
        super().__init__()
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x * self.input_scale
        flat = z.flatten(1)
        mean = flat.mean(1)
        std = flat.std(1, unbiased=False)
        floor = 1.0 / math.sqrt(flat.shape[1])
        adjusted = torch.clamp(std, min=floor)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (z - mean.view(shape)) / adjusted.view(shape)

    def extra_repr(self) -> str:
        return f"input_scale={self.input_scale}"


def resolve_normalization(normalization, in_shape: Sequence[int]) -> str | tuple:
    """The concrete normalisation for ``in_shape``: a DATASET_STATS key, ``"per_image"`` or a (mean, std) pair."""
    if isinstance(normalization, str):
        if normalization == "auto":
            if len(in_shape) != 3:
                return "none"
            c = in_shape[0]
            if c == 1:
                return "mnist"
            if c == 3:
                return "cifar10"
            raise ValueError(f"normalization='auto' knows 1- and 3-channel inputs only, got in_shape={in_shape}; "
                             "pass normalization='none' or an explicit (mean, std)")
        if normalization != "per_image" and normalization not in DATASET_STATS:
            raise ValueError(f"unknown normalization {normalization!r}; known: "
                             f"{', '.join([*DATASET_STATS, *SPECIAL_NORMALIZATIONS])} or a (mean, std) pair")
        return normalization
    if isinstance(normalization, (tuple, list)) and len(normalization) == 2:
        return (tuple(float(v) for v in normalization[0]), tuple(float(v) for v in normalization[1]))
    raise TypeError(f"normalization must be a name or a (mean, std) pair, got {normalization!r}")


def make_normalization(normalization, in_shape: Sequence[int]) -> nn.Module:
    """Build the first layer for ``in_shape`` (``normalization`` as accepted by :func:`resolve_normalization`)."""
    spec = resolve_normalization(normalization, in_shape)
    if spec == "none":
        return nn.Identity()
    if len(in_shape) != 3:
        raise ValueError(f"normalization {spec!r} needs image inputs (C, H, W), got in_shape={tuple(in_shape)}")
    if spec == "per_image":
        return PerImageStandardization()
    mean, std = DATASET_STATS[spec] if isinstance(spec, str) else spec
    if len(mean) != in_shape[0]:
        raise ValueError(f"normalization {spec!r} has {len(mean)} channel(s) but in_shape={tuple(in_shape)} has "
                         f"{in_shape[0]}")
    return Normalize(mean, std)


# ----------------------------------------------------------------------------------------------------- wrappers

class NormalizedModel(nn.Module):
    """``core(normalize(x))``; ``normalize`` is the first child.  Inputs in [0, 1]."""

    def __init__(self, normalize: nn.Module, core: nn.Module, *, name: str, in_shape: tuple, num_classes,
                 normalization, width):
        super().__init__()
        self.normalize = normalize
        self.core = core
        self.name = name
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        self.normalization = normalization
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(self.normalize(x))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_shape={self.in_shape}, normalization={self.normalization!r}"


class EncoderModel(NormalizedModel):
    """A :class:`NormalizedModel` whose ``forward`` returns features (``feature_dim`` wide).  ``.head`` (the
    projection head used only by the contrastive loss) is the core's ``head``; :meth:`project` applies it."""

    @property
    def head(self) -> nn.Module:
        return self.core.head

    @property
    def feature_dim(self) -> int:
        return self.core.feature_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


class LinearProbe(nn.Module):
    """A classifier from an encoder: ``fc(encoder(x))`` with the encoder frozen (``requires_grad=False`` and kept in
    eval mode even when the probe is put in train mode).  Inputs in [0, 1] (the encoder normalises); gradients
    with respect to the input still flow through the encoder, so attacks work on it like on any classifier."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, freeze: bool = True):
        super().__init__()
        if not hasattr(encoder, "feature_dim"):
            raise TypeError("LinearProbe needs an encoder with a .feature_dim (e.g. create_model('resnet18_encoder'))")
        _check_num_classes(num_classes)
        self.encoder = encoder
        self.fc = nn.Linear(int(encoder.feature_dim), int(num_classes))
        self.freeze = bool(freeze)
        self.num_classes = int(num_classes)
        self.in_shape = getattr(encoder, "in_shape", None)
        if self.freeze:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


# ----------------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ModelInfo:
    name: str
    fn: Callable[..., nn.Module]
    default_width: object
    tiny_width: object
    width_doc: str
    inputs: str              # "image" (C, H, W) or "any" (flattened)
    normalization: str       # default normalisation
    kind: str                # "classifier" or "encoder"
    summary: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(fn: Callable | None = None, *, name: str | None = None, default_width=None, tiny_width=None,
                   width_doc: str = "", inputs: str = "image", normalization: str = "auto",
                   kind: str = "classifier"):
    """Decorator registering a constructor ``fn(*, in_shape, num_classes, width, **kw) -> nn.Module`` (the core,
    without normalisation).  Usable as ``@register_model`` or ``@register_model(default_width=..., ...)``."""

    def deco(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        if inputs not in ("image", "any"):
            raise ValueError(f"inputs must be 'image' or 'any', got {inputs!r}")
        if kind not in ("classifier", "encoder"):
            raise ValueError(f"kind must be 'classifier' or 'encoder', got {kind!r}")
        summary = (f.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[key] = ModelInfo(key, f, default_width, tiny_width, width_doc, inputs, normalization, kind, summary)
        return f

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def _check_num_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_in_shape(in_shape, inputs: str, name: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in in_shape)
    except TypeError:
        raise TypeError(f"in_shape must be a tuple of ints, got {in_shape!r}") from None
    if any(s < 1 for s in shape) or not shape:
        raise ValueError(f"in_shape must be non-empty with positive sizes, got {in_shape!r}")
    if inputs == "image" and len(shape) != 3:
        raise ValueError(f"model {name!r} takes images: in_shape must be (C, H, W), got {in_shape!r}")
    return shape


def create_model(name: str, *, in_shape: Sequence[int], num_classes: int | None = None, width=None,
                 normalization=None, seed: int | None = None, **kw) -> nn.Module:
    """Build registered model ``name`` for inputs of shape ``in_shape`` ((C, H, W), or (D,) for ``mlp``) in [0, 1].

    ``width``: None (published size), ``"tiny"`` (smoke scale) or a model-specific value.  ``normalization``: see
    the module docstring.  ``seed``: build the weights under this seed without touching the global RNG.  Extra
    keyword arguments go to the constructor.  Returns a :class:`NormalizedModel` (an :class:`EncoderModel` for
    encoders, whose ``num_classes`` is ignored)."""
    info = model_info(name)
    shape = _check_in_shape(in_shape, info.inputs, name)
    if info.kind == "classifier":
        _check_num_classes(num_classes)
    if width is None:
        width = info.default_width
    elif isinstance(width, str):
        if width != "tiny":
            raise ValueError(f"width must be None, 'tiny' or a number, got {width!r}")
        width = info.tiny_width
    norm_spec = resolve_normalization(info.normalization if normalization is None else normalization, shape)
    norm_name = norm_spec if isinstance(norm_spec, str) else "custom"

    def build():
        normalize = make_normalization(norm_spec, shape)
        core = info.fn(in_shape=shape, num_classes=num_classes, width=width, **kw)
        cls = EncoderModel if info.kind == "encoder" else NormalizedModel
        return cls(normalize, core, name=name, in_shape=shape, num_classes=num_classes, normalization=norm_name,
                   width=width)

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()
