"""Contrastive feature extraction for the abstain paper: SimCLR and SupCon ResNet-18 encoders, 512-d features.

The paper (``shared/papers/000_871a667a1cb44412.txt``, line 111 and the Table 1 caption) evaluates its abstaining
nearest-neighbour defence on the 512-dimensional representations of a self-supervised (SimCLR, Chen et al. 2020) and
a supervised-contrastive (SupCon, Khosla et al. 2020) ResNet-18 trained on CIFAR-10.  This module trains such an
encoder with the shared training engine (:func:`advrep.train.fit`), extracts the **unnormalised** encoder output
(the paper's thresholds tau = 2.0 / 3.0 are distances between these unnormalised vectors), and writes the features
with a content hash.

Recipe: github.com/HobbitLong/SupContrast (the reference implementation of SupCon, which also trains SimCLR with the
same script; snapshot 66a8fe5).  Facts used, with file and line:

* loss ``SupConLoss`` (``losses.py`` l.11-106): anchors are all views (``contrast_mode='all'``, l.14, l.62-64),
  positives are the other rows with the same label (l.53, self excluded l.79-85), the denominator runs over every
  row but the anchor itself (l.88-89), the per-anchor loss is the mean log-probability over its positives (l.100),
  averaged over all anchors (l.104); ``labels=None`` gives SimCLR's NT-Xent (l.47-48, README l.98);
  the loss is multiplied by ``temperature / base_temperature`` with ``base_temperature = 0.07`` (l.15, l.103), and
  ``main_supcon.py`` l.181 builds ``SupConLoss(temperature=opt.temp)``, so that factor (7.14 for SimCLR at 0.5,
  1.43 for SupCon at 0.1) is part of the recipe: it scales the gradient like a learning-rate factor;
* projections are ``F.normalize(head(encoder(x)))`` with head ``Linear(512, 512) - ReLU - Linear(512, 128)``
  (``networks/resnet_big.py`` l.167-186); the encoder output (before the head) is the 512-d feature;
* two views per image (``util.py`` l.9-15 ``TwoCropTransform``) of ``RandomResizedCrop(32, scale=(0.2, 1.))``,
  ``RandomHorizontalFlip()``, ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)``, ``RandomGrayscale(p=0.2)``
  (``main_supcon.py`` l.146-152);
* SGD, momentum 0.9, weight decay 1e-4 (``main_supcon.py`` l.48-51, ``util.py`` l.78-83); 1000 epochs (l.38);
  batch 1024, lr 0.5, cosine, temperature 0.1 (SupCon) / 0.5 (SimCLR) (README l.73-76 and l.92-96);
* cosine: ``eta_min = lr * 0.1 ** 3`` (``util.py`` l.56, ``lr_decay_rate`` 0.1 at ``main_supcon.py`` l.46), so
  ``min_lr = 1e-3 * lr``; warm-up is switched on for batch > 256 (``main_supcon.py`` l.107-108): 10 epochs, linear
  per iteration from lr 0.01 (l.111-116, ``util.py`` l.68-75), i.e. from 0.02 x the base lr 0.5.

Where the engine's schedule differs (our choice, stated): SupContrast anneals the cosine once per epoch over all
epochs (1-based) and warms up to the cosine's value at epoch 10; the engine's cosine is per iteration over the epochs
after the warm-up and the warm-up ends at the base lr.  At paper scale the two lr curves differ by at most 1.06 % of
the base lr (computed over the 1000 epochs at 0.1-epoch resolution).  The warm-up starts at ``WARMUP_START`` (0.02)
times the configured lr.  SupContrast normalises CIFAR-10 with std (0.2023, 0.1994, 0.2010) (``main_supcon.py``
l.135); our models carry the true pixel std (see :mod:`advrep.models.registry`), a per-channel rescaling the first
conv absorbs.  :func:`supcon_loss` with ``base_temperature=0.07`` was also compared once with SupContrast's
``SupConLoss`` (float64, B=32, both temperatures, with and without labels): equal to 4e-15.

Augmentation runs per sample with torchvision ``transforms.v2`` inside DataLoader workers through the engine's
:class:`advrep.train.AugmentedDataset` (seed per ``(seed, epoch, sample index)``), so it is reproducible across a
resume and independent of the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from advrep.data import arrays_sha256
from advrep.data import load as load_prepared
from advrep.io import atomic_path
from advrep.models import create_model
from advrep.models.registry import DATASET_STATS
from advrep.train import (CHECKPOINT, Augment, AugmentedDataset, CheckpointError, Objective, fit, register_objective,
                          resolve_device)

logger = logging.getLogger("advrep.abstain.features")

METHODS = ("simclr", "supcon")
#: Loss temperature per method (SupContrast README l.75 ``--temp 0.1`` SupCon, l.94 ``--temp 0.5`` SimCLR).
TEMPERATURE = {"simclr": 0.5, "supcon": 0.1}
#: ``SupConLoss(base_temperature=0.07)`` default (losses.py l.15), kept by main_supcon.py l.181.
BASE_TEMPERATURE = 0.07
#: Cosine floor relative to the base lr: ``eta_min = lr * lr_decay_rate ** 3`` with rate 0.1 (util.py l.56).
MIN_LR_FACTOR = 1e-3
#: Warm-up start relative to the base lr: ``warmup_from = 0.01`` (main_supcon.py l.111) over lr 0.5 (README l.74).
WARMUP_START = 0.02

#: The paper-scale recipe (SupContrast, see the module docstring).  ``temperature: None`` means ``TEMPERATURE[method]``.
PAPER_SETTINGS = {
    "arch": "resnet18_encoder",  # ResNet-18, CIFAR stem, 512-d output (resnet_big.py l.80, l.144)
    "width": None,               # published width (64 -> 512-d features); "tiny" for smoke runs
    "proj_dim": 128,             # head output (resnet_big.py l.167 feat_dim=128)
    "epochs": 1000,              # main_supcon.py l.38
    "batch_size": 1024,          # README l.73 / l.92
    "lr": 0.5,                   # README l.74 / l.93
    "momentum": 0.9,             # main_supcon.py l.51
    "weight_decay": 1e-4,        # main_supcon.py l.48
    "warmup_epochs": 10,         # main_supcon.py l.107-112 (batch > 256)
    "temperature": None,         # TEMPERATURE[method]
    "crop_scale": [0.2, 1.0],    # main_supcon.py l.147
    "jitter": [0.4, 0.4, 0.4, 0.1],  # main_supcon.py l.150
    "jitter_p": 0.8,             # main_supcon.py l.151
    "gray_p": 0.2,               # main_supcon.py l.152
    "flip": True,                # main_supcon.py l.148
    "num_workers": 8,            # ours (SupContrast's default is 16, l.36): workers for the per-sample augmentation
}
SETTINGS_KEYS = frozenset(PAPER_SETTINGS)
#: Settings the checkpoint must agree with to be resumed (num_workers does not change the result).
_RESUME_KEYS = tuple(sorted(SETTINGS_KEYS - {"num_workers"}))
SETTINGS_FILE = "settings.json"


class FeaturesCorrupt(RuntimeError):
    """A features file failed its content-hash check or cannot be read."""


# ------------------------------------------------------------------------------------------------------- loss

def supcon_loss(z: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 0.1, *,
                base_temperature: float | None = None) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, "L^sup_out"); SimCLR's NT-Xent when ``labels`` is None.

    ``z``: (B, n_views, D) L2-normalised projections.  Every one of the ``B * n_views`` rows is an anchor; its
    positives are the other rows of the same class (``labels=None``: of the same image), its denominator all rows but
    itself.  Per anchor: ``-mean_{p in P(i)} log softmax_{a != i}(z_i . z_a / T)[p]``; the result is the mean over
    anchors (an anchor without positives contributes 0, as in SupContrast losses.py l.98-100).
    ``base_temperature``: multiply by ``temperature / base_temperature`` (SupContrast's scaling, losses.py l.103);
    None for the plain loss.
    """
    if z.ndim != 3:
        raise ValueError(f"supcon_loss: z must be (B, n_views, D), got shape {tuple(z.shape)}")
    b, n_views, _ = z.shape
    rows = z.transpose(0, 1).reshape(b * n_views, -1)  # view-major: row k is view k // b of sample k % b
    if labels is None:
        cls = torch.arange(b, device=z.device)
    else:
        labels = torch.as_tensor(labels, device=z.device).reshape(-1)
        if len(labels) != b:
            raise ValueError(f"supcon_loss: {len(labels)} labels for {b} samples")
        cls = labels
    cls = cls.repeat(n_views)
    n = len(rows)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (rows @ rows.T / float(temperature)).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (cls[:, None] == cls[None, :]) & ~self_mask
    n_pos = positive.sum(1).clamp(min=1)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1) / n_pos
    scale = 1.0 if base_temperature is None else float(temperature) / float(base_temperature)
    return scale * per_anchor.mean()


