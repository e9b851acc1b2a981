"""LPIPS on a classifier's own intermediate features (OA-AT's perceptual distance).

The un-learned LPIPS distance (Zhang et al. 2018, "baseline" variant: no learned per-channel weights) between two
images is, with ``phi_l`` the activations of layer ``l`` (B, C_l, H_l, W_l) and ``n(phi) = phi / (||phi||_c + 1e-10)``
the activations normalised to unit length along the channel axis at every position::

    LPIPS(x, x') = sum_l  mean_{h, w}  sum_c ( n(phi_l(x)) - n(phi_l(x')) )^2

This is what ``lpips.LPIPS(lpips=False)`` of the ``lpips`` package computes on its AlexNet/VGG trunk
(``lpips/lpips.py`` ``LPIPS.forward``: ``normalize_tensor``, squared difference, ``.sum(dim=1)``,
``spatial_average``, summed over layers) -- :func:`lpips_from_features` is that formula on any features.

OA-AT computes it on the features of the network being trained (its exponential moving average), not on AlexNet:
val-iisc/OAAT ``perceptual_advex/perceptual_attack_adv.py`` lines 209-238 (ResNet-18: the outputs of ``layer1``
... ``layer4``), 104-129 (WideResNet-34: the outputs of ``block1`` ... ``block3``) and 320-350 (PreAct ResNet-18:
``layer1`` ... ``layer4``), used through ``perceptual_advex/distances.py`` ``LPIPSDistance`` (imported by
``train_OAAT.py`` line 16), which returns the **square root** of the quantity above (``normalize_flatten_features``,
lines 101-122, divides each normalised layer by ``sqrt(H_l W_l)`` and concatenates; ``LPIPSDistance.forward``,
lines 56-64, takes the L2 norm of the difference).  :class:`FeatureLPIPS` returns that square root by default
(``squared=False``) and the lpips-package quantity with ``squared=True``.

Features are taken with forward hooks on the named submodules (removed after every call), so any model works; by
default the stage outputs of the package's ResNets (``layer1``-``layer4``) and WideResNets (``block1``-``block3``)
are found by name (:func:`default_layers`).  The distance is computed in float32 (also under autocast: the
normalisation's ``1e-10`` is below half precision).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

NORM_EPS = 1e-10  # lpips/__init__.py normalize_tensor(eps=1e-10); perceptual_advex distances normalize_flatten_features

# stage names of the package's models, tried in this order (advrep.models.resnet CifarResNet, wrn WideResNet)
STAGES = (("layer1", "layer2", "layer3", "layer4"), ("block1", "block2", "block3"))


def normalize_channels(feature: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``feature / (||feature||_2 over channels + eps)`` at every spatial position; (B, C, H, W) -> same shape."""
    if feature.ndim != 4:
        raise ValueError(f"LPIPS features must be (B, C, H, W), got shape {tuple(feature.shape)}")
    return feature / (feature.pow(2).sum(1, keepdim=True).sqrt() + eps)


def lpips_from_features(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor],
                        squared: bool = True) -> torch.Tensor:
    """The un-learned LPIPS distance (B,) between two lists of layer activations (see the module docstring);
    ``squared=False`` returns its square root (OA-AT's ``LPIPSDistance``).  Computed in float32."""
    if len(features_a) != len(features_b) or not features_a:
        raise ValueError(f"need the same non-zero number of layers on both sides, got {len(features_a)} and "
                         f"{len(features_b)}")
    total = None
    for fa, fb in zip(features_a, features_b):
        if fa.shape != fb.shape:
            raise ValueError(f"layer shapes differ: {tuple(fa.shape)} vs {tuple(fb.shape)}")
        d = (normalize_channels(fa.float()) - normalize_channels(fb.float())).pow(2).sum(1).mean((1, 2))
        total = d if total is None else total + d
    if squared:
        return total
    # sqrt with a zero (sub)gradient at 0, as torch's norm: the attack starts from x' = x + noise, but be safe
    positive = total > 0
    return torch.where(positive, torch.where(positive, total, torch.ones_like(total)).sqrt(), torch.zeros_like(total))


def default_layers(model: nn.Module) -> list[str]:
    """The qualified names of the stage outputs OA-AT uses: ``layer1``-``layer4`` (ResNets) or ``block1``-``block3``
    (WideResNets), wherever they sit in ``model`` (e.g. under ``core.`` of a :class:`~advrep.models.NormalizedModel`).
    Raises naming what was looked for when the model has neither."""
    names = dict(model.named_modules())
    for stages in STAGES:
        found = []
        for stage in stages:
            hits = [n for n in names if n == stage or n.endswith("." + stage)]
            if len(hits) != 1:
                break
            found.append(hits[0])
        else:
            return found
    raise ValueError(f"cannot find LPIPS layers in {type(model).__name__}: it has no unique submodules named "
                     f"{' / '.join(', '.join(s) for s in STAGES)}; pass lpips_layers (qualified module names) "
                     "explicitly")


class FeatureLPIPS(nn.Module):
    """``FeatureLPIPS(network, layers)(x, x_hat) -> (B,)``: LPIPS on ``network``'s activations at ``layers``
    (qualified submodule names; default :func:`default_layers`).  ``squared=False`` (default) is OA-AT's
    ``LPIPSDistance`` (the square root), ``squared=True`` the ``lpips`` package's ``lpips=False`` value.

    Inputs are what ``network`` takes (here: images in [0, 1]; the package's models normalise themselves).  The
    network is used as it is: put it in eval mode and freeze it (OA-AT uses a frozen EMA copy, in eval mode) --
    gradients flow to the inputs either way.
    """

    def __init__(self, network: nn.Module, layers: Sequence[str] | None = None, squared: bool = False):
        super().__init__()
        self.network = network
        modules = dict(network.named_modules())
        self.layers = list(layers) if layers is not None else default_layers(network)
        missing = [n for n in self.layers if n not in modules]
        if missing or not self.layers:
            raise ValueError(f"LPIPS layers {missing or self.layers} are not submodules of {type(network).__name__} "
                             f"(some of its modules: {[n for n in modules if n][:12]})")
        self.squared = bool(squared)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations at ``self.layers`` for input ``x`` (one forward pass of the network)."""
        modules = dict(self.network.named_modules())
        out: dict[str, torch.Tensor] = {}
        handles = []
        for name in self.layers:
            def hook(_module, _inputs, output, name=name):
                out[name] = output
            handles.append(modules[name].register_forward_hook(hook))
        try:
            self.network(x)
        finally:
            for h in handles:
                h.remove()
        return [out[n] for n in self.layers]

    def distance(self, features_x: Sequence[torch.Tensor], x_hat: torch.Tensor) -> torch.Tensor:
        """LPIPS between precomputed features of x (e.g. the clean image, computed once per attack) and ``x_hat``."""
        return lpips_from_features(features_x, self.features(x_hat), squared=self.squared)

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return lpips_from_features(self.features(x), self.features(x_hat), squared=self.squared)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, squared={self.squared}"


__all__ = ["FeatureLPIPS", "NORM_EPS", "default_layers", "lpips_from_features", "normalize_channels"]
