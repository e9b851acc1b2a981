"""Data augmentation on float tensors in [0, 1] (torchvision.transforms.v2), per sample, deterministic given a seed.

Components (:func:`make_augment` names): ``crop_flip`` (random crop after zero padding, default 4, and horizontal
flip -- the standard CIFAR augmentation), ``cutout`` (DeVries & Taylor 2017: one square of side ``size``, centre
uniform over the image, clipped at the border, filled with ``fill``; their code zeroes *normalised* pixels, i.e.
paints the mean colour -- our inputs are unnormalised, so ``fill`` defaults to 0.5), ``autoaugment`` (Cubuk et al.
CIFAR-10 policy, ``v2.AutoAugment``; applied to the image quantised to uint8 and converted back, so it also rounds
pixels to multiples of 1/255) and ``none``.  A list composes them in order (e.g. ``[crop_flip, autoaugment, cutout]``).

v2 transforms on a batch tensor draw one set of parameters for the whole batch, so :class:`Augment` loops over the
samples.  Two ways to use it, both reproducible across a resume:

* in the training loop (``fit(augment=...)``): each batch is augmented on the CPU under a forked RNG seeded from
  ``(seed, epoch, batch index)``; the global RNG stream is left untouched;
* through :class:`AugmentedDataset` (for expensive policies, in DataLoader workers): each sample is augmented under a
  seed from ``(seed, epoch, sample index)``, independent of workers and batch composition; ``fit`` calls its
  ``set_epoch``.  Do not combine it with ``persistent_workers=True`` (the workers would keep a stale epoch).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .context import STREAM_AUGMENT, derive_seed
from ..config import parse_number as _number


class CropFlip:
    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = int(padding)
        self.flip = bool(flip)
        self._by_size: dict = {}

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        size = tuple(img.shape[-2:])
        t = self._by_size.get(size)
        if t is None:
            steps = [v2.RandomCrop(size, padding=self.padding, fill=0, padding_mode="constant")]
            if self.flip:
                steps.append(v2.RandomHorizontalFlip())
            t = self._by_size[size] = v2.Compose(steps)
        return t(img)

    def __repr__(self):
        return f"CropFlip(padding={self.padding}, flip={self.flip})"


class Cutout:
    def __init__(self, size: int = 16, fill: float = 0.5):
        self.size = int(size)
        self.fill = float(fill)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, ()))
        cx = int(torch.randint(w, ()))
        y0, y1 = max(cy - self.size // 2, 0), min(cy + self.size // 2, h)
        x0, x1 = max(cx - self.size // 2, 0), min(cx + self.size // 2, w)
        out = img.clone()
        out[..., y0:y1, x0:x1] = self.fill
        return out

    def __repr__(self):
        return f"Cutout(size={self.size}, fill={self.fill})"


class AutoAugment:
    def __init__(self, policy: str = "cifar10"):
        policies = {"cifar10": v2.AutoAugmentPolicy.CIFAR10, "imagenet": v2.AutoAugmentPolicy.IMAGENET,
                    "svhn": v2.AutoAugmentPolicy.SVHN}
        if policy not in policies:
            raise ValueError(f"autoaugment policy must be one of {sorted(policies)}, got {policy!r}")
        self.policy = policy
        self._t = v2.AutoAugment(policies[policy])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        u8 = (img * 255).round().clamp(0, 255).to(torch.uint8)
        return self._t(u8).to(img.dtype) / 255

    def __repr__(self):
        return f"AutoAugment(policy={self.policy!r})"


COMPONENTS = {"crop_flip": CropFlip, "cutout": Cutout, "autoaugment": AutoAugment}


class Augment:
    """A sequence of per-image transforms applied to each sample of a (B, C, H, W) batch in [0, 1]."""

    def __init__(self, steps: list):
        self.steps = list(steps)

    def one(self, img: torch.Tensor) -> torch.Tensor:
        for s in self.steps:
            img = s(img)
        return img

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Augment a CPU batch; with ``seed`` under a forked RNG seeded with it (global RNG untouched)."""
        if not self.steps:
            return x
        if seed is None:
            return torch.stack([self.one(img) for img in x])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.one(img) for img in x])

    def __repr__(self):
        return f"Augment({self.steps!r})"


def make_augment(cfg) -> Augment | None:
    """``None``/``"none"``, a name, ``{"name": ..., params}``, or a list of those; an :class:`Augment` passes."""
    if cfg is None or isinstance(cfg, Augment):
        return cfg
    items = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    steps = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise TypeError(f"augment: cannot read {item!r}")
        item = dict(item)
        name = item.pop("name", None)
        if name == "none":
            continue
        if name not in COMPONENTS:
            raise ValueError(f"unknown augmentation {name!r}; one of {sorted(COMPONENTS)} or 'none'")
        try:
            steps.append(COMPONENTS[name](**{k: _number(v, k) for k, v in item.items()}))
        except TypeError as e:
            raise ValueError(f"augment {name!r}: {e}") from None
    return Augment(steps) if steps else None


class AugmentedDataset(Dataset):
    """``dataset[i] = (x, y, ...)`` with ``x`` augmented under a seed from ``(seed, epoch, i)``."""

    def __init__(self, dataset, augment, seed: int = 0):
        self.dataset = dataset
        self.augment = make_augment(augment) or Augment([])
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        x, rest = item[0], tuple(item[1:])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, STREAM_AUGMENT, self.epoch, int(i)))
            x = self.augment.one(x)
        return (x, *rest)