# ------------------------------------------------------------------------------------------------ augmentation

class TwoViews(Augment):
    """SimCLR/SupCon augmentation: ``n_views`` independent views per image (tensors in [0, 1], (C, H, W)).

    ``one(img) -> (n_views, C, H, W)``; calling on a batch ``(B, C, H, W)`` gives ``(B, n_views, C, H, W)`` with
    per-sample random parameters (under ``seed`` when given; the global RNG is then untouched)."""

    def __init__(self, size: int = 32, *, crop_scale: Sequence[float] = (0.2, 1.0),
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, gray_p: float = 0.2,
                 flip: bool = True, n_views: int = 2):
        self.size = int(size)
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.jitter = tuple(float(v) for v in jitter)
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)
        self.flip = bool(flip)
        self.n_views = int(n_views)
        if len(self.crop_scale) != 2 or len(self.jitter) != 4:
            raise ValueError("crop_scale must be [lo, hi] and jitter [brightness, contrast, saturation, hue]")
        steps = [v2.RandomResizedCrop(self.size, scale=self.crop_scale, antialias=True)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        if self.jitter_p > 0:
            steps.append(v2.RandomApply([v2.ColorJitter(*self.jitter)], p=self.jitter_p))
        if self.gray_p > 0:
            steps.append(v2.RandomGrayscale(p=self.gray_p))
        self._view = v2.Compose(steps)
        super().__init__([self._view])

    @classmethod
    def from_settings(cls, settings: dict, size: int) -> "TwoViews":
        return cls(size, crop_scale=settings["crop_scale"], jitter=settings["jitter"],
                   jitter_p=settings["jitter_p"], gray_p=settings["gray_p"], flip=settings["flip"])

    def one(self, img: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._view(img) for _ in range(self.n_views)]).clamp_(0.0, 1.0)

    def __repr__(self):
        return (f"TwoViews(size={self.size}, crop_scale={self.crop_scale}, jitter={self.jitter}, "
                f"jitter_p={self.jitter_p}, gray_p={self.gray_p}, flip={self.flip}, n_views={self.n_views})")


# -------------------------------------------------------------------------------------------------- objectives

class _Contrastive(Objective):
    """``x``: (B, n_views, C, H, W) views in [0, 1] from :class:`TwoViews`; loss on ``normalize(model.project)``.
    Returns no logits (the loop then records accuracy as NaN)."""

    supervised = False

    def __init__(self, temperature: float | None = None, base_temperature: float | None = BASE_TEMPERATURE):
        self.temperature = float(TEMPERATURE[self.name] if temperature is None else temperature)
        self.base_temperature = None if base_temperature is None else float(base_temperature)

    def __call__(self, model, x, y, ctx):
        if x.ndim != 5:
            raise ValueError(f"{self.name}: expects views (B, n_views, C, H, W) from TwoViews, got {tuple(x.shape)}")
        b, n_views = x.shape[:2]
        z = model.project(x.flatten(0, 1))  # one forward over all views (BatchNorm sees them together)
        z = F.normalize(z.float(), dim=1).view(b, n_views, -1)
        loss = supcon_loss(z, y if self.supervised else None, self.temperature,
                           base_temperature=self.base_temperature)
        return loss, None


@register_objective("simclr")
class SimCLR(_Contrastive):
    """SimCLR NT-Xent (Chen et al. 2020) = :func:`supcon_loss` with each image its own class."""


@register_objective("supcon")
class SupCon(_Contrastive):
    """Supervised contrastive loss (Khosla et al. 2020), positives = same label."""

    supervised = True


# ------------------------------------------------------------------------------------------------------ data

class _Images(Dataset):
    """Images as float (C, H, W) tensors in [0, 1] from uint8 NHWC (the prepared layout) or float NCHW in [0, 1];
    converted per item so a 50k CIFAR split stays uint8 in memory."""

    def __init__(self, x, y=None):
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"images must be 4-d (uint8 NHWC or float NCHW), got shape {x.shape}")
        self.uint8 = x.dtype == np.uint8
        if not self.uint8:
            x = x.astype(np.float32, copy=False)
            if x.size and (x.min() < 0 or x.max() > 1):
                raise ValueError(f"float images must be in [0, 1], got [{x.min()}, {x.max()}]")
        self.x = x
        self.y = None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long)
        if self.y is not None and len(self.y) != len(x):
            raise ValueError(f"{len(x)} images but {len(self.y)} labels")

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.x.shape[1:]
        return (s[2], s[0], s[1]) if self.uint8 else tuple(s)

    def __len__(self):
        return len(self.x)

    def batch(self, lo: int, hi: int) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(self.x[lo:hi]))
        return t.permute(0, 3, 1, 2).float().div_(255) if self.uint8 else t

    def __getitem__(self, i):
        return self.batch(i, i + 1)[0], self.y[i]


def check_settings(settings: dict, method: str) -> dict:
    """Validate ``settings`` (exactly the keys of :data:`PAPER_SETTINGS`) and resolve ``temperature: None``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    s = dict(settings)
    missing, unknown = sorted(SETTINGS_KEYS - set(s)), sorted(set(s) - SETTINGS_KEYS)
    if missing or unknown:
        raise ValueError(f"contrastive settings: missing {missing}, unknown {unknown}; the keys are "
                         f"{sorted(SETTINGS_KEYS)}")
    if s["temperature"] is None:
        s["temperature"] = TEMPERATURE[method]
    for k in ("proj_dim", "epochs", "batch_size", "num_workers"):
        s[k] = int(s[k])
    for k in ("lr", "momentum", "weight_decay", "warmup_epochs", "temperature", "jitter_p", "gray_p"):
        s[k] = float(s[k])
    s["crop_scale"] = [float(v) for v in s["crop_scale"]]
    s["jitter"] = [float(v) for v in s["jitter"]]
    s["flip"] = bool(s["flip"])
    if s["width"] not in (None, "tiny") and not isinstance(s["width"], int):
        raise ValueError(f"width must be null, 'tiny' or an int, got {s['width']!r}")
    return s


def _normalization(dataset_name: str | None) -> str:
    return dataset_name if dataset_name in DATASET_STATS else "auto"


def build_encoder(settings: dict, in_shape, *, seed: int, normalization: str = "auto"):
    """The encoder of ``settings`` (an :class:`advrep.models.EncoderModel`), weights built under ``seed``."""
    return create_model(settings["arch"], in_shape=tuple(in_shape), width=settings["width"],
                        proj_dim=settings["proj_dim"], normalization=normalization, seed=int(seed))


def _check_resume(checkpoint_dir: Path, record: dict) -> None:
    """Refuse to resume a checkpoint written with other settings (the engine checks only seed and loader length)."""
    f = checkpoint_dir / SETTINGS_FILE
    if (checkpoint_dir / CHECKPOINT).exists() and f.exists():
        old = json.loads(f.read_text())
        if old != record:
            diff = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise CheckpointError(f"{checkpoint_dir / CHECKPOINT} was trained with other settings (differ in {diff}); "
                                  f"delete {checkpoint_dir} to retrain with the new settings.")
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(f) as tmp:
        tmp.write_text(json.dumps(record, sort_keys=True, indent=1) + "\n")


def train_encoder(x_train, y_train, *, method: str, settings: dict, checkpoint_dir, seed: int, device="auto",
                  normalization: str = "auto", callbacks: Sequence[Callable[[int, dict], None]] = ()):
    """Train a SimCLR/SupCon encoder on ``x_train`` (uint8 NHWC or float NCHW in [0, 1]) with the engine.

    Per-epoch checkpoints in ``checkpoint_dir`` (``last.pt``; ``final.pt`` at the end); an existing checkpoint is
    resumed (bit-identical on CPU), one written with other settings is refused.  ``callbacks`` go to :func:`fit`.
    Returns ``(model, history)``: the :class:`EncoderModel` (train mode) and the engine's per-epoch records.
    """
    s = check_settings(settings, method)
    images = _Images(x_train, y_train)
    in_shape = images.shape
    model = build_encoder(s, in_shape, seed=seed, normalization=normalization)
    checkpoint_dir = Path(checkpoint_dir)
    _check_resume(checkpoint_dir, {"method": method, "seed": int(seed), "normalization": normalization,
                                   "n_train": len(images), **{k: s[k] for k in _RESUME_KEYS}})
    views = AugmentedDataset(images, TwoViews.from_settings(s, size=in_shape[-1]), seed=int(seed))
    # SupContrast's loader: shuffle, drop_last False (main_supcon.py l.172-174)
    loader = DataLoader(views, batch_size=s["batch_size"], shuffle=True, num_workers=s["num_workers"],
                        persistent_workers=False, drop_last=False)
    result = fit(model, loader, objective={"name": method, "temperature": s["temperature"]}, epochs=s["epochs"],
                 optimizer={"name": "sgd", "lr": s["lr"], "momentum": s["momentum"],
                            "weight_decay": s["weight_decay"]},
                 schedule={"name": "cosine", "per": "iteration", "warmup_epochs": s["warmup_epochs"],
                           "warmup_start": WARMUP_START, "min_lr": MIN_LR_FACTOR * s["lr"]},
                 checkpoint_dir=checkpoint_dir, seed=int(seed), device=device, progress=False, callbacks=callbacks)
    return result.model, result.history


# -------------------------------------------------------------------------------------------------- extraction

@torch.no_grad()
def extract(model, x, *, batch_size: int = 512, device="auto") -> np.ndarray:
    """Encoder output (the unnormalised ``feature_dim``-d features, no projection head) of ``x`` (uint8 NHWC or
    float NCHW in [0, 1]) in eval mode, float32 (N, feature_dim).  The model's train/eval mode is restored."""
    images = _Images(x)
    dev = resolve_device(device)
    was = model.training
    model.to(dev).eval()
    try:
        out = [model(images.batch(lo, lo + batch_size).to(dev)).float().cpu()
               for lo in range(0, len(images), int(batch_size))]
    finally:
        model.train(was)
    dim = int(getattr(model, "feature_dim", 0))
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def _nn_distances(queries: np.ndarray, base: np.ndarray, *, exclude_self: bool) -> np.ndarray:
    """Euclidean distance of each query to its nearest ``base`` row (faiss, exact L2 in float32); with
    ``exclude_self`` (queries is base) the row itself is skipped."""
    import faiss

    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    k = 2 if exclude_self else 1
    d2, ind = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    if exclude_self:
        own = ind[:, 0] == np.arange(len(queries))
        d2 = np.where(own, d2[:, 1], d2[:, 0])  # on ties the row itself may come second: both at distance 0
    else:
        d2 = d2[:, 0]
    return np.sqrt(np.maximum(d2, 0.0))


def feature_stats(train_feats: np.ndarray, test_feats: np.ndarray) -> dict:
    """Scale of the features, to set against the paper's tau (2.0, 3.0): L2 norms and nearest-neighbour distances
    (train -> train excluding itself, test -> train), quantiles 10/50/90 %."""

    def q(v):
        v = np.asarray(v, dtype=np.float64)
        return {"p10": float(np.quantile(v, 0.1)), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)),
                "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}

    stats = {"dim": int(train_feats.shape[1]),
             "norm_train": q(np.linalg.norm(train_feats, axis=1)), "norm_test": q(np.linalg.norm(test_feats, axis=1))}
    if len(train_feats) > 1:
        stats["nn_dist_train_train"] = q(_nn_distances(train_feats, train_feats, exclude_self=True))
    if len(test_feats):
        stats["nn_dist_test_train"] = q(_nn_distances(test_feats, train_feats, exclude_self=False))
    return stats


# ---------------------------------------------------------------------------------------------------------- I/O

FEATURE_KEYS = ("train_feats", "train_labels", "test_feats", "test_labels")


def write_features(path, train_feats, train_labels, test_feats, test_labels, meta: dict) -> dict:
    """Write the features ``.npz`` atomically (arrays + ``meta`` as a JSON string); ``meta['features_sha256']`` is the
    :func:`advrep.data.arrays_sha256` of the four arrays (float32 features, int64 labels).  Returns the meta stored."""
    arrays = {"train_feats": np.asarray(train_feats, dtype=np.float32),
              "train_labels": np.asarray(train_labels, dtype=np.int64),
              "test_feats": np.asarray(test_feats, dtype=np.float32),
              "test_labels": np.asarray(test_labels, dtype=np.int64)}
    if len(arrays["train_feats"]) != len(arrays["train_labels"]) or \
            len(arrays["test_feats"]) != len(arrays["test_labels"]):
        raise ValueError("features and labels differ in length")
    meta = json.loads(json.dumps({**meta, "features_sha256": arrays_sha256(*arrays.values())}, sort_keys=True))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to the temporary name
            np.savez(fh, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
            fh.flush()
            os.fsync(fh.fileno())
    return meta


def read_features(path):
    """``(train_feats, train_labels, test_feats, test_labels, meta)`` from :func:`write_features`'s file, after
    checking the arrays against ``meta['features_sha256']``.  A file that cannot be read (truncated, bad CRC), lacks
    an array or fails the hash raises :class:`FeaturesCorrupt`: one line naming the file, what is wrong and what to
    do (delete it and rerun: rule ``abstain_features`` rebuilds it from the encoder's finished checkpoint)."""
    path = Path(path)

    def damaged(what: str) -> FeaturesCorrupt:
        return FeaturesCorrupt(f"{path}: damaged features file: {what}; delete it and rerun the same command: rule "
                               f"abstain_features rebuilds it (snakemake {path}).")

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no features file there; rule abstain_features makes it (snakemake {path})")
    arrays, meta, missing = [], {}, []
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (*FEATURE_KEYS, "meta") if k not in f.files]
            if not missing:
                arrays = [f[k] for k in FEATURE_KEYS]
                meta = json.loads(str(f["meta"][()]))
    except Exception as e:  # BadZipFile (truncated, bad CRC), EOFError, ValueError (bad npy header / JSON), OSError
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "no message")
        raise damaged(f"cannot be read, truncated or corrupt ({type(e).__name__}: {first})") from e
    if missing:
        raise damaged(f"not a features file (missing {missing})")
    got = arrays_sha256(*arrays)
    if got != meta.get("features_sha256"):
        raise damaged(f"its arrays hash to {got[:12]}... but its meta records "
                      f"{str(meta.get('features_sha256'))[:12]}... (modified or damaged)")
    return (*arrays, meta)


# ---------------------------------------------------------------------------------------------------------- run

def run(out_path, *, dataset_path, method: str, settings: dict, checkpoint_dir, seed: int, device="auto") -> dict:
    """Load the prepared dataset, train (or resume) the encoder, extract train and test features, write them to
    ``out_path`` (:func:`write_features`) and return the meta stored."""
    t0 = time.perf_counter()
    s = check_settings(settings, method)
    data = load_prepared(dataset_path)
    dmeta = data.meta
    normalization = _normalization(dmeta.get("name"))
    model, history = train_encoder(data.x_train, data.y_train, method=method, settings=s,
                                   checkpoint_dir=checkpoint_dir, seed=seed, device=device,
                                   normalization=normalization)
    train_feats = extract(model, data.x_train, device=device)
    test_feats = extract(model, data.x_test, device=device)
    meta = {
        "method": method, "settings": s, "seed": int(seed),
        "loss": {"base_temperature": BASE_TEMPERATURE, "temperature": s["temperature"],
                 "schedule": {"name": "cosine", "per": "iteration", "warmup_epochs": s["warmup_epochs"],
                              "warmup_start": WARMUP_START, "min_lr": MIN_LR_FACTOR * s["lr"]}},
        "dataset": {k: dmeta.get(k) for k in ("name", "content_sha256", "standin_for", "n_train", "n_test",
                                              "n_classes", "shape")},
        "normalization": normalization,
        "features": "encoder output before the projection head, not L2-normalised",
        "feature_dim": int(train_feats.shape[1]),
        "history": [{k: r[k] for k in ("epoch", "loss", "lr", "time_s", "images_per_s")} for r in history],
        "stats": feature_stats(train_feats, test_feats),
        "device": str(resolve_device(device)), "torch": str(torch.__version__),
        "seconds": time.perf_counter() - t0,
    }
    if not all(math.isfinite(r["loss"]) for r in meta["history"]):
        raise FloatingPointError(f"non-finite loss in the history of {checkpoint_dir}")
    st = meta["stats"]
    logger.info("%s features %s: median norm %.4g (train), median NN distance %.4g (train->train), %.4g (test->train)",
                method, train_feats.shape, st["norm_train"]["median"],
                st.get("nn_dist_train_train", {}).get("median", float("nan")),
                st.get("nn_dist_test_train", {}).get("median", float("nan")))
    return write_features(out_path, train_feats, data.y_train, test_feats, data.y_test, meta)


__all__ = ["BASE_TEMPERATURE", "FeaturesCorrupt", "METHODS", "MIN_LR_FACTOR", "PAPER_SETTINGS", "SETTINGS_KEYS",
           "SimCLR", "SupCon", "TEMPERATURE", "TwoViews", "WARMUP_START", "build_encoder", "check_settings",
           "extract", "feature_stats", "read_features", "run", "supcon_loss", "train_encoder", "write_features"]
